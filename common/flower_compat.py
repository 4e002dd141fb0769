"""Guarantee: every use fedshield makes of Flower's internals is in this module, named,
with why, and each checks at first use that the installed flwr is the release it was
written for (``FLWR_SUPPORTED``); otherwise it raises ``DependencyMismatch`` naming the
installed version, the range and the command that fixes it.

Flower's public API (``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp``,
``flwr.simulation``, ``flwr_datasets``) is used where it is needed, not here. What is
here has no public hook in flwr 1.42. Importing this module imports no part of Flower,
so a command that needs none of it runs whatever flwr is installed.
``require_installed`` is the one version check, used by common/opacus_compat.py too.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time as _real_time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from fedshield.common.errors import DependencyMismatch

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.clientapp import ClientApp
    from flwr.supercore.run import Run  # noqa: F401  (the type of flwr.serverapp.Grid.run)

# As pyproject.toml pins it (tests/unit/test_compat.py checks that the two agree).
FLWR_SUPPORTED = ">=1.42,<1.43"
FLWR_FIX = f"pip install 'flwr[simulation]{FLWR_SUPPORTED}'"


def require_installed(distribution: str, supported: str, fix: str, needed_for: str) -> str:
    """The installed version of ``distribution``; raises ``DependencyMismatch`` unless it
    is in ``supported`` (a PEP 440 specifier such as ``>=1.42,<1.43``)."""
    try:
        found = version(distribution)
        ok = SpecifierSet(supported).contains(Version(found), prereleases=True)
    except PackageNotFoundError:
        found, ok = "(not installed)", False
    except InvalidVersion:
        ok = False
    if not ok:
        raise DependencyMismatch(
            f"{needed_for} uses internals of {distribution}{supported}, but {distribution} "
            f"{found} is installed; install the supported release: {fix}"
        )
    return found


@functools.cache
def require_flwr(needed_for: str) -> str:
    """The installed flwr version, checked once per use (a mismatch is raised every time)."""
    return require_installed("flwr", FLWR_SUPPORTED, FLWR_FIX, needed_for)


# The Fleet HTTP API: every call flwr 1.42's FleetHttpClient (flwr/supernode/
# fleet_http_client.py) makes with node authentication on; the gateway forwards only these.
FLEET_PATHS = frozenset(
    {
        "/v1/fleet/activate-node",
        "/v1/fleet/deactivate-node",
        "/v1/fleet/send-node-heartbeat",
        "/v1/fleet/pull-messages",
        "/v1/fleet/push-messages",
        "/v1/fleet/get-run",
        "/v1/fleet/get-fab",
        "/v1/fleet/push-object",
        "/v1/fleet/pull-object",
        "/v1/fleet/confirm-message-received",
    }
)
# A SuperNode without a key (--insecure) registers itself; with node authentication the
# SuperLink refuses these, so the gateway does not forward them then.
SELF_REGISTRATION_PATHS = frozenset({"/v1/fleet/register-node", "/v1/fleet/unregister-node"})
PUSH_MESSAGES_PATH = "/v1/fleet/push-messages"

_FLEET_SENDER_CHECK = "fedshield's Fleet gateway (push-messages sender check)"


@dataclass(frozen=True)
class FleetNodeAuth:
    """How a SuperNode signs a Fleet call (flwr/superlink/routers/fleet/node_auth.py):
    ECDSA over the timestamp header, accepted while min_age_s < age < max_age_s."""

    public_key_header: str
    signature_header: str
    timestamp_header: str
    min_age_s: float
    max_age_s: float


@functools.cache
def fleet_node_auth() -> FleetNodeAuth:
    """Flower's node-authentication headers and time window: the gateway checks a call's
    signer as the SuperLink does, with no public API to ask it."""
    require_flwr(_FLEET_SENDER_CHECK)
    from flwr.common.constant import SYSTEM_TIME_TOLERANCE, TIMESTAMP_HEADER, TIMESTAMP_TOLERANCE
    from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER

    return FleetNodeAuth(
        public_key_header=FLEET_HTTP_PUBLIC_KEY_HEADER,
        signature_header=FLEET_HTTP_SIGNATURE_HEADER,
        timestamp_header=TIMESTAMP_HEADER,
        min_age_s=-SYSTEM_TIME_TOLERANCE,
        max_age_s=TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE,
    )


def push_messages_senders(body: bytes) -> tuple[int, list[tuple[int, str]]]:
    """A push-messages body's (request node id, [(message src_node_id,
    reply_to_message_id), ...]): the SuperLink trusts these fields, the gateway checks
    them. Raises ValueError for a body that is not a ``PushMessagesRequest``."""
    require_flwr(_FLEET_SENDER_CHECK)
    from flwr.proto.fleet_pb2 import PushMessagesRequest  # pylint: disable=no-name-in-module
    from google.protobuf.message import DecodeError

    request = PushMessagesRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise ValueError(f"not a PushMessagesRequest: {exc}") from None
    return int(request.node.node_id), [
        (int(m.metadata.src_node_id), m.metadata.reply_to_message_id) for m in request.messages_list
    ]


# The SuperNode's main loop (flwr/supernode/start_client_internal.py) sleeps these literal
# waits, neither a flag nor an environment variable: the launcher shortens them.
SUPERNODE_LOOP_MODULE = "flwr.supernode.start_client_internal"
FLWR_IDLE_POLL_S = 3  # after a Fleet poll that found no message
FLWR_LOCAL_WAIT_S = 0.5  # while the ClientApp's reply is not ready
_SUPERNODE_WAITS = {
    "start_client_internal": f"time.sleep({FLWR_IDLE_POLL_S})",
    "_push_messages": f"time.sleep({FLWR_LOCAL_WAIT_S})",
}
_SUPERNODE_POLL = "fedshield's SuperNode launcher (adaptive Fleet poll)"


def check_supernode_loop(module: Any) -> None:
    """Raise ``DependencyMismatch`` unless ``module`` is the flwr SuperNode loop
    ``shorten_supernode_waits`` was written for: the version, and the waits where and
    what they were."""
    found = require_flwr(_SUPERNODE_POLL)
    for function, wait in _SUPERNODE_WAITS.items():
        target = getattr(module, function, None)
        if target is None or not callable(target):
            moved = f"{SUPERNODE_LOOP_MODULE}.{function} is gone"
        elif wait not in inspect.getsource(target):
            moved = f"{SUPERNODE_LOOP_MODULE}.{function} no longer calls {wait}"
        else:
            continue
        raise DependencyMismatch(
            f"{_SUPERNODE_POLL}: {moved} in the installed flwr {found}; "
            f"install the supported release: {FLWR_FIX}"
        )
    if not hasattr(module, "time") or not callable(
        getattr(module, "_pull_and_store_message", None)
    ):
        raise DependencyMismatch(
            f"{_SUPERNODE_POLL}: {SUPERNODE_LOOP_MODULE} no longer has time and "
            f"_pull_and_store_message in the installed flwr {found}; install the supported "
            f"release: {FLWR_FIX}"
        )


class _SupernodeClock:
    """Stands in for ``time`` inside flwr's SuperNode loop module only."""

    def __init__(self, idle_wait_s: Callable[[], float], local_wait_s: float) -> None:
        self._idle_wait_s = idle_wait_s
        self._local_wait_s = local_wait_s

    def sleep(self, seconds: float) -> None:
        if seconds == FLWR_IDLE_POLL_S:
            _real_time.sleep(self._idle_wait_s())
        elif seconds == FLWR_LOCAL_WAIT_S:
            _real_time.sleep(self._local_wait_s)
        else:
            _real_time.sleep(seconds)

    def __getattr__(self, name: str):
        return getattr(_real_time, name)


