"""Loads and validates the gateway's TOML config (`--set wiretrail_config=PATH`).

The other addons read `WiretrailConfig.current` in their own `configure`. A bad file
raises OptionsError, which mitmproxy logs as a start-up error and exits on.
"""
from __future__ import annotations

import logging
from typing import Optional

from mitmproxy import ctx, exceptions

from recorder.config import ConfigError, GatewayConfig, load_config

log = logging.getLogger("wiretrail")

OPTION = "wiretrail_config"


class WiretrailConfig:
    def __init__(self) -> None:
        self.current: GatewayConfig | None = None
        self.started = False  # once running, storage and the writer are built: no hot swap

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
        try:
            config = load_config(path)
        except ConfigError as e:
            raise exceptions.OptionsError(f"wiretrail config: {e}") from None
        if self.started:
            if config != self.current:
                log.warning("wiretrail: the config changed while running; restart the gateway to apply it")
            return
        self.current = config

    def running(self):
        # Options are final only now: configure may first run before --set values arrive.
        self.started = True
        config = self.current
        if config.source is None:
            log.warning(
                "wiretrail: no config file given (--set wiretrail_config=PATH); "
                "running on the embedded DEMO default (docs/configuration.md)"
            )
        else:
            log.info(f"wiretrail: config loaded from {config.source}")
