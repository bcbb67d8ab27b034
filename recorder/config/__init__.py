"""The gateway's configuration: one TOML file, checked against one schema.

`load_config(path)` reads the file given by `--set wiretrail_config=PATH`, or the embedded demo
default when no file is given, and returns a frozen GatewayConfig. Anything wrong raises
ConfigError naming the key path and what was expected. mitmproxy ignores a misspelled `--set`
name without a word, so settings live here, where a typo stops start-up.

The modules, each with one job:
- model.py: the settings dataclasses; each field declares its key once (kind, default, doc), and
  SCHEMA is read from them. The one place a key is described.
- schema.py: how such keys are declared, checked as TOML tables and walked.
- validators.py: the kinds of value (numbers, sizes, hosts, secrets ...) and ConfigError.
- checks.py: the checks that span keys (identity's key sources, a connection's kind, anchors).
- load.py: reading a file or the embedded demo default (demo.toml).
- docs.py: docs/configuration.md's reference tables, generated from SCHEMA.
- presets.py: built-in connections.
"""
from recorder.config.load import (
    EMBEDDED_DEFAULT,
    EMBEDDED_DEV_SECRET,
    EMBEDDED_SOURCE,
    load_config,
    parse_config,
)
from recorder.config.model import (
    SCHEMA,
    AnchorsConfig,
    CaptureConfig,
    ConnectionConfig,
    GatewayConfig,
    IdentityConfig,
    MaskingConfig,
    MaskingRule,
    NodeConfig,
    ObjectStorageConfig,
    PolicyConfig,
    ReviewConfig,
    SessionsConfig,
    StorageConfig,
    TimeoutsConfig,
    changed_sections,
    iter_keys,
)
from recorder.config.schema import Key
from recorder.config.validators import ConfigError, SecretRef, split_host_port

__all__ = [
    "EMBEDDED_DEFAULT", "EMBEDDED_DEV_SECRET", "EMBEDDED_SOURCE", "load_config", "parse_config",
    "SCHEMA", "AnchorsConfig", "CaptureConfig", "ConnectionConfig", "GatewayConfig", "IdentityConfig",
    "MaskingConfig", "MaskingRule", "NodeConfig", "ObjectStorageConfig", "PolicyConfig", "ReviewConfig",
    "SessionsConfig", "StorageConfig", "TimeoutsConfig", "changed_sections", "iter_keys", "Key",
    "ConfigError", "SecretRef", "split_host_port",
]
