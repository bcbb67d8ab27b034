"""`wiretrail ca`: the CA it makes is the one a real mitmdump uses, in mitmproxy's layout,
with the private key kept private; an existing mitmproxy CA is exported unchanged."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import http.server
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from recorder.commands import ca as ca_command
from recorder.tls import ca

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MITMDUMP = BIN / "mitmdump"
WIRETRAIL = BIN / "wiretrail"
CA_FILES = ca.PRIVATE_FILES + ca.PUBLIC_FILES


# --- helpers ----------------------------------------------------------------------------


def run_ca_command(argv: list[str], capsys) -> tuple[int, str, str]:
    """The command through its own add_parser/run, as recorder/cli.py drives it."""
    parser = argparse.ArgumentParser(prog="wiretrail")
    ca_command.add_parser(parser.add_subparsers(dest="command"))
    rc = ca_command.run(parser.parse_args(["ca", *argv]))
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(d: Path) -> dict[str, tuple[str, int, int]]:
    """name -> (sha256, mtime_ns, inode) for every file in d."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(d.iterdir())
        if p.is_file()
    }


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, log: Path, deadline_s: float = 60) -> None:
    """Readiness only (not a timing assertion): poll until the port accepts."""
    end = datetime.datetime.now() + datetime.timedelta(seconds=deadline_s)
    while datetime.datetime.now() < end:
        if proc.poll() is not None:
            pytest.fail(f"mitmdump exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        threading.Event().wait(0.05)
    pytest.fail(f"mitmdump did not listen on {port}:\n{log.read_text()}")


@contextlib.contextmanager
def mitmdump(confdir: Path, tmp_path: Path, *extra: str):
    port = free_port()
    log = tmp_path / f"mitmdump-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(MITMDUMP),
                "--set", f"confdir={confdir}",
                "--listen-host", "127.0.0.1",
                "--listen-port", str(port),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(tmp_path)},  # keep away from the real ~/.mitmproxy
        )
    try:
        wait_listening(proc, port, log)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def self_signed(tmp_path: Path) -> tuple[Path, Path, x509.Certificate]:
    """A self-signed leaf for the local upstream, unrelated to any CA under test."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "upstream-cert.pem", tmp_path / "upstream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from upstream"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def tls_upstream(tmp_path: Path):
    cert_path, key_path, cert = self_signed(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1], cert_path
    finally:
        server.shutdown()
        server.server_close()


def trusting(*cafiles: Path) -> ssl.SSLContext:
    """A client context that trusts exactly these files and nothing else."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for f in cafiles:
        ctx.load_verify_locations(cafile=str(f))
    return ctx


# --- the CA mitmdump actually uses --------------------------------------------------------


@pytest.mark.e2e
def test_mitmdump_intercepts_with_the_ca_wiretrail_made(tmp_path, capsys):
    confdir = tmp_path / "conf"
    rc, out, _ = run_ca_command([str(confdir)], capsys)
    assert rc == 0 and "Created a new CA" in out
    ours = confdir / ca.CERT_PEM
    our_cert = load_cert(ours)
    before = snapshot(confdir)

    with tls_upstream(tmp_path) as (up_port, upstream_cert), mitmdump(
        confdir, tmp_path, "--set", "ssl_insecure=true"
    ) as proxy_port:
        proxy = f"http://127.0.0.1:{proxy_port}"
        url = f"https://localhost:{up_port}/"
        # Trusting ONLY our CA certificate is enough: the gateway's leaf chains to it.
        with httpx.Client(proxy=proxy, verify=trusting(ours), trust_env=False) as client:
            with client.stream("GET", url) as r:
                # read the peer certificate while the connection is still open
                der = r.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)
                assert r.status_code == 200 and r.read() == b"hello from upstream"
        seen = x509.load_der_x509_certificate(der)
        assert seen.issuer == our_cert.subject
        seen.verify_directly_issued_by(our_cert)  # raises if not signed by our key
        assert "localhost" in seen.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)

        # Control: the upstream's own certificate is not what the client sees through the proxy.
        with httpx.Client(proxy=proxy, verify=trusting(upstream_cert), trust_env=False) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                client.get(url)

    assert snapshot(confdir) == before, "mitmdump must load our CA, not rewrite it"


