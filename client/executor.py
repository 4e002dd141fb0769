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
Flower's ``run_superexec`` loop with ``get_executor`` pointed at ``ZygoteExecutor``.
Deployed with ``flower-supernode --isolation process`` and a SuperExec auth secret.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("fedshield.client")


def _run_task(spec: dict) -> None:
    """In a forked child: run one ClientApp task with Flower's own runtime, then exit."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    certificates = (
        Path(spec["root_certificates_path"]).read_bytes()
        if spec.get("root_certificates_path")
        else None
    )
    code = 0
    try:
        run_clientapp(
            runtime_api_address=spec["runtime_api_address"],
            token=spec["token"],
            insecure=spec["insecure"],
            certificates=certificates,
            parent_pid=None,
            runtime_dependency_install=False,
        )
    except SystemExit as exc:  # Flower ends every task with sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _zygote(read_fd: int) -> None:
    """Single-threaded loop: one JSON ExecutionSpec per line in, one fork per task."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    with os.fdopen(read_fd, "r") as specs:
        for line in specs:
            spec = json.loads(line)
            if os.fork() == 0:
                _run_task(spec)
    os._exit(0)


def warm_up(owner_settings: dict | None) -> None:
    """Import what a ClientApp needs and featurise the owner's data with the default spec."""
    import fedshield.client.app  # noqa: F401  (torch, Opacus, fedshield)
    from fedshield.client.owner import owner_inputs, resolve_owner
    from fedshield.common.config import RunConfig
    from fedshield.common.federation import model_spec

    if owner_settings:
        # The default model only: its encoding is CPU-only numpy, safe to fork after
        # (a CUDA context is not). Other models encode inside each task.
        owner = resolve_owner(owner_settings, RunConfig(), classes=None)
        owner_inputs(owner, model_spec(RunConfig()))


class ZygoteExecutor:
    """Flower Executor: ClientApp tasks go to the zygote; anything else is refused."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            _zygote(read_fd)
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
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(
                f"fedshield's executor runs ClientApps only, not {spec.task_type}"
            )
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
        return LaunchResult.accepted()

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
    parser.add_argument("--owner-settings", default="", help="JSON node config to pre-featurise")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)

    from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret
    from flwr.supercore.superexec import run_superexec as superexec_module

    warm_up(json.loads(args.owner_settings) if args.owner_settings else None)
    # Fork the zygote now, while this process is still single-threaded.
    executor = ZygoteExecutor()
    superexec_module.get_executor = lambda *_, **__: executor
    superexec_module.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=True,  # the SuperNode's app API listens on loopback only
        superexec_auth_secret=load_superexec_auth_secret(
            secret_file=args.superexec_auth_secret_file
        ),
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )


if __name__ == "__main__":
    main()
