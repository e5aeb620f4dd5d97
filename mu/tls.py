"""Keys and TLS contexts for mutual TLS between the coordinator and its workers.

Theory of operation
-------------------
A run uses three identities, all signed by one CA (DESIGN §6):

* the CA (its key signs the two others and is not needed during a run);
* the coordinator's certificate and key: the key never leaves the coordinator;
* the workers' shared client certificate and key, which travel in the invocation payload.

Both sides verify the peer's chain against the CA. Host names are not checked: the
coordinator's address differs per run and per network, and the chain to a CA made for this
purpose is what authenticates it.

Key types follow who signs and who verifies. The coordinator signs one handshake per worker
and verifies every worker's chain and signature, and it is the one process that serves them
all; the workers each make one handshake. So the coordinator's own key is ECDSA P-256 (cheap
to sign with), and the CA's and the workers' keys are RSA-2048, which are about three times
cheaper to verify than ECDSA P-256 (roughly 18 against 50 microseconds here) and cost a worker
about 0.25 ms more to sign with, once. RSA-2048 is rated at 112 bits of security (NIST:
acceptable through 2030) against P-256's 128, and a client at OpenSSL security level 3 (a
"FUTURE" system crypto policy) refuses it; keys of any type OpenSSL accepts can be brought
with ``-c/-s/-k`` and the worker options instead.

:func:`generate_keys` makes a fresh :class:`KeySet` in memory (a run without keys given uses
an ephemeral one); :meth:`KeySet.write` stores it as the six PEM files of ``mu genkeys`` with
private keys mode 0600, refusing to overwrite without ``force``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

from mu.errors import ConfigError

__all__ = [
    "KEY_FILES", "KeySet", "client_context", "generate_keys", "mint_worker", "server_context",
]

KEY_FILES = {
    "ca_cert": "ca_cert.pem",
    "ca_key": "ca_key.pem",
    "server_cert": "server_cert.pem",
    "server_key": "server_key.pem",
    "worker_cert": "worker_cert.pem",
    "worker_key": "worker_key.pem",
}
_PRIVATE = frozenset({"ca_key", "server_key", "worker_key"})


@dataclass(frozen=True)
class KeySet:
    """PEM text of the CA, coordinator and worker identities (``ca_key`` may be empty)."""

    ca_cert: str
    server_cert: str
    server_key: str
    worker_cert: str
    worker_key: str
    ca_key: str = ""

    def write(self, directory: str | os.PathLike[str], force: bool = False) -> list[Path]:
        """Write the six PEM files into ``directory`` (created if missing).

        Returns:
            The paths written.

        Raises:
            ConfigError: a file exists and ``force`` is false (nothing is written then).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        items = [(attr, out / name) for attr, name in KEY_FILES.items() if getattr(self, attr)]
        existing = [str(p) for _, p in items if p.exists()]
        if existing and not force:
            raise ConfigError(
                f"refusing to overwrite {', '.join(existing)} (use --force to replace them)"
            )
        for attr, path in items:
            mode = 0o600 if attr in _PRIVATE else 0o644
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "w") as f:
                f.write(getattr(self, attr))
            os.chmod(path, mode)
        return [p for _, p in items]

    @classmethod
    def load(
        cls,
        ca_cert: str | os.PathLike[str],
        server_cert: str | os.PathLike[str],
        server_key: str | os.PathLike[str],
        worker_cert: str | os.PathLike[str] | None = None,
        worker_key: str | os.PathLike[str] | None = None,
    ) -> KeySet:
        """Read PEM files; without a worker pair, the server pair serves the workers too
        (the 2016 behaviour), which is allowed but means the worker key is the server key.

        Raises:
            ConfigError: files missing, unreadable or not PEM (all of them named).
        """

        problems: list[str] = []

        def read(path: str | os.PathLike[str] | None, what: str) -> str:
            if path is None:
                return ""
            try:
                text = Path(path).read_text()
            except OSError as exc:
                problems.append(f"cannot read {what} {os.fspath(path)!r}: {exc.strerror}")
                return ""
            if "-----BEGIN " not in text:
                problems.append(f"{what} {os.fspath(path)!r} is not a PEM file")
            return text

        ca = read(ca_cert, "CA certificate")
        srv_cert = read(server_cert, "server certificate")
        srv_key = read(server_key, "server key")
        wrk_cert = read(worker_cert, "worker certificate")
        wrk_key = read(worker_key, "worker key")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(
            ca_cert=ca,
            server_cert=srv_cert,
            server_key=srv_key,
            worker_cert=wrk_cert or srv_cert,
            worker_key=wrk_key or srv_key,
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mu"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _pem_key(key: _PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def generate_keys(days: int = 3650) -> KeySet:
    """Make a CA and the coordinator and worker identities it signs (key types: see the
    module's docstring).

    Args:
        days: validity of every certificate, from now.

    Raises:
        ConfigError: ``days`` is not positive.
    """
    if days <= 0:
        raise ConfigError(f"certificate validity must be a positive number of days, got {days}")
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    ca_key = _rsa_key()
    ca_name = _name("mu run CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert, server_key = _leaf(
        ca_cert, ca_key, "mu coordinator", ExtendedKeyUsageOID.SERVER_AUTH,
        ec.generate_private_key(ec.SECP256R1()), now, until,
    )
    worker_cert, worker_key = _leaf(
        ca_cert, ca_key, "mu worker", ExtendedKeyUsageOID.CLIENT_AUTH, _rsa_key(), now, until
    )
    return KeySet(
        ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca_key=_pem_key(ca_key),
        server_cert=server_cert,
        server_key=server_key,
        worker_cert=worker_cert,
        worker_key=worker_key,
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: _PrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    key: _PrivateKey,
    now: datetime.datetime,
    until: datetime.datetime,
) -> tuple[str, str]:
    """A certificate for ``key`` signed by the CA, and the key: both PEM."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:  # a CA made elsewhere may not carry one
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(aki, critical=False)
    )
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def mint_worker(ca_cert_pem: str, ca_key_pem: str, days: int = 2) -> tuple[str, str]:
    """A fresh worker certificate and key (RSA-2048, client auth) signed by an existing CA,
    for a run given the coordinator's identity and the CA's key but no worker pair.

    Args:
        ca_cert_pem: the CA certificate (PEM).
        ca_key_pem: the CA's private key (PEM, unencrypted).
        days: validity from now (never beyond the CA's own).

    Returns:
        (certificate PEM, key PEM).

    Raises:
        ConfigError: the CA certificate or key does not parse, or they do not belong together.
    """
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
        ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot parse the CA certificate or key: {exc}") from exc
    if not isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ConfigError(f"the CA key is a {type(ca_key).__name__}; RSA or ECDSA is needed")
    if ca_key.public_key() != ca_cert.public_key():
        raise ConfigError("the CA key does not belong to the CA certificate")
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    return _leaf(ca_cert, ca_key, "mu worker", ExtendedKeyUsageOID.CLIENT_AUTH, _rsa_key(), now,
                 until)


# --------------------------------------------------------------------------- TLS contexts

_TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
_SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1
_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER = 0x2
_SSL_MODE_NO_AUTO_CHAIN = 0x8


def server_context(keys: KeySet) -> SSL.Context:
    """The coordinator's pyOpenSSL context: TLS >= 1.2, client certificate required and
    verified against the run's CA, no compression, no session resumption; it sends its
    certificate alone.

    Raises:
        ConfigError: a certificate or key does not parse, or they do not match.
    """
    try:
        cert = x509.load_pem_x509_certificate(keys.server_cert.encode())
        key = serialization.load_pem_private_key(keys.server_key.encode(), password=None)
        ca = x509.load_pem_x509_certificate(keys.ca_cert.encode())
    except ValueError as exc:
        raise ConfigError(f"cannot parse the coordinator's certificate or key: {exc}") from exc
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_CIPHER_SERVER_PREFERENCE)
    # AES-128-GCM-SHA256 first (TLS 1.3's mandatory suite): its key schedule hashes with
    # SHA-256 and its cipher runs 10 rounds, not 14, so handshakes and records cost a little
    # less than with AES-256-GCM-SHA384, the stdlib client's first choice.
    ctx.set_tls13_ciphersuites(_TLS13_SUITES)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # Partial writes for non-blocking sends; idle connections give their buffers back,
    # which is most of a connection's memory when thousands wait on slow workers.
    ctx.set_mode(
        _SSL_MODE_ENABLE_PARTIAL_WRITE
        | _SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        | SSL.MODE_RELEASE_BUFFERS
        | _SSL_MODE_NO_AUTO_CHAIN
    )
    try:
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise ConfigError(f"the coordinator's key does not match its certificate: {exc}") from exc
    # Only our certificate is sent: the workers have the CA already. Without NO_AUTO_CHAIN
    # OpenSSL would build the chain from the store at every handshake, checking the CA's
    # signature on our own certificate each time (about a tenth of a handshake's CPU).
    ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(ca))  # type: ignore[union-attr]
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    return ctx


def client_context(keys: KeySet, minimum: int = SSL.TLS1_2_VERSION) -> SSL.Context:
    """A pyOpenSSL client context presenting the worker identity (tests and tools)."""
    cert = x509.load_pem_x509_certificate(keys.worker_cert.encode())
    key = serialization.load_pem_private_key(keys.worker_key.encode(), password=None)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(minimum)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)  # type: ignore[arg-type]
    ctx.get_cert_store().add_cert(  # type: ignore[union-attr]
        crypto.X509.from_cryptography(x509.load_pem_x509_certificate(keys.ca_cert.encode()))
    )
    ctx.set_verify(SSL.VERIFY_PEER)
    return ctx
