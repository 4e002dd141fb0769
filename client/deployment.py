"""A data owner's side of a real federation: a SuperNode next to the owner's data.

``fedshield client start`` checks everything it can before it connects (key
permissions, CA file, the data file, delta against N, the ledger and the budget left),
prints a summary a data owner can read, records the node's identity and the TLS peer in
the owner's audit log, then runs ``flower-supernode`` with TLS and node authentication.
The ClientApp that Flower starts for each message reads the owner's settings from the
node config built here, never from the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from fedshield.client.ledger import PrivacyLedger
from fedshield.common.audit_events import Event
from fedshield.common.audit_log import AuditLog
from fedshield.common.config import OwnerConfig, split_class_names
from fedshield.common.data import TextDataset, load_dataset
from fedshield.common.errors import ConfigError, FedshieldError
from fedshield.common.pki import (
    certificate_sha256,
    check_private_key_file,
    node_key_fingerprint,
    probe_tls_endpoint,
)
from fedshield.common.privacy import check_delta
from fedshield.common.processes import die_with_parent, flower_binary, flower_env

# flower-supernode's failure lines, and what the data owner can do about each.
KNOWN_FAILURES = (
    (
        "Failed to activate SuperNode",
        "the SuperLink does not know this node's key: send {pub} "
        "(fingerprint {fingerprint}) to the operator to register",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired",
        "the SuperLink's certificate has expired: ask the operator to renew it",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the SuperLink's certificate is not signed by {ca}: check --ca with the operator",
    ),
    (
        "Server disconnected without sending a response",
        "the SuperLink speaks TLS; do not use --insecure",
    ),
    (
        "Unable to parse the private key file",
        "{key} is not an OpenSSH private key; make one with `fedshield pki node`",
    ),
)


@dataclass(frozen=True)
class SuperNodeSettings:
    superlink: str
    ca: Path | None
    auth_key: Path | None
    owner: OwnerConfig
    port: int = 9094
    insecure: bool = False
    max_retries: int = 0
    max_wait_time_s: float = 0.0


@dataclass(frozen=True)
class Readiness:
    dataset: TextDataset
    epsilon_spent: float
    node_key_fingerprint: str
    transport: dict


def check_before_connecting(settings: SuperNodeSettings) -> Readiness:
    """Everything a data owner should see fail here rather than in the federation."""
    owner = settings.owner
    if settings.insecure:
        fingerprint = "none (insecure mode: no node authentication)"
    else:
        if settings.ca is None or not settings.ca.is_file():
            raise ConfigError(
                f"--ca {settings.ca}: the federation's CA certificate file is required"
            )
        if settings.auth_key is None:
            raise ConfigError(
                "--auth-key is required: the node's private key from `fedshield pki node NAME`"
            )
        check_private_key_file(settings.auth_key)
        fingerprint = node_key_fingerprint(settings.auth_key)
    dataset = load_dataset(
        owner.data_path, owner.text_column, owner.label_column, split_class_names(owner.classes)
    )
    check_delta(owner.delta, len(dataset))
    spent = PrivacyLedger(owner.ledger_dir).epsilon(owner.delta)
    if settings.insecure:
        transport = {"mode": "INSECURE plaintext (--insecure)", "superlink": settings.superlink}
    else:
        try:
            transport = probe_tls_endpoint(settings.superlink, settings.ca)
        except OSError as exc:
            raise FedshieldError(
                f"cannot reach {settings.superlink} over TLS trusting {settings.ca}: {exc}; check the "
                "address, the operator's firewall, and that --ca is the federation's CA"
            ) from exc
        transport = {
            **transport,
            "superlink": settings.superlink,
            "ca-sha256": certificate_sha256(settings.ca),
        }
    return Readiness(dataset, spent, fingerprint, transport)


def node_config(settings: SuperNodeSettings, readiness: Readiness) -> dict:
    owner = settings.owner
    transport = (
        "INSECURE plaintext, no node authentication"
        if settings.insecure
        else f"tls {readiness.transport['tls-version']}; server-cert-sha256={readiness.transport['peer-certificate-sha256']}; "
        f"supernode-auth key {readiness.node_key_fingerprint}"
    )
    return {
        "data-path": str(Path(owner.data_path).resolve()),
        "text-column": owner.text_column,
        "label-column": owner.label_column,
        "epsilon-budget": owner.epsilon_budget,
        "delta": owner.delta,
        "ledger-dir": str(Path(owner.ledger_dir).expanduser().resolve()),
        "audit-dir": str(Path(owner.audit_dir).expanduser().resolve()),
        "cache-dir": str(Path(owner.cache_dir).expanduser().resolve()) if owner.cache_dir else "",
        # Default label from the node key (public), never from the data's fingerprint.
        "owner-id": owner.owner_id or _default_owner_id(readiness.node_key_fingerprint),
        "device": owner.device,
        "transport": transport,
        "allow-no-dp": owner.allow_no_dp,
        "allow-evaluate": owner.allow_evaluate,
        "evaluate-noise-multiplier": owner.evaluate_noise_multiplier,
        "run-epsilon-cap": owner.run_epsilon_cap,
        "classes": owner.classes,
    }


def _default_owner_id(node_key_fingerprint: str) -> str:
    digest = node_key_fingerprint.removeprefix("SHA256:")
    return f"owner-{digest[:8]}" if not digest.startswith("none") else "owner"


def _node_config_argument(values: dict) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):  # TOML spells booleans in lower case
            text = "true" if value else "false"
        else:
            text = f"'{value}'" if isinstance(value, str) else repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def supernode_command(settings: SuperNodeSettings, config: dict, secret_file: Path) -> list[str]:
    """flower-supernode with process isolation: fedshield's warm executor runs the apps."""
    args = [
        flower_binary("flower-supernode"),
        "--superlink",
        settings.superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.port),
        "--node-config",
        _node_config_argument(config),
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(secret_file),
    ]
    if settings.max_retries:
        args += ["--max-retries", str(settings.max_retries)]
    if settings.max_wait_time_s:
        args += ["--max-wait-time", str(settings.max_wait_time_s)]
    if settings.insecure:
        return [*args, "--insecure"]
    return [
        *args,
        "--root-certificates",
        str(settings.ca),
        "--auth-supernode-private-key",
        str(settings.auth_key),
    ]


