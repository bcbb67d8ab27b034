"""The config loader: every mistake stops start-up with a message naming the key; secrets stay out."""
import dataclasses
import re
from pathlib import Path

import pytest

from recorder import config as cfgmod
from recorder.config.schema import _Table
from recorder.config import (
    EMBEDDED_DEFAULT,
    ConfigError,
    SecretRef,
    load_config,
    parse_config,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# The smallest valid file; snippets below are appended to it.
BASE = '[storage]\ndir = "s"\n[identity]\nmode = "none"\n'
CONN = '[[connections]]\nname = "a"\nhosts = ["a.example.com"]\n'


def parse(text: str, base_dir: Path = Path("/cfg")):
    return parse_config(text, source="gw.toml", base_dir=base_dir)


def error_of(text: str, base_dir: Path = Path("/cfg")) -> str:
    with pytest.raises(ConfigError) as e:
        parse(text, base_dir)
    return str(e.value)


@pytest.mark.parametrize("text, expected", [
    # unknown keys and sections, with the closest name suggested
    (BASE + 'fsyncc = "batch"', 'identity.fsyncc: unknown key; did you mean "fsync" in [storage]?'),
    ('[storage]\ndir = "s"\nfsyncc = "batch"\n[identity]\nmode = "none"',
     'storage.fsyncc: unknown key; did you mean "fsync"?'),
    ('fsync = "batch"\n' + BASE, "fsync: unknown key; it belongs in [storage]"),
    (BASE + "[sesions]\nidle_timeout = 5", 'sesions: unknown key; did you mean "sessions"?'),
    (BASE + CONN + 'credentail = "env:X"', 'connections[0].credentail: unknown key; did you mean "credential"?'),
    (BASE + '[[masking.rules]]\nid = "x"\nregx = "a"', 'masking.rules[0].regx: unknown key; did you mean "regex"?'),
    (BASE + "[policy]\nzzz = 1", "policy.zzz: unknown key; known keys here: unregistered"),
    # wrong types
    ('[storage]\ndir = "s"\nfail_closed = "yes"\n[identity]\nmode = "none"',
     'storage.fail_closed: expected true or false, got "yes"'),
    (BASE + "[sessions]\nidle_timeout = true", "sessions.idle_timeout: expected a number of seconds > 0, got true"),
    ('storage = "s"', 'storage: expected a table ([storage]), got "s"'),
    (BASE + '[connections]\nname = "a"', "connections: expected an array of tables, written [[connections]], got a table"),
    (BASE + '[[connections]]\nname = "a"\nhosts = "a.com"', "connections[0].hosts: expected a non-empty array of host names"),
    (BASE + '[[connections]]\nname = "a"\nhosts = []', "connections[0].hosts: expected a non-empty array of host names"),
    (BASE + '[[connections]]\nname = "a"\nhosts = ["a.com"]\nports = 443', "connections[0].ports: expected an array of port numbers"),
    (BASE + '[masking]\nallowlist = [""]', "masking.allowlist[0]: expected a non-empty string"),
    # values outside the allowed set or range
    ('[storage]\ndir = "s"\nfsync = "sometimes"\n[identity]\nmode = "none"',
     'storage.fsync: expected one of "batch", "always", "never", got "sometimes"'),
    (BASE + CONN + '[[connections]]\nname = "b"\nhosts = ["b.com"]\ninject = "Bearer"',
     'connections[1].inject: expected one of "bearer", "x-api-key", "api-key", "x-goog-api-key", "none", got "Bearer"'),
    (BASE + '[policy]\nunregistered = "allow"', 'policy.unregistered: expected one of "deny", "tunnel", "record"'),
    ('[storage]\ndir = "s"\nfsync_interval = 11\n[identity]\nmode = "none"',
     "storage.fsync_interval: expected a number of seconds in (0, 10], got 11"),
    ('[storage]\ndir = "s"\nwrite_timeout = 0\n[identity]\nmode = "none"',
     "storage.write_timeout: expected a number of seconds in (0, 3600], got 0"),
    ('[storage]\ndir = "s"\ncheckpoint_interval = 0\n[identity]\nmode = "none"',
     "storage.checkpoint_interval: expected a number of seconds > 0, got 0"),
    ('[storage]\ndir = "s"\nretention_days = 1.5\n[identity]\nmode = "none"',
     "storage.retention_days: expected an integer number of days >= 0 (0 = keep forever), got 1.5"),
    (BASE + "[sessions]\nmax_duration = -1", "sessions.max_duration: expected a number of seconds > 0, got -1"),
    (BASE + "[sessions]\nidle_timeout = inf", "sessions.idle_timeout: expected a number of seconds > 0, got inf"),
    (BASE + "[capture]\nchunk_interval = 6", "capture.chunk_interval: expected a number of seconds in (0, 5], got 6"),
    (BASE + '[capture]\nmax_body = "12q"', 'capture.max_body: expected a byte count >= 0'),
    (BASE + "[capture]\nstream_threshold = -1", "capture.stream_threshold: expected a byte count >= 0"),
    (BASE.replace('"none"', '"none"\nleeway = -1'), "identity.leeway: expected a number of seconds >= 0, got -1"),
    (BASE + '[[connections]]\nname = "a"\nhosts = ["a.com"]\nports = [0]', "connections[0].ports[0]: expected a port number 1..65535, got 0"),
    (BASE + '[[connections]]\nname = "a"\nhosts = ["a.com"]\nports = [65536]', "connections[0].ports[0]: expected a port number"),
    (BASE + '[[connections]]\nname = "a"\nhosts = ["API.openai.com"]', 'connections[0].hosts[0]: expected a lowercase host name'),
    (BASE + '[[connections]]\nname = "a"\nhosts = ["https://a.com"]', 'connections[0].hosts[0]: expected a lowercase host name'),
    (BASE + '[[connections]]\nname = "a"\nhosts = ["a.com:443"]', 'connections[0].hosts[0]: expected a lowercase host name'),
    (BASE + '[[connections]]\nname = "a"\nhosts = ["*.*.a.com"]', 'connections[0].hosts[0]: expected a lowercase host name'),
    (BASE + '[[connections]]\nname = " "\nhosts = ["a.com"]', 'connections[0].name: expected a non-empty string, got " "'),
    # required keys and uniqueness
    ('[identity]\nmode = "none"', "storage.dir: missing; expected a path"),
    (BASE + '[[connections]]\nhosts = ["a.com"]', "connections[0].name: missing; expected a non-empty string"),
    (BASE + CONN + '[[connections]]\nname = "a"\nhosts = ["b.com"]', 'connections[1].name: "a" is already used by connections[0]'),
    (BASE + CONN + '[[connections]]\nname = "b"\nhosts = ["a.example.com"]\nports = [443]',
     'connections[1].hosts[0]: "a.example.com" is already matched by connections[0] ("a")'),
    # masking rules
    (BASE + '[[masking.rules]]\nid = "acme"\nregex = "acme_[A-Z"',
     "masking.rules[0].regex: the regular expression does not compile: unterminated character set"),
    (BASE + '[[masking.rules]]\nid = "acme"\nregex = "x*"', "masking.rules[0].regex: the regular expression matches the empty string"),
    (BASE + '[[masking.rules]]\nid = "Acme_Token"\nregex = "a"', 'masking.rules[0].id: expected a rule id of lowercase letters'),
    (BASE + '[[masking.rules]]\nid = "-a"\nregex = "a"', 'masking.rules[0].id: expected a rule id'),
    (BASE + '[[masking.rules]]\nid = "a"\nregex = "a"\n[[masking.rules]]\nid = "a"\nregex = "b"',
     'masking.rules[1].id: "a" is already used by masking.rules[0]'),
    # identity
    ('[storage]\ndir = "s"', 'identity: mode "jwt" is missing: issuer, audience, one of jwks_url / jwks_file / hs256_secret'),
    ('[storage]\ndir = "s"\n[identity]\nissuer = "i"\njwks_file = "k.json"', 'identity: mode "jwt" is missing: audience'),
    ('[storage]\ndir = "s"\n[identity]\nissuer = "i"\naudience = "a"\njwks_url = "https://i/k"\njwks_file = "k.json"',
     'identity: mode "jwt" takes exactly one of jwks_url / jwks_file / hs256_secret; got both jwks_url and jwks_file'),
    ('[storage]\ndir = "s"\n[identity]\nissuer = "i"\naudience = "a"\njwks_url = "idp.example.com/jwks"',
     "identity.jwks_url: expected an http(s) URL"),
    (BASE.replace('"none"', '"oidc"'), 'identity.mode: expected one of "jwt", "none", got "oidc"'),
    # secret references (the value is never shown)
    (BASE + CONN + 'credential = "sk-live-1234"', "connections[0].credential: secrets never go into the config file"),
    (BASE + CONN + "credential = 1234", "connections[0].credential: expected \"env:NAME\" or \"file:PATH\" or \"none\""
     " (record only, nothing injected), got an integer"),
    (BASE + CONN + 'credential = "env:1BAD"', 'connections[0].credential: expected "env:NAME" with NAME an environment variable name'),
    (BASE + CONN + 'credential = "file:"', 'connections[0].credential: expected "file:PATH" with a path'),
    (BASE.replace('"none"', '"none"\nhs256_secret = "none"'), 'identity.hs256_secret: "none" is not allowed here'),
    # anchors
    (BASE + '[anchors]\nfile = "s/anchors.jsonl"',
     "anchors.file: /cfg/s/anchors.jsonl is inside storage.dir (/cfg/s): whoever can roll the ledger back can edit it"),
    (BASE + '[anchors]\nsyslog = "log.example.com:514"',
     'anchors.syslog: expected a unix socket path ("/dev/log") or "udp:HOST:PORT", got "log.example.com:514"'),
    (BASE + '[anchors]\nhttp = "audit.example.com"', "anchors.http: expected an http(s) URL"),
    (BASE + '[anchors]\nhttp_token = "env:T"', "anchors.http_token: is set, but there is no http sink to send it to"),
    (BASE + '[anchors]\nhttp = "http://audit/a"\nhttp_token = "env:T"',
     "anchors.http_token: an http:// sink would carry the token in clear text; use https://"),
    (BASE + '[anchors]\nhttp_token = "tok-123"\nhttp = "https://a/"', "anchors.http_token: secrets never go into"),
    (BASE + "[anchors]\nfail_closed = true", "anchors.fail_closed: is true, but no sink is set"),
    (BASE + '[anchors]\nsyslog_facility = "local9"\nsyslog = "/dev/log"', 'anchors.syslog_facility: expected one of'),
    (BASE + "[anchors]\nmax_lag = 0", "anchors.max_lag: expected a number of seconds in (0, 86400], got 0"),
    # TOML syntax
    ('[storage]\ndir = "s"\nfsync = batch\n', "gw.toml: line 3, column 9: invalid TOML"),
    ('[storage]\ndir = "s"\ndir = "t"\n', "gw.toml: line 3, column"),
])
def test_error_messages(text, expected):
    message = error_of(text)
    assert expected in message
    assert message.startswith("gw.toml: ")


def test_defaults_fill_missing_sections():
    config = parse(BASE, Path("/cfg"))
    assert config.storage == cfgmod.StorageConfig(dir=Path("/cfg/s"))
    assert config.sessions == cfgmod.SessionsConfig()
    assert config.policy.unregistered == "deny"
    assert config.masking == cfgmod.MaskingConfig()
    assert config.capture == cfgmod.CaptureConfig(stream_threshold=262144, chunk_interval=0.1, max_body=0)
    assert config.connections == ()
    assert config.source == Path("gw.toml")


def test_each_default_is_declared_once_and_is_what_a_file_without_the_key_gives():
    """A key's default lives on its dataclass field: the schema reads it from there, and a file
    that gives only the required keys builds exactly the dataclasses' defaults."""
    minimal = BASE + CONN + '[[masking.rules]]\nid = "r"\nregex = "x+"\n'
    config = parse(minimal)
    assert config == cfgmod.GatewayConfig(
        storage=cfgmod.StorageConfig(dir=Path("/cfg/s")),
        identity=cfgmod.IdentityConfig(mode="none"),
        masking=cfgmod.MaskingConfig(rules=(cfgmod.MaskingRule(id="r", regex="x+"),)),
        connections=(cfgmod.ConnectionConfig(name="a", hosts=("a.example.com",)),),
        source=Path("gw.toml"))
    given = ("identity.mode", "masking.rules", "connections[].hosts")  # set above: the others are defaults
    checked = 0
    for path, key in cfgmod.iter_keys():
        section, _, name = path.rpartition(".")
        if not section or key.required or path in given:
            continue
        item = {"connections[]": config.connections[0], "masking.rules[]": config.masking.rules[0]}.get(section)
        item = item if item is not None else getattr(config, section)
        field = next(f for f in dataclasses.fields(item) if f.name == name)
        assert getattr(item, name) == key.default == field.default, path
        checked += 1
    assert checked == sum(1 for p, k in cfgmod.iter_keys() if "." in p and not k.required) - len(given)


def test_every_key_has_a_doc_and_each_kind_of_connection_its_own_keys():
    assert [p for p, k in cfgmod.iter_keys() if not k.doc.strip()] == []
    postgres_only = {p for p, k in cfgmod.iter_keys() if k.only_kind == "postgres"}
    assert "connections[].listen" in postgres_only and "connections[].name" not in postgres_only
    for path in sorted(postgres_only):
        name = path.rpartition(".")[2]
        value = {"upstream_tls": '"disable"', "allow_plaintext": "true", "sample_rows": "1"}.get(name, '"x:1"')
        assert error_of(BASE + CONN + f"{name} = {value}\n") == \
            f'gw.toml: connections[0].{name}: only for kind = "postgres" (this connection is kind "http")'


def test_allowed_values_have_one_home():
    """The values the code acts on and the values the config allows are the same tuple."""
    from recorder.auth.credentials import INJECT_MODES
    from recorder.config.presets import PRESETS
    from recorder.protocols.postgres.upstream import TLS_MODES
    from recorder.store.anchors import SYSLOG_FACILITIES
    from recorder.store.writer_protocol import FSYNC_POLICIES

    kinds = {p: k.kind for p, k in cfgmod.iter_keys()}
    assert kinds["storage.fsync"].values is FSYNC_POLICIES
    assert kinds["connections[].upstream_tls"].values is TLS_MODES
    assert kinds["connections[].inject"].values is INJECT_MODES
    assert kinds["connections[].preset"].values is PRESETS
    assert kinds["anchors.syslog_facility"].values is SYSLOG_FACILITIES


def test_numbers_sizes_and_lists_convert():
    config = parse(BASE + "[sessions]\nidle_timeout = 5\n[capture]\nstream_threshold = \"1M\"\nmax_body = \"2g\"\n"
                   + '[[connections]]\nname = "az"\nhosts = ["*.openai.azure.com", "10.0.0.1", "::1"]\nports = [443, 8443]\n'
                   + 'inject = "api-key"\nallow_groups = ["eng"]\n')
    assert config.sessions.idle_timeout == 5.0 and isinstance(config.sessions.idle_timeout, float)
    assert config.capture.stream_threshold == 1024 * 1024
    assert config.capture.max_body == 2 * 1024**3
    conn = config.connections[0]
    assert conn.hosts == ("*.openai.azure.com", "10.0.0.1", "::1")
    assert conn.ports == (443, 8443)
    assert conn.credential is None and conn.inject == "api-key" and conn.allow_groups == ("eng",)


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hs.key").write_text("dev-secret\n")
    (tmp_path / "etc" / "gw.toml").write_text(
        '[storage]\ndir = "sessions"\nsigning_key = "keys/gateway.key"\n'
        '[identity]\nissuer = "i"\naudience = "a"\nhs256_secret = "file:hs.key"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config("../etc/gw.toml")
    etc = elsewhere / ".." / "etc"
    assert config.source == etc / "gw.toml"
    assert config.storage.dir == etc / "sessions"
    assert config.storage.signing_key == etc / "keys" / "gateway.key"
    assert config.identity.hs256_secret.path == etc / "hs.key"
    assert config.identity.hs256_secret.read() == "dev-secret"

    jwks = parse('[storage]\ndir = "/abs/s"\n[identity]\nissuer = "i"\naudience = "a"\njwks_file = "k/jwks.json"',
                 Path("/cfg"))
    assert jwks.storage.dir == Path("/abs/s")
    assert jwks.identity.jwks_file == Path("/cfg/k/jwks.json")


def test_embedded_default_is_relative_to_cwd_and_has_no_source(tmp_path):
    config = load_config(None, cwd=tmp_path)
    assert config.source is None
    assert config.storage.dir == tmp_path / "sessions"
    assert config.storage.fail_closed is True and config.storage.signing_key == tmp_path / "keys" / "gateway.key"
    assert config.storage.fsync == "batch"
    # The development identity, with a secret made on first use, private to the user.
    assert config.identity.mode == "jwt" and config.identity.issuer == "wiretrail-dev"
    secret = tmp_path / "keys" / "dev-identity.secret"
    assert config.identity.hs256_secret.path == secret
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) >= 32
    assert load_config(None, cwd=tmp_path).identity.hs256_secret.read() == secret.read_text().strip()  # kept
    assert config.policy.unregistered == "tunnel"  # unregistered hosts pass through unrecorded (one log line), not sessions
    assert config.masking.builtin is True
    assert config.sessions == cfgmod.SessionsConfig() and config.capture == cfgmod.CaptureConfig()
    assert [(c.name, c.hosts, c.credential, c.inject) for c in config.connections] == [
        ("openai", ("api.openai.com",), None, "none"),
        ("anthropic", ("api.anthropic.com",), None, "none"),
        ("cursor", ("*.cursor.sh", "*.cursorapi.com", "*.cursor-cdn.com"), None, "none"),
    ]


def test_read_only_tools_do_not_create_the_dev_secret(tmp_path):
    load_config(None, cwd=tmp_path, read_secrets=False)
    assert not (tmp_path / "keys").exists()


def test_doc_embeds_the_embedded_default_verbatim():
    m = re.search(r"<!-- embedded-default -->\n```toml\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert m, "docs/configuration.md lost its embedded-default block"
    assert m.group(1) == EMBEDDED_DEFAULT


def test_doc_production_example_loads(tmp_path, monkeypatch):
    blocks = re.findall(r"## A production example\n\n```toml\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "anthropic.key").write_text("sk-ant-xyz\n")
    (tmp_path / "gw.toml").write_text(blocks[0])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-xyz")
    config = load_config(tmp_path / "gw.toml")
    assert config.capture.max_body == 64 * 1024**2
    assert [c.credential.read() for c in config.connections] == ["sk-openai-xyz", "sk-ant-xyz"]
    assert config.masking.rules == (cfgmod.MaskingRule("acme-internal-token", "acme_[A-Za-z0-9]{32}"),)


def test_env_and_file_secrets_are_read(tmp_path, monkeypatch):
    monkeypatch.setenv("WT_TEST_KEY", "  sk-from-env  ")
    (tmp_path / "k").write_text("sk-from-file\n")
    config = parse(BASE + CONN + 'credential = "env:WT_TEST_KEY"\n'
                   '[[connections]]\nname = "b"\nhosts = ["b.com"]\ncredential = "file:k"\ninject = "x-api-key"\n',
                   tmp_path)
    env_ref, file_ref = (c.credential for c in config.connections)
    assert env_ref == SecretRef(key="connections[0].credential", ref="env:WT_TEST_KEY", base_dir=tmp_path)
    assert env_ref.read() == "sk-from-env"
    assert file_ref.read() == "sk-from-file"
    assert "sk-from" not in repr(config) and repr(env_ref) == (
        "SecretRef(key='connections[0].credential', ref='env:WT_TEST_KEY')")


@pytest.mark.parametrize("setup, ref, expected", [
    (lambda d, mp: mp.delenv("WT_UNSET_KEY", raising=False), "env:WT_UNSET_KEY",
     'connections[0].credential: cannot read secret "env:WT_UNSET_KEY": the environment variable WT_UNSET_KEY is not set'),
    (lambda d, mp: mp.setenv("WT_EMPTY_KEY", " \n"), "env:WT_EMPTY_KEY",
     "the environment variable WT_EMPTY_KEY is empty"),
    (lambda d, mp: None, "file:missing.key", 'cannot read secret "file:missing.key": no such file: '),
    (lambda d, mp: (d / "empty.key").write_text("\n"), "file:empty.key", "empty.key is empty"),
    (lambda d, mp: (d / "dir.key").mkdir(), "file:dir.key", 'cannot read secret "file:dir.key": cannot read'),
    (lambda d, mp: (d / "bin.key").write_bytes(b"\xff\xfesk-binary"), "file:bin.key", "bin.key is not UTF-8 text"),
])
def test_unreadable_secret_stops_loading(tmp_path, monkeypatch, setup, ref, expected):
    setup(tmp_path, monkeypatch)
    message = error_of(BASE + CONN + f'credential = "{ref}"', tmp_path)
    assert expected in message
    assert "sk-binary" not in message


def test_unreadable_hs256_secret_stops_loading_even_if_unused(monkeypatch):
    monkeypatch.delenv("WT_UNSET_KEY", raising=False)
    assert ('identity.hs256_secret: cannot read secret "env:WT_UNSET_KEY"'
            in error_of(BASE.replace('"none"', '"none"\nhs256_secret = "env:WT_UNSET_KEY"')))


def test_secret_values_never_appear_in_errors(tmp_path, monkeypatch):
    secret = "sk-proj-THIS-IS-A-REAL-LOOKING-SECRET-0123456789abcdef"
    monkeypatch.setenv("WT_SECRET", secret)
    (tmp_path / "s.key").write_text(secret)
    short = "sk-short-1"
    texts = [
        BASE + CONN + f'credential = "{secret}"',                     # pasted into the right key
        BASE + CONN + f'credential = "{short}"',
        BASE + CONN + f'api_key = "{secret}"',                        # pasted under a made-up key
        BASE + CONN + f'inject = "{secret}"',                         # pasted into a non-secret key
        BASE.replace('"none"', f'"none"\nhs256_secret = "{short}"'),
        BASE + CONN + f'credential = ["{short}"]',
        # a readable secret, then a later error: the value read must not leak either
        BASE + CONN + 'credential = "env:WT_SECRET"\n[[connections]]\nname = "b"\nhosts = ["b.com"]\n'
        'credential = "file:s.key"\ninject = "nope"',
        f'[storage]\ndir = "s"\n[identity]\nmode = "none"\nissuer = "{secret}"\nx = 1',
    ]
    for text in texts:
        message = error_of(text, tmp_path)
        assert secret not in message and short not in message, message
        assert secret[:20] not in message


def test_missing_file_names_the_path_tried(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"config file not found: {tmp_path / 'nope.toml'}")):
        load_config("nope.toml", cwd=tmp_path)
    with pytest.raises(ConfigError, match="the config path is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="the config path is empty"):
        load_config("")


def test_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[storage]\ndir = "s"\n\nfsync = batch\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: line 4, column 9: invalid TOML")


def test_error_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[storage]\ndir = "s"\nfsync = "sometimes"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f'{path}: storage.fsync: expected one of "batch", "always", "never", got "sometimes"'
    assert (e.value.key, e.value.source) == ("storage.fsync", str(path))


def test_read_only_tools_load_without_the_upstream_secrets(tmp_path, monkeypatch):
    monkeypatch.delenv("WIRETRAIL_TEST_ABSENT", raising=False)
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        '[storage]\ndir = "s"\n[identity]\nmode = "none"\n'
        '[[connections]]\nname = "x"\nhosts = ["a.example"]\ncredential = "env:WIRETRAIL_TEST_ABSENT"\n'
    )
    with pytest.raises(ConfigError, match=r"connections\[0\]\.credential"):
        load_config(cfg)
    assert load_config(cfg, read_secrets=False).storage.dir == tmp_path / "s"


def test_the_reference_tables_are_generated_whole_from_the_schema():
    from recorder.config import docs

    text = DOC.read_text()
    assert docs.problems(text) == []
    # Every key is a row of one generated table, every cell of it from the key's declaration.
    for path, key in cfgmod.iter_keys():
        if "." in path or not isinstance(key.kind, _Table):
            assert docs.row(path, key) in text, path
    assert docs.row("storage.fsync", cfgmod.SCHEMA.by_name["storage"].kind.by_name["fsync"]) == (
        '| `storage.fsync` | string | `"batch"` | `"batch"`, `"always"`, `"never"` | `batch`: one fsync per batch '
        "of records (group commit); `always`: fsync after every record; `never`: leave flushing to the OS (a crash "
        "may lose the last records). |\n")
    # A changed default, doc or allowed value in the schema, or a row edited by hand, is a docs problem.
    storage = cfgmod.SCHEMA.by_name["storage"].kind
    fsync = storage.by_name["fsync"]
    for attr, value in (("default", "always"), ("doc", "fsync, sometimes")):
        old = getattr(fsync, attr)
        try:
            object.__setattr__(fsync, attr, value)
            assert "reference tables out of step" in " ".join(docs.problems(text)), attr
        finally:
            object.__setattr__(fsync, attr, old)
    edited = text.replace("Seconds between signed checkpoints", "Seconds between checkpoints")
    assert "reference tables out of step" in " ".join(docs.problems(edited))
    assert "storage.dir: in the schema, in no reference table" in " ".join(
        docs.problems(text.replace("<!-- reference: storage -->\n", "")))
