"""The certificate authority mitmproxy uses to intercept TLS, made or exported for clients.

mitmproxy 11.0.2 keeps its CA in its confdir (default ~/.mitmproxy) under the basename
"mitmproxy" and makes one on first start if `mitmproxy-ca.pem` is missing
(mitmproxy/certs.py: CertStore.from_store / create_store / create_ca). `ensure_ca` writes
exactly that layout, with the same key type, size and extensions, so a gateway started with
`--set confdir=DIR` loads our CA instead of making its own. Subject CN and O are "wiretrail",
so users can tell it apart from a stock mitmproxy CA.

No mitmproxy import here (the `wiretrail` CLI must work without it): `cryptography` only.
Nothing in this module ever prints, returns or copies private key bytes outside
mitmproxy-ca.pem and mitmproxy-ca.p12.
"""
from __future__ import annotations

import datetime
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DIR = "~/.mitmproxy"  # mitmproxy's CONF_DIR
BASENAME = "mitmproxy"  # mitmproxy's CONF_BASENAME: the file names below depend on it
KEY_SIZE = 2048  # mitmproxy's default key_size option
CA_EXPIRY = datetime.timedelta(days=10 * 365)  # as mitmproxy's CA_EXPIRY
CA_NAME = "wiretrail"

# Private key and certificate: the file mitmproxy loads. Its presence means "a CA exists".
KEY_PEM = f"{BASENAME}-ca.pem"
KEY_P12 = f"{BASENAME}-ca.p12"
CERT_PEM = f"{BASENAME}-ca-cert.pem"
CERT_CER = f"{BASENAME}-ca-cert.cer"
CERT_P12 = f"{BASENAME}-ca-cert.p12"
DHPARAM = f"{BASENAME}-dhparam.pem"
BUNDLE = "wiretrail-ca-bundle.pem"  # system roots + our CA, for SSL_CERT_FILE / REQUESTS_CA_BUNDLE

PRIVATE_FILES = (KEY_PEM, KEY_P12)
PUBLIC_FILES = (CERT_PEM, CERT_CER, CERT_P12, DHPARAM)

# Copied verbatim from mitmproxy 11.0.2 certs.DEFAULT_DHPARAM. mitmproxy writes it into a new
# confdir and would write it itself on first load if missing; we write it so the layout matches.
DEFAULT_DHPARAM = b"""
-----BEGIN DH PARAMETERS-----
MIICCAKCAgEAyT6LzpwVFS3gryIo29J5icvgxCnCebcdSe/NHMkD8dKJf8suFCg3
O2+dguLakSVif/t6dhImxInJk230HmfC8q93hdcg/j8rLGJYDKu3ik6H//BAHKIv
j5O9yjU3rXCfmVJQic2Nne39sg3CreAepEts2TvYHhVv3TEAzEqCtOuTjgDv0ntJ
Gwpj+BJBRQGG9NvprX1YGJ7WOFBP/hWU7d6tgvE6Xa7T/u9QIKpYHMIkcN/l3ZFB
chZEqVlyrcngtSXCROTPcDOQ6Q8QzhaBJS+Z6rcsd7X+haiQqvoFcmaJ08Ks6LQC
ZIL2EtYJw8V8z7C0igVEBIADZBI6OTbuuhDwRw//zU1uq52Oc48CIZlGxTYG/Evq
o9EWAXUYVzWkDSTeBH1r4z/qLPE2cnhtMxbFxuvK53jGB0emy2y1Ei6IhKshJ5qX
IB/aE7SSHyQ3MDHHkCmQJCsOd4Mo26YX61NZ+n501XjqpCBQ2+DfZCBh8Va2wDyv
A2Ryg9SUz8j0AXViRNMJgJrr446yro/FuJZwnQcO3WQnXeqSBnURqKjmqkeFP+d8
6mk2tqJaY507lRNqtGlLnj7f5RNoBFJDCLBNurVgfvq9TCVWKDIFD4vZRjCrnl6I
rD693XKIHUCWOjMh1if6omGXKHH40QuME2gNa50+YPn1iYDl88uDbbMCAQI=
-----END DH PARAMETERS-----
"""

# Where the system's roots are found when certifi is not installed (first readable wins).
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, BSDs
)

_PRIVATE_KEY_MARKER = b"PRIVATE KEY-----"


class CaError(Exception):
    """The CA cannot be made or exported; the message says what to do."""


@dataclass
class CaInfo:
    dir: Path
    created: bool  # True: made now; False: an existing CA was exported
    cert_path: Path  # the public CA certificate (PEM) to hand to clients
    bundle_path: Path | None  # system roots + our CA, or None if no system roots were found
    subject: str
    fingerprint_sha256: str  # "AB:CD:..." of the CA certificate
    not_after: datetime.datetime
    written: list[Path] = field(default_factory=list)  # files this call wrote
    warnings: list[str] = field(default_factory=list)


