"""The operator's view of a running federation, and the removal of an owner.

Guarantee: every fact ``federation_status`` shows comes from the state folder's files
(the owner registry ``server start`` writes, the newest run's metrics.json and server
audit log) or from the SuperLink itself (``flwr supernode ls`` on loopback). An owner is
its node key's fingerprint: its epsilon is the total its own ledger reported in the
newest reply the server accepted from that key, train or evaluate (an evaluate answer is
a charge too), counting only replies that carry the hash of the owner's own audit entry
(anchored: the auditor finds it in the owner's log). The label an owner declares is
shown only as "label-self-declared". Where the data do not tie a fact to a key, the
field reads "unknown": nothing is inferred from names.

``remove_owner`` writes the notice the owner's client shows (common/federation_info.py)
before it unregisters the node, so the notice is there when the owner's SuperNode stops;
if unregistering fails, the notice is taken back (a removal that did not happen must
not be announced). The removal is recorded in the owner registry and, when there is
one, in the newest run's server audit log.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from fedshield.common.audit_events import Event, Field
from fedshield.common.errors import ConfigError, FedshieldError
from fedshield.common.federation_info import NOTICE_PATH_PREFIX, notice_id, write_notice
from fedshield.common.pki import ssh_public_key_fingerprint
from fedshield.server import deployment as dep
from fedshield.server.owner_registry import OWNERS_FILE, load_owner_registry, save_owner_registry

UNKNOWN = "unknown"
RUNS_DIR = "runs"  # in the state folder, as ``server start`` names its runs


def run_dirs(state_dir: Path) -> list[Path]:
    """The run folders under STATE/runs, oldest first (by when metrics.json last changed)."""
    metrics = sorted(
        (Path(state_dir) / RUNS_DIR).glob("*/metrics.json"), key=lambda path: path.stat().st_mtime
    )
    return [path.parent for path in metrics]


def newest_run_dir(state_dir: Path) -> Path | None:
    """The run folder under STATE/runs whose metrics.json changed last."""
    runs = run_dirs(state_dir)
    return runs[-1] if runs else None


def _every_runs_entries(state_dir: Path, newest: Path | None) -> list[dict]:
    """The server audit entries of every run, oldest run first (a log several runs share
    is read once): an owner's epsilon is its newest anchored figure in any run, so a run
    every owner refused does not empty the table when the operator needs it most."""
    folders = run_dirs(state_dir)
    if newest is not None and newest not in folders:
        folders.append(newest)
    paths: list[Path] = []
    for folder in folders:
        path = server_audit_path(folder)
        if path is not None and path not in paths:
            paths.append(path)
    return [entry for path in paths for entry in _audit_entries(path)]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def server_audit_path(run_dir: Path) -> Path | None:
    """The run's server audit log: ``audit-dir`` of the run's config, or RUN/audit."""
    metrics = _read_json(run_dir / "metrics.json") or {}
    audit_dir = (metrics.get("run") or {}).get("audit-dir") or run_dir / "audit"
    path = Path(audit_dir).expanduser() / "server" / "audit.jsonl"
    return path if path.is_file() else None


def _audit_entries(path: Path | None) -> list[dict]:
    """The log's entries in order; a partial last line (a crash mid-write) is skipped."""
    if path is None:
        return []
    entries = []
    for line in path.read_bytes().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _run_view(run_dir: Path, entries: list[dict]) -> dict:
    metrics = _read_json(run_dir / "metrics.json") or {}
    rounds = metrics.get("rounds") or []
    final = metrics.get("final")
    starts = [e["data"] for e in entries if e.get("type") == Event.RUN_START]
    planned = (metrics.get("run") or {}).get("num-rounds")
    if planned is None and starts:
        planned = starts[-1].get(Field.CONFIG, {}).get("num-rounds")
    return {
        "folder": str(run_dir),
        "rounds-done": max((r["round"] for r in rounds), default=0),
        "rounds-planned": planned,
        "last-accuracy": rounds[-1]["accuracy"] if rounds else None,
        "last-macro-f1": rounds[-1].get("macro-f1") if rounds else None,
        "never-predicted": rounds[-1].get("never-predicted", []) if rounds else [],
        "finished": final is not None,
        "outcome": (final or {}).get("outcome"),
    }


def _owner_key(data: dict) -> str:
    """How a server entry names its owner: the key fingerprint, else the node id (logs
    written before owners were named by key)."""
    return data.get(Field.NODE_KEY_FINGERPRINT) or f"node:{data.get(Field.NODE_ID)}"


