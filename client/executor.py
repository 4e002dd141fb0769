"""A warm executor for a data owner's SuperNode: every ClientApp task runs in a fork of a
process that has already imported torch, Opacus and fedshield and featurised the
owner's data.

Why: with Flower's default executor each message starts a fresh ``flwr-clientapp``
process that spends seconds importing torch and Opacus before it trains for a fraction
of a second. Here a single-threaded "zygote" does that work once; for each task it
forks a child that runs Flower's own ``run_clientapp`` (pull message, run the ClientApp,
push the reply) and exits. Each task still gets its own process, so nothing but the
inherited read-only caches survives from one message to the next.

Flower 1.42 offers no executor plug-in point for ``flower-superexec``; this module runs
Flower's ``run_superexec`` loop with ``get_executor`` pointed at ``ZygoteExecutor``
(every such reach into Flower is in common/flower_compat.py, version-checked).
Deployed with ``flower-supernode --isolation process`` and a SuperExec auth secret.

Guarantee: only the installed fedshield ClientApp runs here. A SuperNode otherwise
installs and imports whatever Flower App Bundle (FAB) a run names: Flower's
``run_clientapp`` unpacks it into ``$FLWR_HOME/apps`` and imports the ``clientapp``
component with that folder first on ``sys.path``, so whoever can start a run (anyone who
reaches an open-source SuperLink's Control API) runs code next to the owner's data. In
each task, before Flower touches the FAB, ``pin_fedshield_clientapp`` replaces the two
module-level names of ``flwr.supernode.runtime.run_clientapp`` that handle it (the
narrowest hook: everything else, pulling the message, heartbeats, the reply, stays
Flower's):

- ``install_from_fab`` becomes ``admit_only_fedshield_fab``: the FAB must hold nothing
  but ``pyproject.toml`` (and optionally ``README.md``) beside Flower's manifest, and
  its ``[tool.flwr.app.components] clientapp`` must be exactly ``fedshield.client.app:app``
  (what ``server/deployment.py:write_app_dir`` ships). Otherwise the task fails with an
  error reply to the server (Flower's own error path) and a ``foreign-app-refused`` entry
  in the owner's audit log; nothing from the FAB is written to disk, imported or run.
- ``get_load_client_app_fn`` returns the ClientApp of the installed fedshield package,
  already imported by the warm-up; the FAB's folder never goes on ``sys.path``.

Not Flower's ``--trusted-entities``: it verifies FAB signatures that only Flower Hub
supplies (a SuperLink marks every locally submitted FAB unverified, so all of them would
be refused), and a signed FAB still carries code of its signer's choosing; pinning the
one component string, and refusing any code in the bundle, decides by what runs rather
than by who signed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import sys
import tomllib
import zipfile
from hashlib import sha256
from io import BytesIO
from pathlib import Path

from fedshield.common.audit_events import Event, Field
from fedshield.common.errors import DependencyMismatch, ForeignAppRefused
from fedshield.common.flower_compat import (
    current_task_run_id,
    import_clientapp_runtime,
    is_clientapp_task,
    launch_accepted,
    launch_failed,
    restrict_clientapp_runtime,
    run_clientapp_task,
    run_superexec_with,
    shorten_object_pull_retries,
)
from fedshield.common.processes import die_with_parent

log = logging.getLogger("fedshield.client")

FEDSHIELD_CLIENTAPP = "fedshield.client.app:app"
# What a FAB built from write_app_dir holds: configuration, no code. ".info/CONTENT" is
# Flower's manifest of hashes.
FAB_FILES_ALLOWED = frozenset({"pyproject.toml", "README.md", ".info/CONTENT"})
MAX_FAB_PYPROJECT_BYTES = 1 << 20


def check_fab_is_fedshield(fab: bytes) -> dict[str, str]:
    """The FAB's identity if it carries no code and names fedshield's ClientApp; else
    raises ``ForeignAppRefused``. Reads the archive in memory; extracts nothing."""
    identity = {"fab-hash": sha256(fab).hexdigest(), "fab-name": "?", "clientapp": "?"}

    def refuse(reason: str) -> ForeignAppRefused:
        return ForeignAppRefused(reason, identity)

    try:
        archive = zipfile.ZipFile(BytesIO(fab))
        names = [info.filename for info in archive.infolist()]
    except (zipfile.BadZipFile, ValueError) as exc:
        raise refuse(f"the FAB is not a readable zip archive ({exc})") from None
    if "pyproject.toml" not in names:
        raise refuse("the FAB has no pyproject.toml")
    if archive.getinfo("pyproject.toml").file_size > MAX_FAB_PYPROJECT_BYTES:
        raise refuse("the FAB's pyproject.toml is larger than 1 MiB")
    try:
        config = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, zipfile.BadZipFile) as exc:
        raise refuse(f"the FAB's pyproject.toml does not parse ({exc})") from None
    flwr = config.get("tool", {}).get("flwr", {}).get("app", {})
    project = config.get("project", {})
    identity["fab-name"] = (
        f"{flwr.get('publisher', '?')}/{project.get('name', '?')}=={project.get('version', '?')}"
    )[:200]
    identity["clientapp"] = str(flwr.get("components", {}).get("clientapp", "?"))[:200]
    if identity["clientapp"] != FEDSHIELD_CLIENTAPP:
        raise refuse(f"its clientapp is not {FEDSHIELD_CLIENTAPP}")
    extra = sorted(set(names) - FAB_FILES_ALLOWED)
    if extra or len(names) != len(set(names)):
        shown = ", ".join(extra[:10]) + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
        raise refuse(
            f"the FAB carries files beyond pyproject.toml and README.md: {shown or 'duplicates'}"
        )
    return identity


def pin_fedshield_clientapp(owner_settings: dict | None) -> None:
    """Make Flower's ``run_clientapp`` run only the installed fedshield ClientApp."""

    def admit_only_fedshield_fab(fab_file: bytes) -> None:
        # Nothing is installed either way: the code that runs is fedshield's own.
        try:
            check_fab_is_fedshield(fab_file)
        except ForeignAppRefused as refusal:
            _record_refusal(owner_settings, refusal)
            raise

    def load_installed_fedshield_clientapp():
        from fedshield.client.app import app  # already imported by warm_up()

        return app

    restrict_clientapp_runtime(admit_only_fedshield_fab, load_installed_fedshield_clientapp)