def _noting_activity(function: Callable, on_activity: Callable[[], None], *, when_none: bool):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        if when_none or result is not None:
            on_activity()
        return result

    wrapper.__wrapped__ = function
    return wrapper


def shorten_supernode_waits(
    idle_wait_s: Callable[[], float], local_wait_s: float, on_activity: Callable[[], None]
) -> None:
    """Replace the SuperNode loop's idle poll with ``idle_wait_s()`` and its local waits
    with ``local_wait_s``; call ``on_activity`` on a message received or replies sent.
    Raises ``DependencyMismatch``, patching nothing, when the loop is not the one known."""
    module = importlib.import_module(SUPERNODE_LOOP_MODULE)
    check_supernode_loop(module)
    module.time = _SupernodeClock(idle_wait_s, local_wait_s)
    # A received message: returns its run id (None when the poll found nothing).
    module._pull_and_store_message = _noting_activity(
        module._pull_and_store_message, on_activity, when_none=False
    )
    # Replies sent: the next round's message follows soon.
    module._push_messages = _noting_activity(module._push_messages, on_activity, when_none=True)


_EXECUTOR = "fedshield's ClientApp executor (client/executor.py)"


def restrict_clientapp_runtime(
    admit_fab: Callable[[bytes], None], installed_clientapp: Callable[[], ClientApp]
) -> None:
    """In Flower's ``run_clientapp``, replace the two module-level names that install a
    FAB and import its ClientApp: ``admit_fab(fab)`` raises to refuse a FAB (nothing is
    installed either way) and ``installed_clientapp()`` is the app that runs. The
    narrowest hook there is: pulling, heartbeats and the reply stay Flower's."""
    require_flwr(_EXECUTOR)
    from flwr.supernode.runtime import run_clientapp as runtime

    def install_from_fab(fab_file, install_dir=None, skip_prompt=False) -> None:
        del install_dir, skip_prompt
        admit_fab(fab_file)

    def get_load_client_app_fn(default_app_ref, app_path, multi_app):
        del default_app_ref, app_path, multi_app

        def load(fab_id: str, fab_version: str, fab_hash: str):
            del fab_id, fab_version, fab_hash
            return installed_clientapp()

        return load

    runtime.install_from_fab = install_from_fab
    runtime.get_load_client_app_fn = get_load_client_app_fn


