"""Password hashing and the self-signed TLS certificate."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
import string
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pyxapi import security
from pyxapi.security import (
    certificate_paths,
    ensure_tls_certificate,
    generate_password,
    hash_password,
    ssl_context,
    verify_password,
)

# ---- passwords --------------------------------------------------------------------------------


def test_hash_format_is_self_describing() -> None:
    stored = hash_password("xenroot")
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt, validate=True)) == 16
    raw = base64.b64decode(digest, validate=True)
    assert raw == hashlib.scrypt(b"xenroot", salt=base64.b64decode(salt), n=16384, r=8, p=1, dklen=len(raw))


def test_salt_is_random() -> None:
    assert hash_password("same") != hash_password("same")


@pytest.mark.parametrize("password", ["xenroot", "", "pässwörd ✓", "with $ and spaces ", "a" * 1000, "\ud800lone"])
def test_right_password_verifies(password: str) -> None:
    assert verify_password(password, hash_password(password)) is True


def test_wrong_passwords_are_rejected() -> None:
    stored = hash_password("xenroot")
    for wrong in ["Xenroot", "xenroot ", " xenroot", "xenroo", "", "xenrootxenroot", "xenr\u00f6ot"]:
        assert verify_password(wrong, stored) is False


def test_other_parameters_in_the_stored_string_are_honoured() -> None:
    # A hash written with cheaper (older) parameters keeps verifying after a cost change.
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"pw", salt=salt, n=1024, r=4, p=2, dklen=32)
    stored = f"scrypt$1024$4$2${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert verify_password("pw", stored) is True
    assert verify_password("pW", stored) is False


def _good() -> list[str]:
    return hash_password("pw").split("$")


def _with(index: int, value: str) -> str:
    parts = _good()
    parts[index] = value
    return "$".join(parts)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "pw",
        "$$$$$",
        "scrypt",
        "scrypt$16384$8$1$c2FsdA==",
        _with(0, "bcrypt"),
        _with(0, "SCRYPT"),
        _with(1, "abc"),
        _with(1, " 16384"),
        _with(1, "+16384"),
        _with(1, "16_384"),
        _with(1, "-16384"),
        _with(1, "0"),
        _with(1, "1"),
        _with(1, "1000"),  # not a power of two
        _with(1, str(2**30)),  # would need 128 GiB
        _with(1, "9" * 400),
        _with(2, "0"),
        _with(2, "100000"),
        _with(3, "0"),
        _with(3, "99"),
        _with(4, ""),
        _with(4, "not base64!"),
        _with(5, ""),
        _with(5, "@@@@"),
        _with(5, base64.b64encode(b"short").decode()),
        _with(5, base64.b64encode(b"x" * 64).decode()),
        _with(4, base64.b64encode(b"salt").decode()),
        "$".join([*_good(), "extra"]),
        hash_password("pw")[:-4],  # still valid base64, a prefix of the real hash
        hash_password("pw")[:-8],
        hash_password("pw") + "\n",
        "\x00" * 10,
    ],
)
def test_malformed_stored_strings_are_false_never_raise(stored: str) -> None:
    assert verify_password("pw", stored) is False


def test_non_string_arguments_are_false() -> None:
    stored = hash_password("pw")
    assert verify_password("pw", None) is False  # type: ignore[arg-type]
    assert verify_password("pw", stored.encode()) is False  # type: ignore[arg-type]
    assert verify_password(None, stored) is False  # type: ignore[arg-type]
    assert verify_password(b"pw", stored) is False  # type: ignore[arg-type]


def test_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = security.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert verify_password("pw", hash_password("pw"))
    assert not verify_password("nope", hash_password("pw"))
    assert len(calls) == 2


def test_generate_password() -> None:
    alphabet = set(string.ascii_letters + string.digits + "-_")
    passwords = {generate_password() for _ in range(500)}
    assert len(passwords) == 500
    for pw in passwords:
        assert len(pw) == 24
        assert set(pw) <= alphabet
    assert len(generate_password(40)) == 40
    assert len(generate_password(16)) == 16
    with pytest.raises(ValueError):
        generate_password(15)
    # Generated passwords survive the hash round trip and URL/shell-free contexts.
    pw = generate_password()
    assert verify_password(pw, hash_password(pw))


# ---- TLS --------------------------------------------------------------------------------------

ADDRESSES = ["192.0.2.10", "2001:db8::5", "host.example.org", " ", "192.0.2.10"]


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("data") / "nested" / "var"  # does not exist yet
    ensure_tls_certificate(data_dir, "xenhost1", ADDRESSES)
    return data_dir


def _load(cert_path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert_path.read_bytes())


def test_files_are_created_where_documented(tls_dir: Path) -> None:
    cert_path, key_path = certificate_paths(tls_dir)
    assert cert_path == tls_dir / "tls" / "server.pem"
    assert key_path == tls_dir / "tls" / "server.key"
    assert ensure_tls_certificate(tls_dir, "xenhost1", ADDRESSES) == (cert_path, key_path)
    assert cert_path.is_file() and key_path.is_file()
    assert [p.name for p in (tls_dir / "tls").iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_key_is_private(tls_dir: Path) -> None:
    cert_path, key_path = certificate_paths(tls_dir)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tls_dir / "tls").stat().st_mode) & 0o077 == 0


def test_certificate_names_the_host(tls_dir: Path) -> None:
    cert = _load(certificate_paths(tls_dir)[0])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert dns == ["xenhost1", "localhost", "host.example.org"]
    assert ips == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("2001:db8::5"),
    ]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "xenhost1"
    assert cert.issuer == cert.subject  # self-signed


def test_certificate_validity_and_usage(tls_dir: Path) -> None:
    cert_path, key_path = certificate_paths(tls_dir)
    cert = _load(cert_path)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now
    lifetime = cert.not_valid_after_utc - now
    assert dt.timedelta(days=3640) < lifetime <= dt.timedelta(days=3650)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert key.key_size == 2048  # type: ignore[union-attr]


def test_existing_files_are_never_replaced(tmp_path: Path) -> None:
    cert_path, key_path = ensure_tls_certificate(tmp_path, "h", [])
    # An administrator installs their own pair: we must not touch it, valid or not.
    cert_path.write_bytes(b"ADMIN CERT")
    key_path.write_bytes(b"ADMIN KEY")
    assert ensure_tls_certificate(tmp_path, "other-name", ["198.51.100.1"]) == (cert_path, key_path)
    assert cert_path.read_bytes() == b"ADMIN CERT"
    assert key_path.read_bytes() == b"ADMIN KEY"


def test_missing_certificate_is_made_for_an_existing_key(tmp_path: Path) -> None:
    _, key_path = certificate_paths(tmp_path)
    key_path.parent.mkdir(parents=True)
    admin_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = admin_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.write_bytes(key_pem)
    cert_path, _ = ensure_tls_certificate(tmp_path, "h", [])
    assert key_path.read_bytes() == key_pem
    cert = _load(cert_path)
    assert cert.public_key().public_numbers() == admin_key.public_key().public_numbers()  # type: ignore[union-attr]


def test_certificate_without_key_is_an_error_not_an_overwrite(tmp_path: Path) -> None:
    cert_path, key_path = certificate_paths(tmp_path)
    cert_path.parent.mkdir(parents=True)
    cert_path.write_bytes(b"ADMIN CERT")
    with pytest.raises(FileNotFoundError, match="private key"):
        ensure_tls_certificate(tmp_path, "h", [])
    assert cert_path.read_bytes() == b"ADMIN CERT"
    assert not key_path.exists()


def test_key_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _, key_path = ensure_tls_certificate(tmp_path, "h", [])
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_odd_hostnames_still_give_a_certificate(tmp_path: Path) -> None:
    long_name = ".".join(["label"] * 20)  # > 64 characters: too long for a common name
    cert_path, _ = ensure_tls_certificate(tmp_path, long_name, ["bad name!", "bücher.example"])
    cert = _load(cert_path)
    dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert long_name in dns
    assert "xn--bcher-kva.example" in dns
    assert "bad name!" not in dns
    assert len(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value) == 64


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> str:
    """Run one TLS handshake over loopback; return the negotiated version."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            assert tls.recv(2) == b"ok"
            return str(tls.version())
    finally:
        thread.join(timeout=10)
        listener.close()


@pytest.mark.parametrize("name", ["localhost", "xenhost1", "127.0.0.1", "host.example.org"])
def test_clients_trusting_the_certificate_connect(tls_dir: Path, name: str) -> None:
    cert_path, key_path = certificate_paths(tls_dir)
    client = ssl.create_default_context(cafile=str(cert_path))
    version = _handshake(ssl_context(cert_path, key_path), client, name)
    assert version in ("TLSv1.2", "TLSv1.3")


def test_client_rejects_a_name_the_certificate_lacks(tls_dir: Path) -> None:
    cert_path, key_path = certificate_paths(tls_dir)
    client = ssl.create_default_context(cafile=str(cert_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ssl_context(cert_path, key_path), client, "not-this-host.example")


def test_ssl_context_is_a_tls12_plus_server_context(tls_dir: Path) -> None:
    ctx = ssl_context(*certificate_paths(tls_dir))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER
    # Clients limited to TLS 1.2 (older SDKs) still connect.
    client = ssl.create_default_context(cafile=str(certificate_paths(tls_dir)[0]))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(ctx, client, "localhost") == "TLSv1.2"