def _record_refusal(owner_settings: dict | None, refusal: ForeignAppRefused) -> None:
    run_id = current_task_run_id()  # set by Flower when it pulled the task
    log.error("fedshield: refused run %s, app %s: %s", run_id, refusal.identity, refusal.reason)
    if not owner_settings or not owner_settings.get("audit-dir"):
        return
    from fedshield.common.audit_log import AuditLog

    audit = AuditLog(
        Path(owner_settings["audit-dir"]) / "audit.jsonl",
        actor=owner_settings.get("owner-id") or "owner",
    )
    audit.append(
        Event.FOREIGN_APP_REFUSED,
        **{Field.RUN_ID: run_id, **refusal.identity, Field.REASON: refusal.reason},
    )
    audit.checkpoint("foreign-app-refused")


def _run_task(spec: dict, owner_settings: dict | None, learned_fd: int | None = None) -> None:
    """In a forked child: run one ClientApp task with Flower's own runtime, then exit."""
    pin_fedshield_clientapp(owner_settings)
    certificates = (
        Path(spec["root_certificates_path"]).read_bytes()
        if spec.get("root_certificates_path")
        else None
    )
    code = 0
    try:
        run_clientapp_task(
            runtime_api_address=spec["runtime_api_address"],
            token=spec["token"],
            insecure=spec["insecure"],
            certificates=certificates,
        )
    except SystemExit as exc:  # Flower ends every task with sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if learned_fd is not None:
            _hand_back_learned(learned_fd)
        os._exit(code)


def _hand_back_learned(fd: int) -> None:
    """Give the zygote the accounting results this task computed (common/privacy.py's
    memo, functions of public parameters only), so the next task does not recompute
    them (a noise calibration: 0.5-2 s)."""
    from fedshield.common import privacy

    for line in privacy.learned_lines():
        if len(line) > select.PIPE_BUF:
            continue  # only writes up to PIPE_BUF are atomic beside other tasks' writes
        try:
            os.write(fd, line)
        except OSError:  # pipe full (non-blocking) or gone: a cache, not needed
            return


def _take_learned(fd: int, pending: bytearray) -> None:
    """In the zygote: take in what finished tasks handed back (never blocks)."""
    from fedshield.common import privacy

    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        pending += chunk
    if len(pending) > 1 << 20:  # no line break in 1 MiB: not what tasks write; drop it
        pending.clear()
    *lines, rest = bytes(pending).split(b"\n")
    pending[:] = rest
    for line in lines:
        privacy.learn(line)


def _follow(parent: int, sig: int) -> None:
    """In a forked child: get ``sig`` when ``parent`` dies (even by SIGKILL), so that a
    killed ``client start`` leaves no task training on; exit if it is already gone."""
    die_with_parent(sig)
    if os.getppid() != parent:
        os._exit(0)