def current_task_run_id() -> int | None:
    """The run id of the task this process runs, None before Flower pulled one: Flower
    keeps it in a process-wide ``TaskIdentity`` that no public API exposes."""
    require_flwr(_EXECUTOR)
    from flwr.supercore.task_identity import TaskIdentity

    try:
        return TaskIdentity.run_id
    except RuntimeError:
        return None


def set_task_identity(task_id: int, run_id: int, node_id: int) -> None:
    """Set the process's task identity as Flower does when it pulls a task, so a ClientApp
    can be called directly (benchmarks, tests) and build messages."""
    require_flwr("calling a ClientApp outside Flower's runtime")
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task_id, run_id, node_id


def run_clientapp_task(
    runtime_api_address: str, token: str, insecure: bool, certificates: bytes | None
) -> None:
    """One ClientApp task with Flower's own runtime (what ``flwr-clientapp`` runs): pull
    the message, run the app, push the reply. Flower ends it with ``sys.exit(code)``."""
    require_flwr(_EXECUTOR)
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    run_clientapp(
        runtime_api_address=runtime_api_address,
        token=token,
        insecure=insecure,
        certificates=certificates,
        parent_pid=None,
        runtime_dependency_install=False,
    )


def is_clientapp_task(spec: Any) -> bool:
    """Whether a SuperExec launch spec is a ClientApp task (Flower's ``TaskType``)."""
    require_flwr(_EXECUTOR)
    from flwr.supercore.constant import TaskType

    return spec.task_type == TaskType.CLIENT_APP


def launch_accepted() -> Any:
    """What an executor's ``launch`` returns for a task it took (Flower's ``LaunchResult``)."""
    require_flwr(_EXECUTOR)
    from flwr.supercore.superexec.executor import LaunchResult

    return LaunchResult.accepted()


