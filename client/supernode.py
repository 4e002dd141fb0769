"""Supervising the owner's SuperNode: flower-supernode and fedshield's warm executor.

Guarantee: the node runs until a stop signal, the SuperLink's departure, the operator's
removal of this node, or a failure, and then both children go with their process groups
(SIGTERM, then SIGKILL after ``STOP_GRACE_S``), including any task still running; the
``NodeStop`` returned says which of the four it was, with the exit code and a message
the owner can act on. The executor and the SuperNode share a fresh random secret, and
the owner's settings reach the ClientApp only through the node config built by the
owner (client/node.py), never from the server.

Exit codes (all in common/errors.py): ``EXIT_SUPERLINK_UNREACHABLE`` (69, gave up
reaching the SuperLink), ``EXIT_REMOVED`` (77, the operator removed this node),
128 + the signal for a stop on SIGINT (130) or SIGTERM (143), and flower-supernode's own
status when it failed.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedshield.client.published import fetch_removal_notice
from fedshield.client.superlink_wait import superlink_answers
from fedshield.client.supernode_launcher import supernode_program
from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import EXIT_REMOVED, EXIT_SUPERLINK_UNREACHABLE
from fedshield.common.pki import node_key_fingerprint
from fedshield.common.processes import die_with_parent, flower_env, stop_process_groups
from fedshield.common.toml_text import write_toml

if TYPE_CHECKING:
    from fedshield.client.node_settings import SuperNodeSettings
    from fedshield.client.stop_signals import StopSignals

STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL: Flower's own forced exit waits 5 s

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
class NodeStop:
    """Why the node stopped: ``reason`` is one of STOP_REASONS."""

    reason: str
    exit_code: int
    message: str
    details: dict = field(default_factory=dict)


STOP_SIGNAL, STOP_REMOVED, STOP_SUPERLINK_GONE, STOP_FAILED = (
    "signal",
    "removed",
    "superlink-gone",
    "failed",
)
STOP_REASONS = (STOP_SIGNAL, STOP_REMOVED, STOP_SUPERLINK_GONE, STOP_FAILED)


def supernode_command(
    settings: SuperNodeSettings, node_config_file: Path, secret_file: Path
) -> list[str]:
    """flower-supernode with process isolation: fedshield's warm executor runs the apps.
    The node config is a TOML file (common/toml_text.py): any value survives as written."""
    args = [
        *supernode_program(),
        "--superlink",
        settings.superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.port),
        "--node-config",
        str(node_config_file),
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(secret_file),
    ]
    # RetryPolicy: 0 lifts a limit, which for Flower is the flag's absence.
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


# flower-supernode 1.42's lines that say where it stands.
CONNECTED_LINE = "SuperNode ID:"
GAVE_UP_LINE = "Giving up reconnection after"


def _why_supernode_ended(
    settings: SuperNodeSettings,
    status: int | None,
    output: str,
    fingerprint: str,
    started: str = "",
) -> NodeStop:
    """Why flower-supernode ended (``status`` None: it gave up a call and hung, stopped by us).

    What flower-supernode 1.42 does, seen on 127.0.0.1: when the operator unregisters the
    node, the SuperLink answers its next heartbeat or poll with HTTP 401, it signals
    itself SIGINT and exits 0 ("SuperNode terminated gracefully."); when its key is not
    registered at start it exits 1 ("Failed to activate SuperNode"); when the SuperLink
    goes away after the node joined and its retries run out, it logs "Giving up
    reconnection after ..." and the error, then hangs (its Runtime API thread keeps the
    process alive), which is why the caller stops it on that line. The operator's notice,
    then whether the SuperLink still answers, tell these apart.
    """
    if status in (0, None) or "Failed to activate SuperNode" in output:
        # A node that joined in this session was removed after ``started``; one refused at
        # once may have been removed at any time before.
        joined = CONNECTED_LINE in output
        notice = fetch_removal_notice(settings, fingerprint, started if joined else "")
        if notice is not None:
            return NodeStop(
                STOP_REMOVED,
                EXIT_REMOVED,
                f"{notice['action']} by the operator at {notice['time']}: {notice['reason']}",
                {"operator-notice": notice},
            )
    if status in (0, None) and not superlink_answers(settings):
        return NodeStop(
            STOP_SUPERLINK_GONE,
            EXIT_SUPERLINK_UNREACHABLE,
            f"the SuperLink at {settings.superlink} went away and the SuperNode gave up "
            f"reconnecting ({settings.retry.describe()}); start again when the operator's "
            "server is back, or raise --max-retries / --max-wait-time (0 = no limit)",
        )
    if status == 0:
        return NodeStop(
            STOP_REMOVED,
            EXIT_REMOVED,
            f"the SuperLink no longer accepts this node's key ({fingerprint}) and published no "
            "reason; ask the operator",
        )
    if status is None:
        last = next((ln for ln in reversed(output.splitlines()) if ln.strip()), "")
        return NodeStop(
            STOP_FAILED,
            1,
            f"flower-supernode gave up a call to the SuperLink, which still answers: "
            f"{last.strip()[-300:]}; start again",
        )
    advice = explain_failure(output, settings)
    return NodeStop(
        STOP_FAILED,
        status,
        advice or f"flower-supernode exited with status {status}; see its output above",
        {"supernode-status": status},
    )


def run_supernode(
    settings: SuperNodeSettings,
    config: dict,
    stops: StopSignals,
    fingerprint: str,
    on_line: Callable[[str], None] = print,
) -> NodeStop:
    """Run flower-supernode in the foreground, echoing its output, until it ends or a
    stop signal arrives; returns why it stopped.

    The SuperNode runs with process isolation next to fedshield's warm executor
    (client/executor.py), which it authenticates with a fresh random secret. Each runs in
    its own process group: when either exits, or we are stopped, both groups go
    (SIGTERM, then SIGKILL after ``STOP_GRACE_S``), including any task still running.
    """
    if stops.received is not None:
        return NodeStop(STOP_SIGNAL, 128 + stops.received, f"stopped by {stops.name}")
    # Same form as a notice's time (common/federation_info.py), so the two compare.
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    secret_dir = Path(tempfile.mkdtemp(prefix="fedshield-superexec-"))  # 0700
    secret_file = secret_dir / "secret"
    node_config_file = secret_dir / "node-config.toml"
    children: list[subprocess.Popen] = []
    tail: list[str] = []
    connected, gave_up = threading.Event(), threading.Event()

    def pump(stream, watch: bool) -> None:
        for line in stream:
            on_line(line.rstrip("\n"))
            tail.append(line)
            del tail[:-40]
            if watch and CONNECTED_LINE in line:
                connected.set()
            # Before it joined, flower-supernode exits by itself when it gives up.
            if watch and connected.is_set() and GAVE_UP_LINE in line:
                gave_up.set()

    readers: list[threading.Thread] = []
    try:
        write_bytes_atomic(secret_file, secrets.token_bytes(32), mode=0o600)
        # A file, never the command line: any local user can read a process's arguments.
        write_toml(node_config_file, {None: config})
        proc = subprocess.Popen(
            supernode_command(settings, node_config_file, secret_file),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=flower_env(),
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        children.append(proc)
        executor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedshield.client.executor",
                "--runtime-api-address",
                f"127.0.0.1:{settings.port}",
                "--superexec-auth-secret-file",
                str(secret_file),
                "--owner-settings-file",
                str(node_config_file),
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
        children.append(executor)
        readers = [
            threading.Thread(target=pump, args=(p.stdout, p is proc), daemon=True) for p in children
        ]
        for reader in readers:
            reader.start()
        while (
            stops.received is None
            and proc.poll() is None
            and executor.poll() is None
            and not gave_up.is_set()
        ):
            time.sleep(0.1)
        executor_status = executor.poll() if proc.poll() is None and not gave_up.is_set() else None
    finally:
        stopping_since = time.monotonic()
        stop_process_groups(children, STOP_GRACE_S)
        stop_s = time.monotonic() - stopping_since
        for reader in readers:
            reader.join(timeout=2)
        shutil.rmtree(secret_dir, ignore_errors=True)
    if stops.received is not None:
        return NodeStop(
            STOP_SIGNAL,
            128 + stops.received,
            f"stopped by {stops.name}: the SuperNode and its executor are down (in {stop_s:.1f} s)",
            {"signal": stops.name},
        )
    if executor_status is not None:
        return NodeStop(
            STOP_FAILED,
            1,
            f"fedshield's executor exited with status {executor_status}; see its output "
            "above, then start again",
            {"executor-status": executor_status},
        )
    status = None if gave_up.is_set() else proc.returncode
    return _why_supernode_ended(settings, status, "".join(tail), fingerprint, started)
