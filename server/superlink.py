"""Flower's SuperLink behind fedshield's Fleet gateway, secure by default.

Guarantee: ``ServingSuperLink`` starts ``flower-superlink`` on 127.0.0.1 only, with a
persistent state database and no runtime dependency installation, and fedshield's
Fleet-only gateway on the public ``--host/--port``; unless ``insecure`` is set, both use
TLS, SuperNode authentication is on, and it returns only once both answer ``/health``
over TLS trusting the federation's CA alone.

Port layout, and why: Flower 1.42 serves the Fleet API (owners), the Control API (start
runs, register nodes, list runs; unauthenticated in open-source Flower) and the Runtime
API on one port, so the SuperLink itself listens only on loopback (``internal_port``,
reached by the operator's ``flwr`` CLI on this host or through an SSH port forward) and
owners reach ``server/fleet_gateway.py``, which forwards the Fleet API and nothing else.
A firewall rule cannot split one port by path; a second SuperLink flag that binds the
Control API apart no longer exists in 1.42 (``--control-api-address`` is deprecated).
"""

from __future__ import annotations

import ipaddress
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from fedshield.common.errors import ConfigError, FedshieldError
from fedshield.common.pki import (
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    certificate_sha256,
    check_certificate_current,
    check_private_key_file,
    probe_tls_endpoint,
)
from fedshield.common.processes import ManagedProcess, flower_binary, flower_env
from fedshield.server.identity import STATE_DIR_ENV

LOOPBACK = "127.0.0.1"


class DeploymentError(FedshieldError):
    """A Flower process did not start, connect or finish as expected."""


@dataclass(frozen=True)
class SuperLinkSettings:
    """``host``/``port``: the public Fleet gateway owners dial; ``internal_port``: the
    SuperLink itself (all of Flower's APIs), bound to 127.0.0.1 only."""

    pki_dir: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 9092
    insecure: bool = False
    internal_port: int = 9093

    def __post_init__(self) -> None:
        if self.internal_port == self.port:
            raise ConfigError(
                f"--internal-port {self.internal_port} equals --port: the SuperLink (loopback "
                "only) and the public Fleet gateway need two ports; pick another --internal-port"
            )

    @property
    def address(self) -> str:
        """Where this host's own tools dial the public gateway (loopback for a wildcard bind)."""
        host = LOOPBACK if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"

    @property
    def superlink_address(self) -> str:
        """The SuperLink itself, with its Control API: loopback only, for the operator."""
        return f"{LOOPBACK}:{self.internal_port}"

    @property
    def flwr_home(self) -> Path:
        return self.state_dir / "flwr-home"

    @property
    def refused_log(self) -> Path:
        """What the Fleet gateway refused: JSON Lines (time, method, path, peer, status)."""
        return self.state_dir / "logs" / "gateway-refused.jsonl"


def superlink_command(settings: SuperLinkSettings) -> list[str]:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    args = [
        flower_binary("flower-superlink"),
        "--database",
        str(settings.state_dir / "superlink.db"),
        "--disable-runtime-dependency-installation",
        "--isolation",
        "subprocess",
        # Loopback only: this port serves the unauthenticated Control API (see module doc).
        "--host",
        LOOPBACK,
        "--port",
        str(settings.internal_port),
    ]
    if settings.insecure:
        return [*args, "--insecure"]
    pki = settings.pki_dir
    for name in (CA_CERT, SERVER_CERT):
        if not (pki / name).is_file():
            raise ConfigError(
                f"{pki / name} not found; create it with `fedshield pki init/server --dir {pki}`"
            )
    check_private_key_file(pki / SERVER_KEY)
    check_certificate_current(pki / SERVER_CERT)
    check_certificate_names_loopback(pki / SERVER_CERT)
    return [
        *args,
        "--ssl-ca-certfile",
        str(pki / CA_CERT),
        "--ssl-certfile",
        str(pki / SERVER_CERT),
        "--ssl-keyfile",
        str(pki / SERVER_KEY),
        "--enable-supernode-auth",
    ]


