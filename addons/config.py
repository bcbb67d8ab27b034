"""Loads and validates the gateway's TOML config (`--set wiretrail_config=PATH`).

The other addons read `WiretrailConfig.current` (and `.signer`) from `running` on. A bad
file or an unusable signing key raises OptionsError, which mitmproxy logs as a start-up
error and exits 1 on.
"""
from __future__ import annotations

import logging
from typing import Optional

from mitmproxy import ctx, exceptions

from recorder.config import ConfigError, GatewayConfig, changed_sections, load_config
from recorder.store import fleet
from recorder.store.signing import Signer, SigningKeyError, ensure_dev_signing_key, load_signer

log = logging.getLogger("wiretrail")

OPTION = "wiretrail_config"


class WiretrailConfig:
    def __init__(self) -> None:
        self.current: GatewayConfig | None = None
        self.signer: Signer | None = None
        self.started = False  # once running, storage and the writer are built: no hot swap
        self.path: str | None = None

    def load(self, loader):
        loader.add_option(
            OPTION,
            Optional[str],
            None,
            "Path to wiretrail's TOML config file. Without it, the embedded demo default is used.",
        )

    def configure(self, updated):
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # Eager connects upstream when the client connects, before identity and policy
            # are decided in requestheaders, and a refused upstream then leaves no record.
            ctx.options.update(connection_strategy="lazy")
        if OPTION not in updated:
            return
        path = ctx.options.wiretrail_config
        self.path = path
        try:
            # configure may run before --set values arrive: the embedded default is only checked
            # here; its development secret and signing key are made in `running`, if it is used.
            config = load_config(path, read_secrets=path is not None)
            signer = load_signer(config.storage.signing_key) if path and config.storage.signing_key else None
        except ConfigError as e:
            raise exceptions.OptionsError(f"wiretrail config: {e}") from None
        except SigningKeyError as e:
            raise exceptions.OptionsError(f"wiretrail config: {config.source}: storage.signing_key: {e}; "
                                          "the gateway will not record unsigned when a key is configured "
                                          "(make one with `wiretrail keygen DIR`)") from None
        problem = fleet.layout_problem(config.storage.dir, config.gateway.id)
        if problem is not None:
            raise exceptions.OptionsError(f"wiretrail config: {config.source}: {problem}")
        if self.started:
            self.say_restart(config)
            return
        self.current, self.signer = config, signer

    def say_restart(self, config: GatewayConfig) -> list[str]:
        """Log, once per change, which sections differ from the running config: only a restart applies them."""
        changed = changed_sections(self.current, config)
        if changed:
            log.warning(f"wiretrail: the config changed while running ({', '.join(changed)}); the gateway keeps "
                        "running on the config it started with: restart it to apply the change")
        return changed

    def reread(self) -> list[str]:
        """On SIGHUP: read the file again and say what only a restart would apply (credentials are
        re-read by the credentials part). A file that no longer loads is reported, not applied."""
        if not self.started or self.path is None:
            return []
        try:
            config = load_config(self.path, read_secrets=False)
        except ConfigError as e:
            log.error(f"wiretrail: SIGHUP: {e}; the gateway keeps running on the config it started with")
            return []
        return self.say_restart(config)

    def running(self):
        # Options are final only now: configure may first run before --set values arrive.
        if self.started:
            return
        self.started = True
        if self.current.source is None:
            log.warning(
                "wiretrail: no config file given (--set wiretrail_config=PATH); "
                "running on the embedded DEMO default (docs/configuration.md)"
            )
            try:
                self.current = load_config(None)  # makes the development secret on first start
                ensure_dev_signing_key(self.current.storage.signing_key)
                self.signer = load_signer(self.current.storage.signing_key)
            except (ConfigError, SigningKeyError, OSError) as e:
                log.error(f"wiretrail: the embedded default cannot start: {e}; the gateway stops")
                ctx.master.shutdown()
                return
            log.info(f"wiretrail: demo signing key {self.current.storage.signing_key} "
                     f"(verify with --key {self.current.storage.signing_key.with_suffix('.pub')})")
        else:
            log.info(f"wiretrail: config loaded from {self.current.source}")
