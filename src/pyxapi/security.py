"""Password hashing and the daemon's TLS certificate.

Passwords are hashed with scrypt from the standard library, so there is no extra dependency,
and stored as one self-describing string (`scrypt$N$r$p$salt$hash`, base64 parts) so that the
cost parameters can be raised later without breaking hashes already stored.

The TLS certificate is self-signed and created once under the data directory. It is never
replaced by us: an administrator may install a CA-signed certificate and key in its place.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import secrets
import ssl
import string
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "certificate_paths",
    "ensure_tls_certificate",
    "generate_password",
    "hash_password",
    "ssl_context",
    "verify_password",
]

# ---- passwords --------------------------------------------------------------------------------

_SCHEME = "scrypt"
# n=2**14, r=8, p=1: the interactive-login parameters from the scrypt paper; ~16 MiB and a few
# tens of milliseconds per login on current hardware.
_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# A stored string is data from disk: refuse parameters that would make one verification eat
# gigabytes of memory or minutes of CPU (hashlib would try).
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16
_MAX_MEMORY = 256 * 1024 * 1024


def _encode(password: str) -> bytes:
    # surrogatepass: a password decoded from a client can hold lone surrogates; hashing must
    # not raise on them, and the same bytes come out on every verification.
    return password.encode("utf-8", "surrogatepass")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # maxmem must cover scrypt's 128*n*r bytes (plus a little), or OpenSSL refuses.
    maxmem = 128 * n * r * 2 + 1024 * 1024
    return hashlib.scrypt(_encode(password), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def hash_password(password: str) -> str:
    """Hash with a fresh random salt: `scrypt$16384$8$1$<salt b64>$<hash b64>`."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, _N, _R, _P, _HASH_BYTES)
    return "$".join(
        (_SCHEME, str(_N), str(_R), str(_P), base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    )


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; False for a wrong password or any malformed
    `stored` string. Never raises, so a corrupt user record cannot crash a login."""
    try:
        if not isinstance(password, str) or not isinstance(stored, str):
            return False
        parts = stored.split("$")
        if len(parts) != 6 or parts[0] != _SCHEME:
            return False
        n, r, p = (_parse_positive(x) for x in parts[1:4])
        if n < 2 or n > _MAX_N or n & (n - 1) or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
            return False
        if 128 * n * r > _MAX_MEMORY:
            return False
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
        # Exact lengths: with a free length, a hash cut short by whole base64 groups would
        # still verify (scrypt's output for a shorter length is a prefix of the longer one).
        if len(salt) != _SALT_BYTES or len(expected) != _HASH_BYTES:
            return False
        actual = _scrypt(password, salt, n, r, p, len(expected))
        # Constant time, so the comparison does not leak how much of the hash matched.
        return hmac.compare_digest(actual, expected)
    except Exception:
        # Whatever a corrupt string provokes (bad base64, parameters OpenSSL refuses, no
        # memory), the answer is the same: this password does not match.
        return False


def _parse_positive(text: str) -> int:
    # int() would accept " 16", "+16" and "1_6"; a stored hash is written by us, digits only.
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise ValueError(text)
    return int(text)


_PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_"


def generate_password(length: int = 24) -> str:
    """A random URL-safe password (letters, digits, `-`, `_`): ~143 bits at the default 24."""
    if length < 16:
        raise ValueError("generated passwords are at least 16 characters")
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


# ---- TLS --------------------------------------------------------------------------------------

_VALIDITY = dt.timedelta(days=3650)
_SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)
# Backdate a little so a client whose clock is slightly behind still accepts a new certificate.
_BACKDATE = dt.timedelta(days=1)


def certificate_paths(data_dir: Path) -> tuple[Path, Path]:
    """Where the server certificate and key live: `data_dir/tls/server.pem` and `server.key`."""
    tls = Path(data_dir) / "tls"
    return tls / "server.pem", tls / "server.key"


def ensure_tls_certificate(data_dir: Path, hostname: str, addresses: list[str]) -> tuple[Path, Path]:
    """Return (certificate, key) paths, creating a self-signed pair only where missing.

    Files that exist are left alone, whatever they hold, so an administrator's own
    certificate survives restarts. A key without a certificate gets a new certificate for that
    key; a certificate without its key is an error we cannot repair without replacing the
    administrator's certificate, so FileNotFoundError.

    The certificate (RSA 2048, SHA-256, 10 years) names `hostname`, `localhost`, 127.0.0.1,
    ::1 and every entry of `addresses` (IP addresses as IP SANs, anything else as a DNS name).
    """
    cert_path, key_path = certificate_paths(data_dir)
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    if cert_path.exists():
        raise FileNotFoundError(f"TLS certificate {cert_path} has no private key at {key_path}")
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    key: CertificateIssuerPrivateKeyTypes
    if key_path.exists():
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, _SIGNING_KEYS):
            raise ValueError(f"{key_path} holds a key that cannot sign a certificate")
        key = loaded
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_atomically(key_path, pem, 0o600)
    cert = _self_signed_certificate(key, hostname, addresses)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _self_signed_certificate(
    key: CertificateIssuerPrivateKeyTypes, hostname: str, addresses: list[str]
) -> x509.Certificate:
    # X.509 caps a common name at 64 characters; the SANs carry the full names, and clients
    # match on SANs only.
    common_name = (hostname or "localhost")[:64]
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pyxapi"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hostname, addresses)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _subject_alt_names(hostname: str, addresses: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for entry in (hostname, "localhost", "127.0.0.1", "::1", *addresses):
        entry = entry.strip()
        if not entry:
            continue
        general: x509.GeneralName
        try:
            ip = ipaddress.ip_address(entry)
        except ValueError:
            dns = _dns_name(entry)
            if dns is None:
                continue
            general = x509.DNSName(dns)
        else:
            general = x509.IPAddress(ip)
        ident = repr(general)
        if ident not in seen:
            seen.add(ident)
            names.append(general)
    return names


def _dns_name(name: str) -> str | None:
    """The name as an ASCII (A-label) DNS name, or None when it cannot be one."""
    name = name.rstrip(".").lower()
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    allowed = set(string.ascii_lowercase + string.digits + "-_.*")
    if not ascii_name or not set(ascii_name) <= allowed:
        return None
    return ascii_name


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file, and
    a key file is never readable by others, not even for a moment."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; widen for the certificate only
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context for the certificate and key: TLS 1.2 or newer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context
