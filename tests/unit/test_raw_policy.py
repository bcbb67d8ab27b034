"""recorder/policy/raw_policy.py: what happens to bytes that are not HTTP, by policy, connection and caller."""
import pytest

from recorder.auth.identity import ANONYMOUS, VerifiedIdentity
from recorder.config import parse_config
from recorder.policy.raw_policy import UNCHECKED, decide_raw

BASE = """
[storage]
dir = "s"
[identity]
mode = "none"
[policy]
unregistered = "{unregistered}"
raw_tcp = "{raw_tcp}"
[[connections]]
name = "open"
hosts = ["db.example"]
credential = "none"
inject = "none"
[[connections]]
name = "team"
hosts = ["team.example"]
credential = "none"
inject = "none"
allow_groups = ["engineering"]
[[connections]]
name = "llm"
hosts = ["api.example"]
credential = "env:HOME"
inject = "bearer"
"""

ALICE = VerifiedIdentity(sub="alice", groups=("engineering",), method="jwt")
BOB = VerifiedIdentity(sub="bob", groups=("sales",), method="jwt")


def cfg(tmp_path, unregistered="deny", raw_tcp="refuse"):
    return parse_config(BASE.format(unregistered=unregistered, raw_tcp=raw_tcp), source="t.toml", base_dir=tmp_path)


def registered(config, host):
    """The connection policy's destinations would match (here: by name)."""
    return next((c for c in config.connections if host in c.hosts), None)


@pytest.mark.parametrize("unregistered, raw_tcp, host, kw, action, reason", [
    ("deny", "refuse", "db.example", {}, "refuse", "raw_tcp"),  # the default fails closed
    ("deny", "record", "db.example", {}, "record", ""),
    ("deny", "record", "team.example", {"identity": ALICE}, "record", ""),
    ("deny", "record", "team.example", {"identity": BOB}, "refuse", "forbidden"),
    ("deny", "record", "api.example", {"identity": ALICE}, "refuse", "credential"),  # nothing could be swapped
    ("deny", "record", "db.example", {"authenticated": False}, "refuse", "unauthenticated"),
    ("deny", "record", "db.example", {"protocol": "udp"}, "refuse", "protocol"),
    ("deny", "record", "db.example", {"ignored": True}, "refuse", "ignored"),  # ignore_hosts cannot skip a registered host
    ("deny", "record", "other.example", {}, "refuse", "unregistered"),
    ("tunnel", "refuse", "other.example", {}, "tunnel", ""),
    ("record", "refuse", "other.example", {}, "refuse", "raw_tcp"),
    ("record", "record", "other.example", {}, "record", ""),
    ("deny", "record", "other.example", {"ignored": True}, "tunnel", ""),
    ("tunnel", "record", "unresolved.example", {"conn": UNCHECKED}, "refuse", "unchecked"),  # never tunnelled unchecked
])
def test_decide_raw(tmp_path, unregistered, raw_tcp, host, kw, action, reason):
    config = cfg(tmp_path, unregistered, raw_tcp)
    kw.setdefault("conn", registered(config, host))
    d = decide_raw(config, host, 5432, **kw)
    assert (d.action, d.reason) == (action, reason), d.message
    if action == "refuse":
        assert d.message  # the log and the record say why


def test_no_config_or_no_destination_is_refused(tmp_path):
    assert decide_raw(None, "db.example", 1).action == "refuse"
    assert decide_raw(cfg(tmp_path, raw_tcp="record"), None, None).reason == "no_destination"
    config = cfg(tmp_path, raw_tcp="record")
    assert decide_raw(config, "db.example", 1, registered(config, "db.example"), identity=ANONYMOUS).action == "record"


def test_the_setting_is_validated(tmp_path):
    from recorder.config import ConfigError
    with pytest.raises(ConfigError, match=r"policy\.raw_tcp: expected one of \"refuse\", \"record\""):
        cfg(tmp_path, raw_tcp="allow")
    assert parse_config('[storage]\ndir = "s"\n[identity]\nmode = "none"\n', source="t", base_dir=tmp_path
                        ).policy.raw_tcp == "refuse"