def _anchored_replies(entries: list[dict]) -> dict[str, dict]:
    """owner -> the newest accepted, anchored reply's facts: epsilon (train or evaluate),
    the budget from the newest update, the self-declared label, round and kind."""
    owners: dict[str, dict] = {}
    kinds = {Event.UPDATE_RECEIVED: "train", Event.EVALUATE_RECEIVED: "evaluate"}
    for entry in entries:
        kind = kinds.get(entry.get("type"))
        data = entry.get("data") or {}
        if kind is None or not data.get(Field.OWNER_AUDIT_HEAD):
            continue
        metrics = data.get(Field.METRICS) or {}
        seen = owners.setdefault(_owner_key(data), {"epsilon-budget": None})
        seen.update(
            {
                "epsilon": metrics.get("epsilon"),
                "round": data.get(Field.SERVER_ROUND),
                "kind": kind,
                "owner-audit-head": data[Field.OWNER_AUDIT_HEAD],
                "node-id": data.get(Field.NODE_ID),
                "fingerprint": data.get(Field.NODE_KEY_FINGERPRINT),
            }
        )
        if kind == "train":
            seen["epsilon-budget"] = metrics.get("epsilon-budget")
        label = data.get(Field.OWNER_LABEL_SELF_DECLARED)
        if label:
            seen["label"] = label
    return owners


def _epsilon(reply: dict | None) -> dict:
    if not reply:
        return {"epsilon-spent": None, "epsilon-budget": None, "epsilon-left": None}
    spent, budget = reply.get("epsilon"), reply.get("epsilon-budget")
    left = budget - spent if spent is not None and budget is not None else None
    return {
        "epsilon-spent": spent,
        "epsilon-budget": budget,
        "epsilon-left": left,
        "epsilon-from": f"round {reply['round']} {reply['kind']} reply, owner audit entry "
        f"{str(reply['owner-audit-head'])[:16]}",
    }


def _superlink_view(state_dir: Path) -> tuple[dict, dict[str, dict]]:
    """(what the SuperLink said, its nodes by node id)."""
    flwr_home = Path(state_dir) / "flwr-home"
    if not (flwr_home / "config.toml").is_file():
        return {
            "reachable": False,
            "detail": f"no SuperLink was started from {state_dir} (no flwr-home/config.toml)",
        }, {}
    try:
        nodes = dep.list_nodes(flwr_home)
    except (dep.DeploymentError, OSError, subprocess.TimeoutExpired) as exc:
        return {"reachable": False, "detail": str(exc)}, {}
    return {"reachable": True, "detail": f"{len(nodes)} node(s) known"}, {
        str(node["node-id"]): node for node in nodes
    }


def _connection(owner_node: str | None, reachable: bool, nodes: dict[str, dict]) -> str:
    """The SuperLink's word for the node (online, offline, registered, unregistered)."""
    if owner_node is None or not reachable:
        return UNKNOWN  # no node id recorded, or the SuperLink did not answer ("superlink")
    node = nodes.get(owner_node)
    return node["status"] if node else "not listed"


def federation_status(state_dir: Path, run_dir: Path | None = None) -> dict:
    """Owners (name, fingerprint, node id, connection, self-declared label, epsilon
    spent/budget/left), the current run, and whether the SuperLink answered."""
    state_dir = Path(state_dir)
    run_dir = run_dir or newest_run_dir(state_dir)
    audit_path = server_audit_path(run_dir) if run_dir else None
    entries = _audit_entries(audit_path)
    replies = _anchored_replies(_every_runs_entries(state_dir, run_dir))
    superlink, nodes = _superlink_view(state_dir)

    registry = load_owner_registry(state_dir)
    registered_nodes = {str(o["node-id"]) for o in registry if o.get("node-id") is not None}
    keyed = [(o, None if o.get("node-id") is None else str(o["node-id"])) for o in registry]
    # Nodes the SuperLink knows that this folder did not register (e.g. by hand with flwr).
    keyed += [(None, node_id) for node_id in nodes if node_id not in registered_nodes]
    shown: set[str] = set()
    owners: list[dict] = []
    for owner, node_id in keyed:
        fingerprint = owner["fingerprint"] if owner else None
        reply = replies.get(fingerprint) if fingerprint else None
        if reply is None and node_id is not None:
            reply = replies.get(f"node:{node_id}")
        if reply is None and fingerprint is None and node_id is not None:
            # a node registered elsewhere: its replies name the key the SuperLink holds
            reply = next((r for r in replies.values() if str(r.get("node-id")) == node_id), None)
            fingerprint = reply.get("fingerprint") if reply else None
        shown.update(k for k in (fingerprint, f"node:{node_id}") if k)
        owners.append(_owner_row(owner, fingerprint, node_id, reply, superlink, nodes))
    # Keys the log shows replies from that neither the registry nor the SuperLink lists.
    for key, reply in replies.items():
        if key not in shown:
            node_id = None if reply.get("node-id") is None else str(reply["node-id"])
            owners.append(
                _owner_row(None, reply.get("fingerprint"), node_id, reply, superlink, nodes)
            )
    return {
        "state": str(state_dir),
        "superlink": superlink,
        "run": _run_view(run_dir, entries) if run_dir else None,
        "server-audit-log": str(audit_path) if audit_path else None,
        "owners": owners,
    }