def test_mitmproxy_certstore_loads_the_same_ca(tmp_path):
    """mitmproxy's own loader picks up our files and signs leaves with our key."""
    from mitmproxy import certs  # the test may import mitmproxy; recorder/ may not

    info = ca.ensure_ca(tmp_path / "conf")
    store = certs.CertStore.from_store(info.dir, "mitmproxy", 2048)
    ours = load_cert(info.cert_path)
    assert store.default_ca.fingerprint() == ours.fingerprint(hashes.SHA256())
    leaf = store.get_cert("api.openai.com", [x509.DNSName("api.openai.com")]).cert
    leaf._cert.verify_directly_issued_by(ours)
    assert ca.DEFAULT_DHPARAM == certs.DEFAULT_DHPARAM


def test_certificate_matches_mitmproxy_create_ca_except_the_name(tmp_path):
    from mitmproxy import certs

    _, theirs = certs.create_ca(organization="mitmproxy", cn="mitmproxy", key_size=2048)
    ours = load_cert(ca.ensure_ca(tmp_path / "conf").cert_path)

    def shape(c: x509.Certificate):
        exts = {}
        for e in c.extensions:
            value = None if isinstance(e.value, x509.SubjectKeyIdentifier) else e.value
            exts[e.oid.dotted_string] = (e.critical, value)
        pub = c.public_key()
        return exts, type(pub).__mro__[1], pub.key_size, pub.public_numbers().e, c.signature_hash_algorithm.name

    assert shape(ours) == shape(theirs)
    skid = ours.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert skid == x509.SubjectKeyIdentifier.from_public_key(ours.public_key())
    assert ours.subject == ours.issuer
    assert ours.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "wiretrail"
    assert ours.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "wiretrail"
    lifetime = ours.not_valid_after_utc - ours.not_valid_before_utc
    assert lifetime == ca.CA_EXPIRY + datetime.timedelta(days=2)


# --- layout, modes, and the private key ------------------------------------------------------


def test_layout_and_modes_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        info = ca.ensure_ca(tmp_path / "new" / "conf")
    finally:
        os.umask(old)
    d = info.dir
    assert info.created
    assert {p.name for p in d.iterdir()} == set(CA_FILES) | {ca.BUNDLE}
    assert mode(d) == 0o700
    for name in ca.PRIVATE_FILES:
        assert mode(d / name) == 0o600, name
    for name in ca.PUBLIC_FILES + (ca.BUNDLE,):
        assert mode(d / name) == 0o644, name
    assert (d / ca.CERT_CER).read_bytes() == (d / ca.CERT_PEM).read_bytes()
    assert (d / ca.DHPARAM).read_bytes() == ca.DEFAULT_DHPARAM

    # mitmproxy-ca.pem: a TraditionalOpenSSL RSA key, then the certificate (as mitmproxy writes it)
    raw = (d / ca.KEY_PEM).read_bytes()
    assert raw.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    key = serialization.load_pem_private_key(raw, None)
    cert = x509.load_pem_x509_certificates(raw)
    assert cert == [load_cert(d / ca.CERT_PEM)]
    assert key.public_key() == cert[0].public_key()
    p12_key, p12_cert, _ = pkcs12.load_key_and_certificates((d / ca.KEY_P12).read_bytes(), None)
    assert p12_key.public_key() == key.public_key() and p12_cert == cert[0]