def record_node_start(settings: SuperNodeSettings, readiness: Readiness, config: dict) -> None:
    audit = AuditLog(Path(config["audit-dir"]) / "audit.jsonl", actor=config["owner-id"])
    if settings.insecure:
        audit.append(
            Event.INSECURE_MODE_WARNING,
            warning="no TLS and no node authentication: traffic is readable and forgeable",
        )
    audit.append(
        Event.NODE_START,
        **{
            "superlink": settings.superlink,
            "node-key-fingerprint": readiness.node_key_fingerprint,
            "transport": readiness.transport,
            "data-fingerprint": readiness.dataset.fingerprint,
            "records": len(readiness.dataset),
            "class-counts": readiness.dataset.class_counts(),
            "epsilon-budget": settings.owner.epsilon_budget,
            "epsilon-spent": readiness.epsilon_spent,
            "delta": settings.owner.delta,
        },
    )
    audit.checkpoint("node-start")


def explain_failure(output: str, settings: SuperNodeSettings) -> str | None:
    for pattern, advice in KNOWN_FAILURES:
        if pattern in output:
            pub = f"{settings.auth_key}".removesuffix(".key") + ".pub" if settings.auth_key else "?"
            fingerprint = (
                node_key_fingerprint(settings.auth_key)
                if settings.auth_key and not settings.insecure
                else "?"
            )
            return f"{pattern}: " + advice.format(
                pub=pub, fingerprint=fingerprint, ca=settings.ca, key=settings.auth_key
            )
    return None


def run_supernode(settings: SuperNodeSettings, config: dict, on_line=print) -> int:
    """Run flower-supernode in the foreground, echoing its output; returns its status.

    The SuperNode runs with process isolation next to fedshield's warm executor
    (client/executor.py), which it authenticates with a fresh random secret. Each runs in
    its own process group: when the SuperNode exits (or we are stopped), both groups go,
    including any task still running.
    """
    secret_dir = Path(tempfile.mkdtemp(prefix="fedshield-superexec-"))
    secret_file = secret_dir / "secret"
    secret_file.write_bytes(secrets.token_bytes(32))
    secret_file.chmod(0o600)
    proc = subprocess.Popen(
        supernode_command(settings, config, secret_file),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=flower_env(),
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    executor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedshield.client.executor",
            "--runtime-api-address",
            f"127.0.0.1:{settings.port}",
            "--superexec-auth-secret-file",
            str(secret_file),
            "--owner-settings",
            json.dumps(config),
            "--parent-pid",
            str(os.getpid()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Look for new tasks every 50 ms instead of Flower's default 1 s.
        env={
            **flower_env(),
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
            # The executor forks every task: ask NVML, not the CUDA driver, whether a GPU
            # exists, since a driver initialised before fork is unusable in the children.
            "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
        },
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    tail: list[str] = []

    def pump(stream) -> None:
        for line in stream:
            on_line(line.rstrip("\n"))
            tail.append(line)
            del tail[:-40]

    readers = [
        threading.Thread(target=pump, args=(p.stdout,), daemon=True) for p in (proc, executor)
    ]
    for reader in readers:
        reader.start()
    try:
        status = proc.wait()
    finally:
        for child in (proc, executor):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            child.wait()
        for reader in readers:
            reader.join(timeout=10)
        shutil.rmtree(secret_dir, ignore_errors=True)
    if status != 0:
        advice = explain_failure("".join(tail), settings)
        if advice:
            on_line(f"fedshield: {advice}")
    return status