def _owner_row(
    owner: dict | None,
    fingerprint: str | None,
    node_id: str | None,
    reply: dict | None,
    superlink: dict,
    nodes: dict[str, dict],
) -> dict:
    connection = _connection(node_id, superlink["reachable"], nodes)
    return {
        "name": owner["name"] if owner else UNKNOWN,
        "key": owner["key"] if owner else UNKNOWN,
        "fingerprint": fingerprint or UNKNOWN,
        "node-id": node_id,
        "connection": connection,
        "connected": connection == "online" if superlink["reachable"] and node_id else None,
        "removed": owner.get("removed") if owner else None,
        "max-weight": owner.get("max-weight") if owner else None,
        "label-self-declared": (reply or {}).get("label") or UNKNOWN,
        **_epsilon(reply),
    }


def remove_owner(
    state_dir: Path,
    public_key: Path,
    reason: str,
    node_id: int | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    """Announce (notice), unregister, record; returns what was done."""
    state_dir = Path(state_dir)
    fingerprint = ssh_public_key_fingerprint(public_key)
    registry = load_owner_registry(state_dir)
    owner = next((o for o in registry if o["fingerprint"] == fingerprint), None)
    if owner is not None and owner.get("removed"):
        raise ConfigError(
            f"{public_key} ({fingerprint}) was already removed on {owner['removed']['time']}: "
            f"{owner['removed']['reason']!r}"
        )
    known = owner.get("node-id") if owner else None
    if known is not None and node_id is not None and int(known) != node_id:
        raise ConfigError(
            f"--node-id {node_id}: {public_key} was registered as node {known} "
            f"({state_dir / OWNERS_FILE}); drop --node-id"
        )
    node_id = int(known) if known is not None else node_id
    if node_id is None:
        where = "is not in" if owner is None else "has no node id in"
        raise ConfigError(
            f"{public_key} ({fingerprint}) {where} {state_dir / OWNERS_FILE}, so its node "
            "id is unknown here; find it with `flwr supernode ls` (FLWR_HOME="
            f"{state_dir / 'flwr-home'}) and pass --node-id"
        )
    flwr_home = state_dir / "flwr-home"
    if not (flwr_home / "config.toml").is_file():
        raise ConfigError(
            f"{state_dir}: no SuperLink was started from this folder; pass the --state of "
            "the running `fedshield server start`"
        )
    listed = {str(n["node-id"]): n for n in dep.list_nodes(flwr_home)}
    if str(node_id) not in listed:
        raise ConfigError(f"node {node_id} ({public_key}) is not known to the SuperLink")
    notice = write_notice(state_dir, fingerprint, "removed", reason)
    say(f"notice written: {notice} (served at {NOTICE_PATH_PREFIX}{notice_id(fingerprint)})")
    if listed[str(node_id)]["status"] == "unregistered":
        say(f"node {node_id} was already unregistered at the SuperLink")
    else:
        try:
            dep.unregister_node(flwr_home, node_id)
        except BaseException:
            notice.unlink(missing_ok=True)  # the removal did not happen: do not announce it
            raise
        say(f"node {node_id} unregistered: the SuperLink refuses it from now on")
    record = {
        "time": json.loads(notice.read_text())["time"],
        "reason": reason,
        "notice-id": notice_id(fingerprint),
    }
    if owner is None:
        owner = {
            "name": public_key.stem,
            "key": str(public_key.resolve()),
            "fingerprint": fingerprint,
            "node-id": node_id,
            "time": record["time"],
        }
        registry.append(owner)
    owner["node-id"], owner["removed"] = node_id, record
    save_owner_registry(state_dir, registry)
    say(f"{state_dir / OWNERS_FILE}: {owner['name']} marked removed")
    audit_path = _record_in_audit_log(state_dir, owner, reason)
    if audit_path:
        say(f"audit: {Event.OWNER_REMOVED} appended to {audit_path}")
    else:
        say("audit: no server audit log in this state folder's runs; none written")
    return {
        "name": owner["name"],
        "fingerprint": fingerprint,
        "node-id": node_id,
        "notice": str(notice),
        "notice-path": f"{NOTICE_PATH_PREFIX}{notice_id(fingerprint)}",
        "audit-log": str(audit_path) if audit_path else None,
        **record,
    }


def _record_in_audit_log(state_dir: Path, owner: dict, reason: str) -> Path | None:
    """Append OWNER_REMOVED (and sign it) to the newest run's server audit log, if any."""
    from fedshield.common.audit_log import AuditLog

    run_dir = newest_run_dir(state_dir)
    path = server_audit_path(run_dir) if run_dir else None
    if path is None:
        return None
    try:
        log = AuditLog(path, actor="server")
        log.append(
            Event.OWNER_REMOVED,
            **{
                Field.NODE_ID: owner["node-id"],
                Field.NODE_KEY_FINGERPRINT: owner["fingerprint"],
                "name": owner["name"],
                Field.REASON: reason,
            },
        )
        log.checkpoint("owner-removed")
    except FedshieldError as exc:
        raise FedshieldError(
            f"the owner is removed and notified, but {path} could not record it: {exc}"
        ) from exc
    return path