def test_existing_dir_is_restricted_only_when_it_is_ours_alone(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    empty.chmod(0o755)
    rc, _, err = run_ca_command([str(empty)], capsys)
    assert rc == 0 and "warning" not in err
    assert mode(empty) == 0o700

    # A directory that holds other things (a project, /tmp) keeps its mode; the user is told.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "notes.txt").write_text("someone else's file")
    rc, _, err = run_ca_command([str(shared)], capsys)
    assert rc == 0
    assert mode(shared) == 0o755
    assert "mode 0755" in err and "dedicated directory" in err
    assert mode(shared / ca.KEY_PEM) == 0o600 and mode(shared / ca.KEY_P12) == 0o600


def test_private_key_is_in_no_exported_file_and_no_output(tmp_path, capsys):
    d = tmp_path / "conf"
    rc, out, err = run_ca_command([str(d)], capsys)
    assert rc == 0
    key_pem = (d / ca.KEY_PEM).read_bytes().split(b"-----BEGIN CERTIFICATE-----")[0]
    key_lines = [ln for ln in key_pem.splitlines() if ln and not ln.startswith(b"-----")]
    assert len(key_lines) > 10
    key = serialization.load_pem_private_key((d / ca.KEY_PEM).read_bytes(), None)
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    for name in (ca.CERT_PEM, ca.CERT_CER, ca.BUNDLE):
        data = (d / name).read_bytes()
        assert b"PRIVATE KEY" not in data, name
        assert not any(ln in data for ln in key_lines), name
    p12_key, p12_cert, p12_more = pkcs12.load_key_and_certificates(
        (d / ca.CERT_P12).read_bytes(), None
    )
    assert p12_key is None  # with no key, the certificate lands among the extra certs
    assert [c for c in (p12_cert, *p12_more) if c is not None] == [load_cert(d / ca.CERT_PEM)]
    assert key_der not in (d / ca.CERT_P12).read_bytes()

    for args in ([str(d)], [str(d), "--print-path"], [str(d), "--print-bundle-path"]):
        rc, out, err = run_ca_command(args, capsys)
        assert rc == 0
        for text in (out, err):
            assert "PRIVATE KEY" not in text
            assert not any(ln.decode() in text for ln in key_lines)


def test_bundle_is_system_roots_plus_our_ca(tmp_path):
    info = ca.ensure_ca(tmp_path / "conf")
    bundle = info.bundle_path.read_bytes()
    system = ca.system_bundle().read_bytes()
    assert bundle.startswith(system.rstrip(b"\n"))
    assert bundle.endswith(info.cert_path.read_bytes())
    certs_in_bundle = x509.load_pem_x509_certificates(bundle)
    assert certs_in_bundle[-1] == load_cert(info.cert_path)
    assert len(certs_in_bundle) == len(x509.load_pem_x509_certificates(system)) + 1
    ssl.create_default_context(cafile=str(info.bundle_path))  # loadable as SSL_CERT_FILE


# --- idempotence and export --------------------------------------------------------------


def test_second_run_exports_and_regenerates_nothing(tmp_path, capsys):
    d = tmp_path / "conf"
    rc, out, _ = run_ca_command([str(d)], capsys)
    assert rc == 0 and "Created a new CA" in out
    before = snapshot(d)

    rc, out, _ = run_ca_command([str(d)], capsys)
    assert rc == 0
    assert "Exported the existing CA" in out and "Created" not in out
    assert str(d / ca.CERT_PEM) in out
    assert snapshot(d) == before  # same bytes, same mtimes, same inodes

    rc, out, err = run_ca_command([str(d), "--print-path"], capsys)
    assert (rc, out, err) == (0, f"{d / ca.CERT_PEM}\n", "")
    rc, out, err = run_ca_command([str(d), "--print-bundle-path"], capsys)
    assert (rc, out, err) == (0, f"{d / ca.BUNDLE}\n", "")
    assert snapshot(d) == before


def test_concurrent_runs_end_with_one_ca(tmp_path):
    d = tmp_path / "conf"
    results: list[ca.CaInfo] = []
    threads = [threading.Thread(target=lambda: results.append(ca.ensure_ca(d))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    on_disk = x509.load_pem_x509_certificates((d / ca.KEY_PEM).read_bytes())[0]
    fp = on_disk.fingerprint(hashes.SHA256()).hex(":").upper()
    assert {r.fingerprint_sha256 for r in results} == {fp}
    assert load_cert(d / ca.CERT_PEM) == on_disk
    assert sum(r.created for r in results) >= 1
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.e2e
def test_exports_a_ca_mitmdump_made_unchanged(tmp_path, capsys):
    confdir = tmp_path / "mitm"
    with mitmdump(confdir, tmp_path):
        pass  # mitmproxy writes its CA while configuring, before it listens
    made_by_mitmproxy = snapshot(confdir)
    assert set(made_by_mitmproxy) == set(CA_FILES)

    rc, out, _ = run_ca_command([str(confdir)], capsys)
    assert rc == 0
    assert "Exported the existing CA" in out
    assert f"{confdir / ca.CERT_PEM}" in out
    after = snapshot(confdir)
    assert set(after) - set(made_by_mitmproxy) == {ca.BUNDLE}
    assert {k: after[k] for k in made_by_mitmproxy} == made_by_mitmproxy
    cert = load_cert(confdir / ca.CERT_PEM)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mitmproxy"
    assert (confdir / ca.BUNDLE).read_bytes().endswith((confdir / ca.CERT_PEM).read_bytes())

    rc, out, _ = run_ca_command([str(confdir), "--print-path"], capsys)
    assert (rc, out) == (0, f"{confdir / ca.CERT_PEM}\n")


def test_missing_public_cert_is_rewritten_from_the_key_file(tmp_path, capsys):
    info = ca.ensure_ca(tmp_path / "conf")
    expected = info.cert_path.read_bytes()
    info.cert_path.unlink()
    rc, out, err = run_ca_command([str(info.dir), "--print-path"], capsys)
    assert rc == 0 and out == f"{info.cert_path}\n"
    assert "was missing" in err
    assert info.cert_path.read_bytes() == expected
    assert b"PRIVATE KEY" not in info.cert_path.read_bytes()


# --- refusals -----------------------------------------------------------------------------


def test_stale_public_cert_is_refused(tmp_path, capsys):
    a = ca.ensure_ca(tmp_path / "a")
    b = ca.ensure_ca(tmp_path / "b")
    shutil.copy(b.cert_path, a.cert_path)
    rc, out, err = run_ca_command([str(a.dir), "--print-path"], capsys)
    assert rc == 1 and out == ""
    assert "is not the certificate of the CA" in err and "Remove it" in err


def test_public_cert_holding_a_key_is_refused(tmp_path, capsys):
    info = ca.ensure_ca(tmp_path / "conf")
    shutil.copy(info.dir / ca.KEY_PEM, info.cert_path)
    rc, out, err = run_ca_command([str(info.dir)], capsys)
    assert rc == 1 and out == ""
    assert "contains a private key" in err and "do not hand it out" in err


def test_public_files_without_key_are_not_overwritten(tmp_path, capsys):
    src = ca.ensure_ca(tmp_path / "gateway")
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    shutil.copy(src.cert_path, client_dir / ca.CERT_PEM)
    before = snapshot(client_dir)
    rc, out, err = run_ca_command([str(client_dir)], capsys)
    assert rc == 1 and out == ""
    assert f"no {ca.KEY_PEM}" in err
    assert snapshot(client_dir) == before


def test_key_file_without_key_is_refused(tmp_path, capsys):
    info = ca.ensure_ca(tmp_path / "conf")
    (info.dir / ca.KEY_PEM).write_bytes(info.cert_path.read_bytes())
    rc, _, err = run_ca_command([str(info.dir)], capsys)
    assert rc == 1 and "holds no private key" in err


def test_dir_that_cannot_be_written_gives_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc, out, err = run_ca_command([str(blocker / "conf")], capsys)
    assert rc == 1 and out == ""
    assert f"cannot write the CA to {blocker / 'conf'}" in err and "confdir" in err

    rc, _, err = run_ca_command([str(blocker)], capsys)
    assert rc == 1 and "is not a directory" in err

    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = ro
    else:  # root ignores mode bits; sysfs refuses new entries even to root
        target = Path("/sys/kernel/wiretrail-ca-test")
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no read-only directory available to root here")
    rc, out, err = run_ca_command([str(target)], capsys)
    assert rc == 1 and out == ""
    assert f"cannot write the CA to {target}" in err
    assert not (target / ca.KEY_PEM).exists()


# --- the installed command ------------------------------------------------------------------


def test_wiretrail_ca_defaults_to_home_mitmproxy(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    r = subprocess.run(
        [str(WIRETRAIL), "ca", "--print-path"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    confdir = tmp_path / ".mitmproxy"
    assert r.stdout == f"{confdir / ca.CERT_PEM}\n"
    assert "created a new CA" in r.stderr
    assert (confdir / ca.KEY_PEM).exists() and mode(confdir) == 0o700

    r = subprocess.run([str(WIRETRAIL), "ca"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Exported the existing CA" in r.stdout
    assert "--set confdir" not in r.stdout  # the default confdir needs no flag
    assert f"NODE_EXTRA_CA_CERTS={confdir / ca.CERT_PEM}" in r.stdout
    assert f"SSL_CERT_FILE={confdir / ca.BUNDLE}" in r.stdout


def test_usage_error_exits_2(tmp_path):
    r = subprocess.run(
        [str(WIRETRAIL), "ca", "--print-path", "--print-bundle-path", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2 and "not allowed with" in r.stderr
    assert not list(tmp_path.iterdir())


def test_ca_modules_do_not_import_mitmproxy():
    code = (
        "import sys, recorder.tls.ca, recorder.commands.ca\n"
        "bad = [m for m in sys.modules if m == 'mitmproxy' or m.startswith('mitmproxy.')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr


def test_private_ca_files_under_certs_are_git_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    private = [f"certs/{n}" for n in ca.PRIVATE_FILES] + ["certs/gateway/mitmproxy-ca.pem"]
    r = subprocess.run(["git", "check-ignore", *private], cwd=REPO, capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(private)
    r = subprocess.run(["git", "check-ignore", "-q", "certs/README.md"], cwd=REPO)
    assert r.returncode == 1, "certs/README.md must stay tracked"
