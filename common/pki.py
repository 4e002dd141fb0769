"""The federation's PKI, made with ``cryptography``: a CA, the SuperLink's TLS
certificate, and each SuperNode's authentication key pair.

Guarantees: private keys are written once, with 0600 permissions, by an exclusive
create (never silently overwritten) and never printed; a private key with looser
permissions is refused when used. Formats are what Flower 1.42 loads: PEM X.509 for the
CA and server (EC P-384, PKCS#8 keys), OpenSSH ECDSA P-384 for SuperNode keys.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedshield.common.errors import ConfigError

CURVE = ec.SECP384R1()
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_new(path: Path, data: bytes, private: bool) -> None:
    """Create ``path`` exclusively; a private file gets 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # holds private keys
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path} already exists; fedshield never overwrites keys or certificates. "
            "Move it away first if you mean to replace it (see deploy/README.md, rotation)."
        ) from exc
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# Headers of what people pass by mistake where a private key belongs (OpenSSH public key
# lines, PEM public keys and certificates), and the marker every private key we load has.
_PUBLIC_KEY_STARTS = (b"ssh-", b"ecdsa-sha2-", b"sk-", b"-----BEGIN PUBLIC KEY", b"---- BEGIN SSH2")
_PRIVATE_KEY_MARK = b"PRIVATE KEY-----"
_KEY_FILE_MAX_BYTES = 64 * 1024  # a private key is a few hundred bytes


def check_private_key_file(path: str | Path) -> Path:
    """Refuse a missing private key, a file that is not one (a public key, a
    certificate), or one that others can read."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: private key not found; create it with `fedshield pki ...`")
    _check_is_private_key(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: permissions {oct(mode)} are too open for a private key (others can read it); "
            f"run: chmod 600 {path}"
        )
    return path


def _check_is_private_key(path: Path) -> None:
    """Decided on the file's first bytes, before its permissions: advice to chmod a public
    key would send the user the wrong way."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_KEY_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the private key ({exc.strerror})") from exc
    text = head.lstrip()
    if text.startswith(_PUBLIC_KEY_STARTS):
        private = path.with_suffix(".key") if path.suffix == ".pub" else "NAME.key"
        raise ConfigError(
            f"{path} is a public key; pass the private key {private} made by `fedshield pki node`"
        )
    if text.startswith(b"-----BEGIN CERTIFICATE"):
        raise ConfigError(
            f"{path} is a certificate, not a private key; pass the private key file (.key)"
        )
    if len(head) > _KEY_FILE_MAX_BYTES or _PRIVATE_KEY_MARK not in head:
        raise ConfigError(
            f"{path} is not a private key (no PEM or OpenSSH private key block); pass the "
            "private key NAME.key made by `fedshield pki`"
        )


def init_ca(directory: Path, name: str = "fedshield federation CA", days: int = 730) -> Path:
    """Create the federation's CA (ca.crt, ca.key) in ``directory``."""
    key = ec.generate_private_key(CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_new(directory / CA_KEY, _pkcs8(key), private=True)
    _write_new(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return directory / CA_CERT


def _load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path = check_private_key_file(directory / CA_KEY)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    return key, cert


def issue_server_certificate(
    directory: Path,
    hosts: list[str],
    days: int = 397,
    valid_from: dt.datetime | None = None,
    cert_name: str = SERVER_CERT,
    key_name: str = SERVER_KEY,
) -> Path:
    """Issue the SuperLink's certificate for ``hosts`` (DNS names and IP addresses)."""
    if not hosts:
        raise ConfigError("give at least one --host (a DNS name or IP the data owners will dial)")
    ca_key, ca_cert = _load_ca(directory)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(CURVE)
    start = valid_from or _now() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_new(directory / key_name, _pkcs8(key), private=True)
    _write_new(directory / cert_name, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return directory / cert_name


def create_node_key(directory: Path, name: str) -> tuple[Path, str]:
    """A SuperNode's OpenSSH ECDSA key pair (NAME.key, NAME.pub); returns (pub, fingerprint)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"node name {name!r} must be a plain file name, e.g. hospital-a")
    key = ec.generate_private_key(CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_new(directory / f"{name}.key", private, private=True)
    _write_new(directory / f"{name}.pub", public + f" {name}\n".encode(), private=False)
    return directory / f"{name}.pub", ssh_public_key_fingerprint(directory / f"{name}.pub")


def ssh_public_key_fingerprint(path: str | Path) -> str:
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it."""
    parts = Path(path).read_text().split()
    if len(parts) < 2:
        raise ConfigError(f"{path}: not an OpenSSH public key")
    blob = base64.b64decode(parts[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def node_key_fingerprint(private_key_path: str | Path) -> str:
    """Fingerprint of the public half of a SuperNode's OpenSSH private key."""
    try:
        key = serialization.load_ssh_private_key(Path(private_key_path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:  # another format, or a passphrase
        raise ConfigError(
            f"{private_key_path} is not an unencrypted OpenSSH private key ({exc}); pass the "
            "node key NAME.key made by `fedshield pki node`"
        ) from exc
    blob = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return "SHA256:" + base64.b64encode(
        hashlib.sha256(base64.b64decode(blob.split()[1])).digest()
    ).decode().rstrip("=")


def certificate_sha256(path: str | Path) -> str:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


def probe_tls_endpoint(address: str, ca_path: str | Path, timeout_s: float = 5.0) -> dict[str, str]:
    """Connect to ``host:port`` trusting only ``ca_path``; report protocol and peer cert.

    This is the evidence the audit logs record for "confidentiality in transit": the TLS
    version negotiated and the SHA-256 of the certificate the peer presented.
    """
    import socket
    import ssl

    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_path))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        return {
            "tls-version": tls.version() or "unknown",
            "cipher": tls.cipher()[0],
            "peer-certificate-sha256": hashlib.sha256(der).hexdigest(),
        }


def check_certificate_current(path: str | Path) -> None:
    """Refuse to serve a certificate that is expired or not yet valid."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    now = _now()
    if cert.not_valid_after_utc <= now:
        raise ConfigError(
            f"{path}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; issue a new one "
            "with `fedshield pki server` (see deploy/README.md, rotation)"
        )
    if cert.not_valid_before_utc > now:
        raise ConfigError(
            f"{path}: certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