def ca_dir(path: str | os.PathLike | None) -> Path:
    """The confdir mitmproxy would use for this argument (expands ~ like mitmproxy does)."""
    return Path(os.path.expanduser(str(path) if path is not None else DEFAULT_DIR)).absolute()


def ensure_ca(path: str | os.PathLike | None = None) -> CaInfo:
    """Make the CA in `path` unless one is there; either way return where its public cert is."""
    d = ca_dir(path)
    if d.exists() and not d.is_dir():
        raise CaError(f"{d} exists and is not a directory; pass a directory for the CA.")
    if (d / KEY_PEM).exists():
        return _export(d)
    leftovers = [n for n in PRIVATE_FILES[1:] + PUBLIC_FILES[:3] if (d / n).exists()]
    if leftovers:
        # Public files without the key: most likely a copy handed to a client. Making a new
        # CA here would overwrite them with a certificate no running gateway uses.
        raise CaError(
            f"{d} has {', '.join(leftovers)} but no {KEY_PEM} (the CA private key). "
            f"Run `wiretrail ca` on the gateway's confdir instead, or remove those files "
            f"to make a new CA here."
        )
    return _create(d)


# --- creating ---------------------------------------------------------------------------


def create_ca_cert(
    cn: str = CA_NAME, organization: str = CA_NAME, key_size: int = KEY_SIZE
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """The same certificate mitmproxy's create_ca builds, with our name."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(name)
        .issuer_name(name)
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + CA_EXPIRY)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    return key, builder.sign(private_key=key, algorithm=hashes.SHA256())


def _create(d: Path) -> CaInfo:
    # The dir will hold a private key: make it 0700. mkdir's mode is cut by the umask, so
    # chmod too, but only a dir that is ours alone (new or empty), never e.g. /tmp or a project.
    own_dir = not d.exists() or not any(d.iterdir())
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if own_dir:
            os.chmod(d, 0o700)
    except OSError as e:
        raise _not_writable(d, e) from e
    if not os.access(d, os.W_OK | os.X_OK):
        raise _not_writable(d, PermissionError("no write permission"))

    key, cert = create_ca_cert()
    key_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,  # as mitmproxy writes it
        encryption_algorithm=serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    friendly = CA_NAME.encode()
    contents = {
        KEY_P12: pkcs12.serialize_key_and_certificates(
            name=friendly, key=key, cert=cert, cas=None,
            encryption_algorithm=serialization.NoEncryption(),
        ),
        CERT_PEM: cert_pem,
        CERT_CER: cert_pem,  # same PEM bytes; the .cer name is what Android wants
        CERT_P12: pkcs12.serialize_key_and_certificates(
            name=friendly, key=None, cert=cert, cas=None,
            encryption_algorithm=serialization.NoEncryption(),
        ),
        DHPARAM: DEFAULT_DHPARAM,
    }
    written: list[Path] = []
    try:
        # mitmproxy-ca.pem goes first and exclusively: it is the "CA exists" marker, and
        # whoever places it wins a race with a second `wiretrail ca` on the same dir.
        if not _place_exclusive(d / KEY_PEM, key_pem + cert_pem, 0o600):
            return _export(d)
        written.append(d / KEY_PEM)
        for name, data in contents.items():
            mode = 0o600 if name in PRIVATE_FILES else 0o644
            _write_atomic(d / name, data, mode)
            written.append(d / name)
    except OSError as e:
        raise _not_writable(d, e) from e

    info = _info(d, cert, created=True)
    info.written = written
    dir_mode = stat.S_IMODE(d.stat().st_mode)
    if dir_mode & 0o077:
        info.warnings.append(
            f"{d} (mode {dir_mode:04o}) also holds other files, so its mode was left alone; "
            f"the key files are 0600, but a dedicated directory with mode 0700 is safer"
        )
    _refresh_bundle(info)
    return info


def _place_exclusive(path: Path, data: bytes, mode: int) -> bool:
    """Write `path` complete or not at all; False if it already exists."""
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        # No hard links on this filesystem: O_EXCL still gives the exclusive claim.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True
    finally:
        os.unlink(tmp)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    os.replace(_write_temp(path, data, mode), path)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    # mkstemp creates the file 0600, so key bytes are never readable by others, even briefly.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _not_writable(d: Path, e: OSError) -> CaError:
    reason = e.strerror or str(e)
    return CaError(
        f"cannot write the CA to {d}: {reason}. Pass a directory you can write to "
        f"(`wiretrail ca DIR`, then start mitmdump with --set confdir=DIR), or fix its permissions."
    )


# --- exporting --------------------------------------------------------------------------


def _export(d: Path) -> CaInfo:
    """Check the existing CA and point at its public certificate. Existing files are not
    changed; a missing public certificate is derived from mitmproxy-ca.pem."""
    key_file = d / KEY_PEM
    try:
        raw = key_file.read_bytes()
    except OSError as e:
        raise CaError(
            f"cannot read {key_file}: {e.strerror or e}. Run as the user that owns the gateway's confdir."
        ) from e
    if _PRIVATE_KEY_MARKER not in raw:
        raise CaError(
            f"{key_file} holds no private key, so it is not a mitmproxy CA "
            f"(mitmproxy-ca.pem must contain the key and the certificate)."
        )
    try:
        chain = x509.load_pem_x509_certificates(raw)
    except ValueError:
        raise CaError(
            f"{key_file} holds no readable certificate; mitmproxy-ca.pem must contain "
            f"the private key and the CA certificate (PEM)."
        ) from None
    ca = chain[0]  # mitmproxy signs with the first certificate in the file
    _check_key_matches(key_file, raw, ca)

    info = _info(d, ca, created=False)
    cert_file = d / CERT_PEM
    if cert_file.exists():
        _check_public_file(cert_file, chain)
    else:
        try:
            _write_atomic(
                cert_file,
                b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
                0o644,
            )
        except OSError as e:
            raise _not_writable(d, e) from e
        info.written.append(cert_file)
        info.warnings.append(f"{CERT_PEM} was missing; wrote it from {KEY_PEM} (certificate only)")

    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        info.warnings.append(
            f"{key_file} is readable by others (mode {mode:04o}); run: chmod 600 {key_file}"
        )
    if ca.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
        info.warnings.append(
            "this CA has expired; clients will reject it. See certs/README.md, Rotation."
        )
    _refresh_bundle(info)
    return info


def _check_key_matches(key_file: Path, raw: bytes, ca: x509.Certificate) -> None:
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        return  # encrypted (mitmproxy's cert_passphrase): we cannot and need not read it
    except ValueError:
        raise CaError(f"{key_file}: the private key cannot be read.") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, pub) != ca.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ):
        raise CaError(
            f"{key_file}: the private key does not belong to the first certificate; "
            f"mitmproxy could not sign with it. Restore the file or make a new CA."
        )


def _check_public_file(cert_file: Path, chain: list[x509.Certificate]) -> None:
    raw = cert_file.read_bytes()
    if _PRIVATE_KEY_MARKER in raw:
        raise CaError(
            f"{cert_file} contains a private key. It must hold only the certificate: do not "
            f"hand it out. Remove it; `wiretrail ca` then rewrites it from {KEY_PEM}."
        )
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError:
        raise CaError(
            f"{cert_file} holds no readable certificate. Remove it; `wiretrail ca` then "
            f"rewrites it from {KEY_PEM}."
        ) from None
    if not {c.fingerprint(hashes.SHA256()) for c in certs} & {
        c.fingerprint(hashes.SHA256()) for c in chain
    }:
        raise CaError(
            f"{cert_file} is not the certificate of the CA in {KEY_PEM} (a leftover from an "
            f"older CA?). Clients trusting it would reject the gateway. Remove it; "
            f"`wiretrail ca` then rewrites it."
        )


# --- shared -----------------------------------------------------------------------------


def _info(d: Path, cert: x509.Certificate, *, created: bool) -> CaInfo:
    return CaInfo(
        dir=d,
        created=created,
        cert_path=d / CERT_PEM,
        bundle_path=None,
        subject=cert.subject.rfc4514_string(),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        not_after=cert.not_valid_after_utc,
    )


def system_bundle() -> Path | None:
    """The CA bundle Python clients trust by default: certifi's, else the OS one."""
    try:
        import certifi

        return Path(certifi.where())
    except ImportError:
        pass
    for candidate in SYSTEM_BUNDLES:
        p = Path(candidate)
        if p.is_file() and os.access(p, os.R_OK):
            return p
    return None


def _refresh_bundle(info: CaInfo) -> None:
    """(Re)write wiretrail-ca-bundle.pem = system roots + our CA certificate. It is public,
    and rewriting it picks up updated system roots; unchanged content is left alone."""
    source = system_bundle()
    if source is None:
        info.warnings.append(
            f"no system CA bundle found (install certifi or ca-certificates), so {BUNDLE} "
            f"was not written; SSL_CERT_FILE={info.cert_path} trusts only the gateway."
        )
        return
    system = source.read_bytes()
    if _PRIVATE_KEY_MARKER in system:
        info.warnings.append(f"{source} contains a private key, so {BUNDLE} was not written")
        return
    ours = info.cert_path.read_bytes()
    data = (
        system.rstrip(b"\n")
        + b"\n\n# wiretrail gateway CA: "
        + info.subject.encode()
        + b"\n"
        + ours
    )
    path = info.dir / BUNDLE
    try:
        if not path.exists() or path.read_bytes() != data:
            _write_atomic(path, data, 0o644)
            info.written.append(path)
    except OSError as e:
        info.warnings.append(f"could not write {path}: {e.strerror or e}")
        return
    info.bundle_path = path
