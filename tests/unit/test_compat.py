"""The compatibility modules (common/flower_compat.py, common/opacus_compat.py): the
installed Flower and Opacus are the releases they were written for; another release fails
loudly with the installed version, the supported range and the fix; every internal name
they reach for exists and behaves as they assume, so an upgrade that renames or moves
one fails here; and nothing else in fedshield imports a private Flower or Opacus name."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import tomllib
import types
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from fedshield.common import flower_compat, opacus_compat
from fedshield.common.errors import DependencyMismatch, FedshieldError
from tests.support.paths import ROOT


@pytest.fixture()
def fresh_checks():
    """Forget the version checks already passed in this process, before and after."""
    cached = (
        flower_compat.require_flwr,
        flower_compat.fleet_node_auth,
        opacus_compat.require_opacus,
    )
    for function in cached:
        function.cache_clear()
    yield
    for function in cached:
        function.cache_clear()


def installed_as(monkeypatch, **versions: str) -> None:
    """Make the compat modules see ``versions`` (distribution=version) as installed."""
    real = flower_compat.version
    monkeypatch.setattr(flower_compat, "version", lambda name: versions.get(name) or real(name))


def test_the_installed_flower_and_opacus_are_the_supported_releases(fresh_checks):
    assert flower_compat.require_flwr("a test").startswith("1.42.")
    assert opacus_compat.require_opacus("a test").startswith("1.6.")


def test_the_supported_ranges_are_the_ones_pyproject_pins():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = {r.name: r.specifier for r in map(Requirement, config["project"]["dependencies"])}
    assert pinned["flwr"] == SpecifierSet(flower_compat.FLWR_SUPPORTED)
    assert pinned["opacus"] == SpecifierSet(opacus_compat.OPACUS_SUPPORTED)
    assert "packaging" in pinned  # imported by the compat modules themselves


@pytest.mark.parametrize(
    ("distribution", "found", "supported", "fix"),
    [
        ("flwr", "1.43.0", ">=1.42,<1.43", "pip install 'flwr[simulation]>=1.42,<1.43'"),
        ("flwr", "1.41.2", ">=1.42,<1.43", "pip install 'flwr[simulation]>=1.42,<1.43'"),
        ("opacus", "1.7.0", ">=1.6,<1.7", "pip install 'opacus>=1.6,<1.7'"),
    ],
)
def test_another_release_fails_with_the_version_the_range_and_the_fix(
    monkeypatch, fresh_checks, distribution, found, supported, fix
):
    installed_as(monkeypatch, **{distribution: found})
    require = flower_compat.require_flwr if distribution == "flwr" else opacus_compat.require_opacus
    with pytest.raises(DependencyMismatch) as raised:
        require("the thing under test")
    message = str(raised.value)
    assert f"{distribution} {found} is installed" in message
    assert f"{distribution}{supported}" in message
    assert fix in message
    assert "the thing under test" in message
    assert isinstance(raised.value, FedshieldError)  # the CLI prints it as one line


def test_the_reaching_functions_check_at_first_use_and_a_mismatch_is_not_cached(
    monkeypatch, fresh_checks
):
    installed_as(monkeypatch, flwr="1.43.0", opacus="2.0.0")
    for reach in (
        flower_compat.fleet_node_auth,
        lambda: flower_compat.push_messages_senders(b""),
        flower_compat.current_task_run_id,
        lambda: opacus_compat.mark_noised(torch.zeros(1)),
        lambda: opacus_compat.prv_dprv(object(), 0.01, 1e-8),  # type: ignore[arg-type]
    ):
        with pytest.raises(DependencyMismatch):
            reach()
        with pytest.raises(DependencyMismatch):
            reach()
    monkeypatch.undo()
    assert flower_compat.fleet_node_auth().timestamp_header == "flwr-timestamp"


def test_a_version_that_is_missing_or_unparseable_fails_too(monkeypatch, fresh_checks):
    def missing(name):
        raise flower_compat.PackageNotFoundError(name)

    monkeypatch.setattr(flower_compat, "version", missing)
    with pytest.raises(DependencyMismatch, match=r"flwr \(not installed\) is installed"):
        flower_compat.require_flwr("x")
    monkeypatch.setattr(flower_compat, "version", lambda name: "custom-build")
    with pytest.raises(DependencyMismatch, match="flwr custom-build is installed"):
        flower_compat.require_flwr("x")


def test_importing_fedshield_modules_reaches_no_flower_or_opacus_internals():
    # Commands that need no internal keep working on another release: the check runs at
    # first use, and importing the compat modules imports neither Flower nor Opacus.
    for module in (flower_compat, opacus_compat):
        tree = ast.parse(Path(module.__file__).read_text())
        top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = [n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n.split(".")[0] in {"flwr", "opacus", "torch"}]


# Every private name and internal module the compat modules reach for exists, and is
# what they assume.


def test_the_fleet_paths_are_every_route_of_flowers_fleet_api():
    from flwr.superlink.routers.fleet.router import router
    from flwr.supernode import fleet_http_client

    routes = {route.path for route in router.routes}
    known = flower_compat.FLEET_PATHS | flower_compat.SELF_REGISTRATION_PATHS
    assert routes == known
    called = set(re.findall(r'path="(/v1/fleet/[a-z-]+)"', inspect.getsource(fleet_http_client)))
    assert called == known
    assert flower_compat.PUSH_MESSAGES_PATH in flower_compat.FLEET_PATHS


def test_fleet_node_auth_is_flowers(fresh_checks):
    from flwr.common.constant import SYSTEM_TIME_TOLERANCE, TIMESTAMP_HEADER, TIMESTAMP_TOLERANCE
    from flwr.supercore.constant import (
        FLEET_HTTP_PUBLIC_KEY_HEADER,
        FLEET_HTTP_SIGNATURE_HEADER,
        MAX_TIMESTAMP_DIFF_SECONDS,
        MIN_TIMESTAMP_DIFF_SECONDS,
    )

    auth = flower_compat.fleet_node_auth()
    assert (auth.public_key_header, auth.signature_header, auth.timestamp_header) == (
        FLEET_HTTP_PUBLIC_KEY_HEADER,
        FLEET_HTTP_SIGNATURE_HEADER,
        TIMESTAMP_HEADER,
    )
    assert (auth.min_age_s, auth.max_age_s) == (
        MIN_TIMESTAMP_DIFF_SECONDS,
        MAX_TIMESTAMP_DIFF_SECONDS,
    )
    assert auth.max_age_s == TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE


def test_push_messages_senders_reads_flowers_protobuf(fresh_checks):
    from flwr.proto.fleet_pb2 import PushMessagesRequest
    from flwr.proto.message_pb2 import Message as MessageProto

    request = PushMessagesRequest()
    request.node.node_id = 7
    for sender, reply_to in ((7, "task-a"), (9, "task-b")):
        message = MessageProto()
        message.metadata.src_node_id = sender
        message.metadata.reply_to_message_id = reply_to
        request.messages_list.append(message)
    body = request.SerializeToString()
    assert flower_compat.push_messages_senders(body) == (7, [(7, "task-a"), (9, "task-b")])
    with pytest.raises(ValueError, match="not a PushMessagesRequest"):
        flower_compat.push_messages_senders(b"\xff\xff\xff")


def test_the_supernode_loop_is_the_one_the_launcher_was_written_for(fresh_checks):
    # If this fails after a Flower upgrade, the SuperNode silently went back to 3 s polls:
    # re-read flwr/supernode/start_client_internal.py and update flower_compat.
    loop = importlib.import_module(flower_compat.SUPERNODE_LOOP_MODULE)
    flower_compat.check_supernode_loop(loop)


def test_a_moved_supernode_loop_is_left_alone_and_named(monkeypatch, fresh_checks):
    from fedshield.client import supernode_launcher as launcher

    loop = importlib.import_module(flower_compat.SUPERNODE_LOOP_MODULE)
    real_time = loop.time
    installed_as(monkeypatch, flwr="1.43.0")
    reason = launcher.install(launcher.PollSchedule(0.1, 3.0))
    assert reason is not None and "flwr 1.43.0 is installed" in reason
    assert flower_compat.FLWR_FIX in reason
    assert loop.time is real_time  # nothing patched
    monkeypatch.undo()
    # A loop without the 3 s wait (a future flwr) is named too.
    moved = types.ModuleType("moved")
    moved.start_client_internal = moved._push_messages = _a_loop_that_waits_otherwise
    with pytest.raises(DependencyMismatch, match="start_client_internal no longer calls"):
        flower_compat.check_supernode_loop(moved)


def _a_loop_that_waits_otherwise() -> None:
    import time

    time.sleep(1)


def test_the_clientapp_runtime_hook_replaces_names_flower_still_calls(monkeypatch, fresh_checks):
    from flwr.supernode.runtime import run_clientapp as runtime

    source = inspect.getsource(runtime.run_clientapp)
    # Replacing a module-level name that run_clientapp no longer calls would pin nothing.
    assert "install_from_fab(" in source and "get_load_client_app_fn(" in source
    assert {"fab_file", "install_dir", "skip_prompt"} <= set(
        inspect.signature(runtime.install_from_fab).parameters
    )
    assert list(inspect.signature(runtime.get_load_client_app_fn).parameters) == [
        "default_app_ref",
        "app_path",
        "multi_app",
    ]
    assert {
        "runtime_api_address",
        "token",
        "insecure",
        "certificates",
        "parent_pid",
        "runtime_dependency_install",
    } <= set(inspect.signature(runtime.run_clientapp).parameters)
    for name in ("install_from_fab", "get_load_client_app_fn"):
        monkeypatch.setattr(runtime, name, getattr(runtime, name))  # restored afterwards
    admitted: list[bytes] = []
    flower_compat.restrict_clientapp_runtime(admitted.append, lambda: "the installed app")
    runtime.install_from_fab(b"fab", skip_prompt=True)
    load = runtime.get_load_client_app_fn("ref", None, False)
    assert admitted == [b"fab"] and load("id", "1.0", "hash") == "the installed app"


def test_the_executor_reaches_are_flowers(flower_task_identity, fresh_checks):
    from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec import run_superexec as superexec_module
    from flwr.supercore.superexec.executor import ExecutionSpec, Executor, LaunchResult

    from fedshield.client.executor import ZygoteExecutor

    assert flower_compat.current_task_run_id() == 42
    assert flower_compat.launch_accepted() == LaunchResult.accepted()
    assert flower_compat.launch_failed("no") == LaunchResult.failed("no")
    spec_fields = {f.name for f in dataclasses.fields(ExecutionSpec)}
    assert {"task_type", "runtime_api_address", "token", "insecure"} <= spec_fields
    assert "root_certificates_path" in spec_fields
    clientapp = types.SimpleNamespace(task_type=TaskType.CLIENT_APP)
    assert flower_compat.is_clientapp_task(clientapp)
    assert not flower_compat.is_clientapp_task(types.SimpleNamespace(task_type="serverapp"))
    # The executor fedshield hands Flower has every method of Flower's protocol.
    protocol = {n for n, v in vars(Executor).items() if callable(v) and not n.startswith("_")}
    assert protocol and protocol <= set(dir(ZygoteExecutor))
    # run_superexec_with replaces get_executor, which run_superexec must still call.
    assert "get_executor(" in inspect.getsource(superexec_module.run_superexec)
    assert {
        "runtime_api_address",
        "insecure",
        "superexec_auth_secret",
        "parent_pid",
        "runtime_dependency_install",
    } <= set(inspect.signature(superexec_module.run_superexec).parameters)
    assert "secret_file" in inspect.signature(load_superexec_auth_secret).parameters


def test_set_task_identity_and_the_message_object_tree(fresh_checks):
    from flwr.app import ArrayRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    flower_compat.set_task_identity(task_id=3, run_id=5, node_id=8)
    assert (TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id) == (3, 5, 8)
    record = ArrayRecord({"w": torch.zeros(4)})
    message = Message(RecordDict({"arrays": record}), dst_node_id=1, message_type="train")
    objects = flower_compat.message_objects(message)
    assert {"Message", "RecordDict", "ArrayRecord", "Array"} <= {
        type(o).__name__ for o in objects.values()
    }
    assert flower_compat.message_proto_bytes(message) > 16


def test_the_type_of_a_grids_run_is_where_flower_compat_names_it():
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run

    assert inspect.signature(Grid.set_run).parameters["run"].annotation in (Run, "Run")


def test_opacus_release_guard_is_opacuss(fresh_checks):
    summed = torch.zeros(3)
    opacus_compat.refuse_if_already_noised(summed)
    opacus_compat.mark_noised(summed)
    with pytest.raises(ValueError, match="zero_grad"):
        opacus_compat.refuse_if_already_noised(summed)


def test_prv_dprv_bounds_opacuss_own_epsilon(fresh_checks):
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(1.1, 0.01, 300)]
    delta, error = 1e-5, 0.01
    low, _, high = opacus_compat.prv_dprv(accountant, error, delta / 1000).compute_epsilon(
        delta, delta / 1000, error
    )
    assert 0 < low <= high
    assert high == pytest.approx(
        accountant.get_epsilon(delta, eps_error=error, delta_error=delta / 1000)
    )


# Nothing outside the compat modules imports a private Flower or Opacus name.
PUBLIC_FLWR = ("flwr.app", "flwr.serverapp", "flwr.clientapp", "flwr.simulation")
COMPAT = {ROOT / "common" / "flower_compat.py", ROOT / "common" / "opacus_compat.py"}


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            modules, names = [a.name for a in node.names], []
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if (
                top == "flwr"
                and module not in ("flwr", "flwr.common")
                and not module.startswith(PUBLIC_FLWR)
            ):
                found.append(f"{path.relative_to(ROOT)}: {module}")
            if top in ("flwr", "opacus") and (
                any(part.startswith("_") for part in module.split("."))
                or any(name.startswith("_") for name in names)
            ):
                found.append(f"{path.relative_to(ROOT)}: {module} {names}")
    return found


def test_only_the_compat_modules_import_flower_or_opacus_internals():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(config["tool"]["setuptools"]["package-dir"].values()) | {"bench"}
    sources = [p for folder in sorted(folders) for p in sorted((ROOT / folder).glob("*.py"))]
    assert sources
    assert [hit for path in sources if path not in COMPAT for hit in _private_imports(path)] == []