def check_certificate_names_loopback(path: Path) -> None:
    """The gateway and the operator's ``flwr`` verify the SuperLink's certificate at
    127.0.0.1, so it must name that address beside the names the owners dial."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    if ipaddress.ip_address(LOOPBACK) not in names.get_values_for_type(x509.IPAddress):
        listed = [str(n) for n in names.get_values_for_type(x509.IPAddress)]
        listed += names.get_values_for_type(x509.DNSName)
        raise ConfigError(
            f"{path} names {', '.join(listed) or 'no address'} but not 127.0.0.1: the SuperLink "
            "listens on 127.0.0.1 behind fedshield's Fleet gateway, and the gateway and your flwr "
            "CLI check its certificate there. Issue one that also names it: `fedshield pki server "
            "--host <name owners dial> --host 127.0.0.1` (deploy/README.md, rotation)"
        )


def wait_until_serving(
    settings: SuperLinkSettings, address: str, process: ManagedProcess, timeout_s: float = 60
) -> None:
    """Wait until ``address`` answers ``/health`` over TLS trusting only the federation's CA."""
    scheme = "http" if settings.insecure else "https"
    context = (
        None
        if settings.insecure
        else ssl.create_default_context(cafile=str(settings.pki_dir / CA_CERT))
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.running:
            raise DeploymentError(f"{process.name} exited: {process.log_text()[-1500:]}")
        try:
            with urllib.request.urlopen(f"{scheme}://{address}/health", context=context, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise DeploymentError(
        f"{process.name} on {address} not serving after {timeout_s:.0f} s; see {process.log_path}"
    )


def fleet_gateway_command(settings: SuperLinkSettings) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "fedshield.server.fleet_gateway",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--upstream-port",
        str(settings.internal_port),
        "--refused-log",
        str(settings.refused_log),
        "--state",  # it publishes federation.json and the notices there
        str(settings.state_dir),
    ]
    return [*args, "--insecure"] if settings.insecure else [*args, "--pki", str(settings.pki_dir)]


class ServingSuperLink:
    """flower-superlink on loopback plus the Fleet-only gateway on the public address,
    both serving when the constructor returns; ``stop()`` ends both.

    ``before_public`` runs once the SuperLink serves on loopback and before the gateway
    opens the public port (the operator registers the owners' keys there), so an owner
    that is already waiting never meets a SuperLink that does not know its key yet.
    """

    def __init__(
        self, settings: SuperLinkSettings, before_public: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        logs = settings.state_dir / "logs"
        self.refused_from = (
            settings.refused_log.stat().st_size if settings.refused_log.exists() else 0
        )
        env = flower_env(settings.flwr_home)
        # The ServerApp process the SuperLink starts inherits this: it names owners by
        # their keys through this folder's registry (server/identity.py).
        env[STATE_DIR_ENV] = str(settings.state_dir.resolve())
        self.superlink = ManagedProcess(
            "flower-superlink", superlink_command(settings), logs / "superlink.log", env
        )
        self.gateway: ManagedProcess | None = None
        try:
            wait_until_serving(settings, settings.superlink_address, self.superlink)
            if before_public is not None:
                before_public()
            self.gateway = ManagedProcess(
                "fleet gateway", fleet_gateway_command(settings), logs / "gateway.log", env
            )
            wait_until_serving(settings, settings.address, self.gateway)
        except BaseException:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return self.superlink.running and self.gateway is not None and self.gateway.running

    def refused_requests(self) -> int:
        """Requests the gateway refused since this start (one log line each)."""
        if not self.settings.refused_log.exists():
            return 0
        with open(self.settings.refused_log, "rb") as lines:
            lines.seek(self.refused_from)
            return sum(1 for _ in lines)

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.superlink.stop()


def transport_evidence(settings: SuperLinkSettings, node_keys: list[dict]) -> str:
    """What the audit log records about transport and authentication."""
    if settings.insecure:
        return "INSECURE: plaintext, no TLS, no SuperNode authentication (--insecure)"
    probe = probe_tls_endpoint(settings.address, settings.pki_dir / CA_CERT)
    fingerprints = ",".join(k["fingerprint"] for k in node_keys)
    return (
        f"tls {probe['tls-version']} {probe['cipher']}; server-cert-sha256={probe['peer-certificate-sha256']}; "
        f"ca-sha256={certificate_sha256(settings.pki_dir / CA_CERT)}; supernode-auth on; "
        f"registered-node-keys={fingerprints}; public port {settings.port}: fedshield fleet gateway, "
        f"Fleet API only (refusals: {settings.refused_log.resolve()}); control-api on "
        f"{settings.superlink_address} only"
    )
