"""The `cursor` connection preset: one config line registers Cursor's backend, record only."""
import pytest

from recorder.config import EMBEDDED_DEFAULT, ConfigError, parse_config
from recorder.policy.destinations import Registry, canonical_host

def match_connection(connections, host: str, port: int):
    return Registry(connections).by_name(canonical_host(host), port)


BASE = '[storage]\ndir = "s"\n[identity]\nmode = "none"\n'


def parse(text: str):
    return parse_config(BASE + text, source="gw.toml", base_dir="/cfg")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse(text)
    return str(e.value)


def test_one_line_registers_cursor_record_only():
    (conn,) = parse('[[connections]]\npreset = "cursor"\n').connections
    assert (conn.name, conn.preset, conn.kind) == ("cursor", "cursor", "http")
    assert conn.credential is None and conn.inject == "none"  # Cursor's own token passes, recorded as a tag
    assert conn.hosts == ("*.cursor.sh", "*.cursorapi.com", "*.cursor-cdn.com")


@pytest.mark.parametrize("host", [
    "api2.cursor.sh", "api3.cursor.sh", "api4.cursor.sh", "agent.api5.cursor.sh", "agentn.us.api5.cursor.sh",
    "repo42.cursor.sh", "authenticate.cursor.sh", "authenticator.cursor.sh", "marketplace.cursorapi.com",
    "downloads.cursor-cdn.com", "API2.Cursor.SH.",
])
def test_cursor_hosts_match(host):
    conns = parse('[[connections]]\npreset = "cursor"\n').connections
    assert match_connection(conns, host, 443).name == "cursor"


@pytest.mark.parametrize("host", ["cursor.sh.evil.example", "evilcursor.sh", "api.openai.com", "cursor.com"])
def test_other_hosts_do_not_match(host):
    conns = parse('[[connections]]\npreset = "cursor"\n').connections
    assert match_connection(conns, host, 443) is None


def test_the_table_may_rename_limit_and_narrow_it():
    (conn,) = parse('[[connections]]\npreset = "cursor"\nname = "cursor-eng"\nallow_groups = ["eng"]\n'
                    'hosts = ["*.cursor.sh"]\nports = [443]\n').connections
    assert (conn.name, conn.allow_groups, conn.hosts, conn.ports) == ("cursor-eng", ("eng",), ("*.cursor.sh",), (443,))


@pytest.mark.parametrize("text, expected", [
    ('preset = "cursor"\ncredential = "env:CURSOR_KEY"',
     'connections[0].credential: the "cursor" preset is record-only (Cursor\'s bearer token is the user\'s own '
     "Cursor account, not a key the gateway could hold instead); leave credential out"),
    ('preset = "cursor"\ninject = "bearer"', 'connections[0].inject: the "cursor" preset is record-only'),
    ('preset = "cursor"\nkind = "postgres"', 'connections[0].kind: the "cursor" preset is an http connection'),
    ('preset = "cursr"', 'connections[0].preset: expected one of "cursor", got "cursr"'),
    ('preset = "cursor"\nhosts = []', "connections[0].hosts: expected a non-empty array of host names"),
])
def test_mistakes_stop_start_up_naming_the_key(text, expected):
    assert expected in error_of("[[connections]]\n" + text + "\n")


def test_explicit_none_is_accepted():
    (conn,) = parse('[[connections]]\npreset = "cursor"\ncredential = "none"\ninject = "none"\n').connections
    assert conn.credential is None


def test_a_second_connection_for_cursor_hosts_is_refused():
    err = error_of('[[connections]]\npreset = "cursor"\n[[connections]]\nname = "x"\nhosts = ["*.cursor.sh"]\n')
    assert "connections[1].hosts[0]" in err and "already matched" in err


def test_the_embedded_demo_default_records_cursor():
    assert '[[connections]]\npreset = "cursor"' in EMBEDDED_DEFAULT