def launch_failed(reason: str) -> Any:
    """What an executor's ``launch`` returns for a task it refuses."""
    require_flwr(_EXECUTOR)
    from flwr.supercore.superexec.executor import LaunchResult

    return LaunchResult.failed(reason)


def run_superexec_with(
    executor: Any, runtime_api_address: str, secret_file: str, parent_pid: int | None
) -> None:
    """Flower's ``flower-superexec`` loop with ``executor`` as its executor: flwr 1.42
    has no executor plug-in point, so its ``get_executor`` is replaced. Blocks."""
    require_flwr(_EXECUTOR)
    from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret
    from flwr.supercore.superexec import run_superexec as superexec_module

    superexec_module.get_executor = lambda *_, **__: executor
    superexec_module.run_superexec(
        runtime_api_address=runtime_api_address,
        insecure=True,  # the SuperNode's app API listens on loopback only
        superexec_auth_secret=load_superexec_auth_secret(secret_file=secret_file),
        parent_pid=parent_pid,
        runtime_dependency_install=False,
    )


def message_objects(message: Message) -> dict:
    """Every object of a Message's tree as Flower's object store holds it (each with
    ``deflate()``): what a SuperNode and the SuperLink actually transfer."""
    require_flwr("bench/wire_bytes.py")
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return get_all_nested_objects(message)


def message_proto_bytes(message: Message) -> int:
    """The size of the whole Message as one protobuf (Flower's serde), for comparison."""
    require_flwr("bench/wire_bytes.py")
    from flwr.common.serde import message_to_proto

    return message_to_proto(message).ByteSize()


# A message and its objects travel apart; a receiver that pulls the message before every
# object arrived retries each missing one after 1 s, doubling to 10 s
# (flwr/supercore/inflatable/inflatable_utils.py). A deployed round met that race twice
# (a task pulling its message from the SuperNode, the ServerApp pulling a reply): ~1 s
# each way. Ours start at 0.05 s and double to Flower's 10 s cap, so an object that
# never comes is polled as often as Flower would; 503 tries keep Flower's patience
# (about 4,965 s: 0.05 + 0.1 + ... + 6.4 = 12.75 s, then 495 x 10 s).
OBJECT_PULL_RETRIES = {"initial_backoff": 0.05, "backoff_cap": 10, "max_tries_per_object": 503}
_FLWR_OBJECT_PULL_RETRIES = {"initial_backoff": 1, "backoff_cap": 10, "max_tries_per_object": 500}
_OBJECT_PULLS = "fedshield's object pull retries (from 0.05 s instead of 1 s)"


def shorten_object_pull_retries() -> None:
    """Set the shorter retries in this process (and the processes it forks) on every
    caller of flwr's object pulls; raises ``DependencyMismatch`` and changes nothing when
    flwr or its retry defaults are not those this was written for."""
    require_flwr(_OBJECT_PULLS)
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    for function in functions:
        found = {k: (function.__kwdefaults__ or {}).get(k) for k in OBJECT_PULL_RETRIES}
        if found not in (_FLWR_OBJECT_PULL_RETRIES, OBJECT_PULL_RETRIES):
            raise DependencyMismatch(
                f"{_OBJECT_PULLS}: {function.__qualname__}'s retry defaults are {found}, not "
                f"flwr 1.42's {_FLWR_OBJECT_PULL_RETRIES}; Flower's own retries stay"
            )
    for function in functions:
        function.__kwdefaults__.update(OBJECT_PULL_RETRIES)


def describe_object_pulls() -> str:
    ours, flower = OBJECT_PULL_RETRIES, _FLWR_OBJECT_PULL_RETRIES
    return (
        f"{ours['initial_backoff']:g}-{ours['backoff_cap']:g} s "
        f"(Flower's: {flower['initial_backoff']}-{flower['backoff_cap']} s)"
    )


def import_clientapp_runtime() -> None:
    """Import the ClientApp runtime each task runs, so that a fork starts with it."""
    require_flwr(_EXECUTOR)
    import flwr.supernode.runtime.run_clientapp  # noqa: F401
