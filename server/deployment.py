"""The operator's side of a real federation: Flower's SuperLink, secure by default.

``fedshield server start`` = start ``flower-superlink`` on 127.0.0.1 with TLS, SuperNode
authentication, a persistent state database and no runtime dependency installation ->
start fedshield's Fleet-only gateway on the public ``--host/--port`` -> wait until both
answer over TLS -> register the data owners' node keys (recorded in STATE/owners.json,
which ``server status`` and ``server remove-owner`` read) -> wait for the nodes ->
``flwr run`` the fedshield apps with the run configuration -> stop.

Port layout, and why: Flower 1.42 serves the Fleet API (owners), the Control API (start
runs, register nodes, list runs; unauthenticated in open-source Flower) and the Runtime
API on one port, so the SuperLink itself listens only on loopback (``internal_port``,
reached by the operator's ``flwr`` CLI on this host or through an SSH port forward) and
owners reach ``server/fleet_gateway.py``, which forwards the Fleet API and nothing else.
A firewall rule cannot split one port by path; a second SuperLink flag that binds the
Control API apart no longer exists in 1.42 (``--control-api-address`` is deprecated).

The FAB that ``flwr run`` ships holds only a generated ``pyproject.toml``: the code
that runs is the fedshield package installed on each side (Flower imports the app
components from it), so operator and owners must run the same fedshield version; the
version is part of the training plan and the audit log.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from cryptography import x509

from fedshield.common.config import RunConfig
from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import ConfigError, FedshieldError
from fedshield.common.pki import (
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    certificate_sha256,
    check_certificate_current,
    check_private_key_file,
    probe_tls_endpoint,
    ssh_public_key_fingerprint,
)
from fedshield.common.processes import ManagedProcess, flower_binary, flower_env
from fedshield.server.identity import STATE_DIR_ENV

CONNECTION = "fedshield"
LOOPBACK = "127.0.0.1"
OWNERS_FILE = "owners.json"  # in the state folder: the node keys this operator registered
OWNERS_FORMAT = "fedshield-owners/1"


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


def write_connection_config(settings: SuperLinkSettings) -> None:
    """The ``flwr`` CLI's connection to this SuperLink ($FLWR_HOME/config.toml)."""
    settings.flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{settings.superlink_address}"',
    ]
    if settings.insecure:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{(settings.pki_dir / CA_CERT).resolve()}"')
    (settings.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


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


def flwr_cli(flwr_home: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """The ``flwr`` CLI with the connection ``write_connection_config`` wrote in ``flwr_home``."""
    return subprocess.run(
        [flower_binary("flwr"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=flower_env(flwr_home),
    )


def _flwr(
    settings: SuperLinkSettings, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess:
    return flwr_cli(settings.flwr_home, *args, timeout_s=timeout_s)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def load_owner_registry(state_dir: Path) -> list[dict]:
    """The node keys ``server start`` registered from this state folder (``OWNERS_FILE``):
    each with "name" (the key file's stem), "key", "fingerprint", "node-id" (None when the
    SuperLink had it already and this folder never learnt its id), "time", "removed"
    (None, or the time and reason of ``server remove-owner``) and, where the operator set
    one, "max-weight" (the most records the owner weighs in an average)."""
    path = Path(state_dir) / OWNERS_FILE
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text())["owners"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: not a fedshield owner registry ({exc}); it is rewritten by "
            "`fedshield server start`: move it aside and register the keys again"
        ) from None


def save_owner_registry(state_dir: Path, owners: list[dict]) -> None:
    body = {"format": OWNERS_FORMAT, "owners": owners}
    write_bytes_atomic(
        Path(state_dir) / OWNERS_FILE, json.dumps(body, indent=2).encode("utf-8"), mode=0o600
    )


def _remember_registration(state_dir: Path, key: Path, fingerprint: str, node_id) -> None:
    """Record a registration; a key the SuperLink had already keeps the node id known here."""
    owners = load_owner_registry(state_dir)
    known = next((o for o in owners if o["fingerprint"] == fingerprint), None)
    if known is not None and node_id is None:
        known["key"] = str(key.resolve())
    else:
        owners = [o for o in owners if o["fingerprint"] != fingerprint]
        owners.append(
            {
                "name": key.stem,
                "key": str(key.resolve()),
                "fingerprint": fingerprint,
                "node-id": node_id,
                "time": _now(),
                "removed": None,
            }
        )
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    save_owner_registry(state_dir, owners)


def set_max_weights(state_dir: Path, max_weights: dict[str, int]) -> None:
    """Record the most records each named owner (its key file's stem) may weigh in an
    average (``max-weight``, server/identity.py); the others keep the default."""
    owners = load_owner_registry(state_dir)
    known = {o["name"] for o in owners if not o.get("removed")}
    unknown = sorted(set(max_weights) - known)
    if unknown:
        raise ConfigError(
            f"--max-weight names {unknown}, which are not registered keys here (registered: "
            f"{', '.join(sorted(known)) or 'none'}); use the stem of a --node-key file"
        )
    for owner in owners:
        if owner["name"] in max_weights:
            owner["max-weight"] = int(max_weights[owner["name"]])
    save_owner_registry(state_dir, owners)


def _refuse_removed_key(state_dir: Path, key: Path, fingerprint: str) -> None:
    for owner in load_owner_registry(state_dir):
        if owner["fingerprint"] == fingerprint and owner.get("removed"):
            removed = owner["removed"]
            raise ConfigError(
                f"{key} ({fingerprint}) was removed from this federation on {removed['time']} "
                f"({removed['reason']!r}); the SuperLink in {state_dir} keeps a removed key "
                "unusable. To admit the owner again, it makes a new key with `fedshield pki "
                "node NAME` and you pass the new .pub with --node-key"
            )


def register_node_keys(settings: SuperLinkSettings, public_keys: list[Path]) -> list[dict]:
    """Register each owner's public key; a key already registered is kept as it is.

    Every registration is recorded in the state folder's owner registry
    (``load_owner_registry``), which ``server status`` and ``server remove-owner`` read."""
    registered = []
    for key in public_keys:
        if not key.is_file():
            raise ConfigError(
                f"{key}: node public key not found (the owner makes it with `fedshield pki node NAME`)"
            )
        fingerprint = ssh_public_key_fingerprint(key)
        _refuse_removed_key(settings.state_dir, key, fingerprint)
        proc = _flwr(settings, "supernode", "register", str(key), CONNECTION, "--format", "json")
        output = proc.stdout + proc.stderr
        try:
            answer = json.loads(proc.stdout)
        except ValueError:
            answer = {}
        # `flwr supernode register --format json` exits 0 when it fails: read "success".
        if proc.returncode == 0 and answer.get("success", True) is not False:
            node_id = answer.get("node-id", answer.get("node_id", answer.get("id")))
            _remember_registration(settings.state_dir, key, fingerprint, node_id)
            registered.append({"key": str(key), "fingerprint": fingerprint, "node-id": node_id})
        elif "already in use" in output:
            _remember_registration(settings.state_dir, key, fingerprint, None)
            registered.append(
                {"key": str(key), "fingerprint": fingerprint, "node-id": "already registered"}
            )
        else:
            raise DeploymentError(f"registering {key} failed: {output.strip()[-800:]}")
    return registered


def _flwr_answer(proc: subprocess.CompletedProcess, what: str) -> dict:
    """The JSON ``flwr ... --format json`` printed; its "success", not its exit code, counts."""
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        answer = {}
    if proc.returncode != 0 or answer.get("success") is not True:
        said = answer.get("error-message") or proc.stdout + proc.stderr
        # flwr's message opens with its progress lines ("Using SuperLink ..."): the cause is last.
        detail = next((line for line in reversed(said.splitlines()) if line.strip()), "no output")
        raise DeploymentError(f"{what} failed: {detail}")
    return answer


def list_nodes(flwr_home: Path) -> list[dict]:
    """``flwr supernode ls`` on the loopback SuperLink: dicts with "node-id" (a string),
    "status" (registered, online, offline, unregistered), "online-at", "offline-at", ...
    (flwr 1.42 lists no public key or name). DeploymentError when it cannot be reached."""
    proc = flwr_cli(flwr_home, "supernode", "ls", CONNECTION, "--format", "json", timeout_s=30)
    return list(_flwr_answer(proc, "listing the SuperNodes").get("nodes", []))


def unregister_node(flwr_home: Path, node_id: int) -> None:
    """``flwr supernode unregister``: the SuperLink refuses the node from now on."""
    proc = flwr_cli(
        flwr_home, "supernode", "unregister", str(node_id), CONNECTION, "--format", "json"
    )
    _flwr_answer(proc, f"unregistering node {node_id}")


def online_nodes(settings: SuperLinkSettings) -> int:
    try:
        nodes = list_nodes(settings.flwr_home)
    except DeploymentError:
        return 0
    return sum(1 for node in nodes if node.get("status") == "online")


# How often the operator hears how many SuperNodes are online while it waits.
NODE_PROGRESS_EVERY_S = 15.0


def wait_for_nodes(
    settings: SuperLinkSettings,
    count: int,
    timeout_s: float,
    on_progress: Callable[[int, float], None] | None = None,
) -> None:
    """Wait until ``count`` SuperNodes are online; ``on_progress(online, waited_s)`` is
    called when the number online changes and every ``NODE_PROGRESS_EVERY_S``."""
    start = time.monotonic()
    deadline = start + timeout_s
    reported: tuple[int, float] | None = None
    while time.monotonic() < deadline:
        online = online_nodes(settings)
        if online >= count:
            return
        waited = time.monotonic() - start
        if on_progress is not None and (
            reported is None
            or online != reported[0]
            or waited - reported[1] >= NODE_PROGRESS_EVERY_S
        ):
            on_progress(online, waited)
            reported = (online, waited)
        time.sleep(1.0)
    raise DeploymentError(
        f"only {online_nodes(settings)} of {count} SuperNodes came online in {timeout_s:.0f} s; "
        "check that each owner ran `fedshield client start` with a registered key and the right CA"
    )


def write_app_dir(directory: Path) -> Path:
    """A Flower app directory whose FAB names the installed fedshield components."""
    directory.mkdir(parents=True, exist_ok=True)
    defaults = RunConfig().as_dict()
    config_lines = [f"{key} = {json.dumps(value)}" for key, value in defaults.items()]
    (directory / "pyproject.toml").write_text(
        "\n".join(
            [
                "[build-system]",
                'requires = ["hatchling"]',
                'build-backend = "hatchling.build"',
                "",
                "[project]",
                'name = "fedshield-federation"',
                f'version = "{version("fedshield")}"',
                'description = "fedshield run (code: the installed fedshield package)"',
                'license = "Apache-2.0"',
                "dependencies = []",
                "",
                "[tool.flwr.app]",
                'publisher = "fedshield"',
                "",
                "[tool.flwr.app.components]",
                'serverapp = "fedshield.server.app:app"',
                'clientapp = "fedshield.client.app:app"',
                "",
                "[tool.flwr.app.config]",
                *config_lines,
                "",
            ]
        )
    )
    return directory


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


def run_config_argument(values: dict) -> str:
    """``flwr run --run-config`` syntax: space-separated TOML key=value pairs."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


def launch_run(settings: SuperLinkSettings, values: dict, log_path: Path, timeout_s: float) -> int:
    """``flwr run`` the apps with ``values`` over the defaults; streams and returns its status."""
    app_dir = write_app_dir(settings.state_dir / "app")
    args = [
        flower_binary("flwr"),
        "run",
        str(app_dir),
        CONNECTION,
        "--stream",
        "--run-config",
        run_config_argument(values),
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=flower_env(settings.flwr_home),
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write(line.decode(errors="replace"))
                if time.monotonic() > deadline:
                    raise DeploymentError(
                        f"the run did not finish within {timeout_s:.0f} s; see {log_path}"
                    )
            return proc.wait()
        finally:  # also on Ctrl-C and SIGTERM: no `flwr run` left behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
