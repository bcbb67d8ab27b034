"""Built-in connections: a config enables one with a single line.

    [[connections]]
    preset = "cursor"

A preset fills in the connection's name and hosts; the table may still set `name`, `hosts`
(replacing the preset's list), `ports` and `allow_groups`. A record-only preset fixes
`credential` and `inject` to "none": the client's own credential passes, recorded as a
keyed-hash tag (docs/format.md §6), and the identity check applies as to any connection.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    hosts: tuple[str, ...]
    what: str  # one line, for the docs
    record_only: str  # why the gateway cannot swap the client's credential; "" if it can


PRESETS: dict[str, Preset] = {
    "cursor": Preset(
        name="cursor",
        # Cursor's own backend (docs/clients.md, "Cursor"): the API hosts api2, api3, api4,
        # <region>.api5 and repo42, and the sign-in hosts authenticate and authenticator, are all
        # under cursor.sh; the extension marketplace is marketplace.cursorapi.com; downloads and
        # assets come from cursor-cdn.com. These are the patterns Cursor's network guide lists.
        hosts=("*.cursor.sh", "*.cursorapi.com", "*.cursor-cdn.com"),
        what="Cursor's backend: the agent, chat and tab completions (Connect RPC), sign-in, marketplace, downloads",
        record_only="Cursor's bearer token is the user's own Cursor account, not a key the gateway could hold instead",
    ),
}


class PresetError(ValueError):
    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def apply_preset(table: dict, at: str) -> dict:
    """A [[connections]] table with its preset filled in. An unknown preset name is left for
    the schema to report; a key the preset fixes raises PresetError."""
    preset = PRESETS.get(table.get("preset")) if isinstance(table.get("preset"), str) else None
    if preset is None:
        return table
    if preset.record_only:
        for key in ("credential", "inject"):
            if key in table and table[key] != "none":
                raise PresetError(f"{at}.{key}", f'the "{preset.name}" preset is record-only ({preset.record_only}); '
                                  f"leave {key} out")
    if table.get("kind", "http") != "http":
        raise PresetError(f"{at}.kind", f'the "{preset.name}" preset is an http connection; leave kind out')
    filled = dict(table)
    filled.setdefault("name", preset.name)
    filled.setdefault("hosts", list(preset.hosts))
    if preset.record_only:
        filled["credential"] = filled["inject"] = "none"
    return filled