def _zygote(read_fd: int, owner_settings: dict | None) -> None:
    """Single-threaded loop: one JSON ExecutionSpec per line in, one fork per task."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    # Tasks hand back accounting results on this pipe; non-blocking both ways, so a full
    # pipe drops cache entries instead of stalling a task or the zygote.
    learned_read, learned_write = os.pipe()
    os.set_blocking(learned_read, False)
    os.set_blocking(learned_write, False)
    learned = bytearray()
    with os.fdopen(read_fd, "r") as specs:
        for line in specs:
            spec = json.loads(line)
            _take_learned(learned_read, learned)
            zygote = os.getpid()
            if os.fork() == 0:
                _follow(zygote, signal.SIGKILL)  # a task never outlives the node's executor
                os.close(learned_read)
                _run_task(spec, owner_settings, learned_write)
    os._exit(0)


def warm_up(owner_settings: dict | None) -> None:
    """Import what a ClientApp needs and featurise the owner's data with the default spec:
    every fork starts from here, so what is done here is not done again in each task."""
    import dp_accounting.pld.pld_privacy_accountant  # noqa: F401  (the ledger's accountant)
    import httpcore  # noqa: F401  (httpx imports it lazily for each task's first request)
    import torch

    import fedshield.client.app  # noqa: F401  (torch, Opacus, fedshield)

    import_clientapp_runtime()
    # The first optimizer a process builds imports torch._dynamo (~1 s): once, here.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    try:  # the forked tasks inherit the shorter retries
        shorten_object_pull_retries()
    except DependencyMismatch as exc:
        log.warning("fedshield: %s", exc)
    from fedshield.client.encoding_cache import owner_inputs
    from fedshield.client.owner import resolve_owner, with_desensitised_text
    from fedshield.common.config import RunConfig
    from fedshield.common.model import ModelSpec

    if owner_settings:
        # Desensitised here, at start, into the sealed cache (tasks then read it: a
        # round's duration does not show whether the text held identifiers), and
        # encoded for the default model only: its encoding is CPU-only numpy, safe to
        # fork after (a CUDA context is not). Other models encode inside each task.
        owner, _ = with_desensitised_text(resolve_owner(owner_settings, RunConfig(), classes=None))
        owner_inputs(owner, ModelSpec.from_config(RunConfig()))


class ZygoteExecutor:
    """Flower Executor: ClientApp tasks go to the zygote; anything else is refused."""

    def __init__(self, owner_settings: dict | None = None) -> None:
        read_fd, write_fd = os.pipe()
        executor = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            _follow(executor, signal.SIGTERM)
            _zygote(read_fd, owner_settings)
        os.close(read_fd)
        self._zygote_pid = pid
        self._specs = os.fdopen(write_fd, "w", buffering=1)

    def get_eligible_capacity(
        self, supported_task_types, *, insecure=False, root_certificates_path=None
    ):
        del insecure, root_certificates_path
        return supported_task_types, set()

    def wait_for_capacity(
        self, task_type=None, *, fab_hash=None, insecure=False, root_certificates_path=None
    ):
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec):
        if not is_clientapp_task(spec):
            return launch_failed(f"fedshield's executor runs ClientApps only, not {spec.task_type}")
        self._specs.write(
            json.dumps(
                {
                    "runtime_api_address": spec.runtime_api_address,
                    "token": spec.token,
                    "insecure": spec.insecure,
                    "root_certificates_path": spec.root_certificates_path,
                }
            )
            + "\n"
        )
        return launch_accepted()

    def reconcile(self) -> None:
        pass

    def close(self) -> None:
        self._specs.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._zygote_pid, signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="fedshield's warm ClientApp executor (see module doc)"
    )
    parser.add_argument(
        "--runtime-api-address", required=True, help="the SuperNode's --host:--port"
    )
    parser.add_argument("--superexec-auth-secret-file", required=True)
    parser.add_argument(
        "--owner-settings-file", default="", help="the node config (TOML) to pre-featurise"
    )
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)

    owner_settings = None
    if args.owner_settings_file:
        owner_settings = tomllib.loads(Path(args.owner_settings_file).read_text(encoding="utf-8"))
    warm_up(owner_settings)
    # Fork the zygote now, while this process is still single-threaded.
    executor = ZygoteExecutor(owner_settings)
    run_superexec_with(
        executor,
        runtime_api_address=args.runtime_api_address,
        secret_file=args.superexec_auth_secret_file,
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    main()
