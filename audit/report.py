"""Privacy budget audit: verify the logs, recompute every owner's epsilon independently,
and map each data-security requirement to the evidence found.

Guarantee: the report says when it was made, by which fedshield, from which inputs,
and covers each run (ids, period, settings, outcome: audit/runs.py) and each owner
(key fingerprint, privacy unit, budget history, charges, refusals with reasons:
audit/owners.py), so a data-protection officer can sign it as it stands. The
recomputation does not use the owners' accountant (PLD, dp-accounting): the exact
closed form for full-batch rounds, Opacus's PRV interval otherwise (audit/epsilon.py
``epsilon_interval``), with RDP as a looser cross-check; a claim is flagged if it is
above the recomputation by more than 1%, below it, or above RDP. Output: a
self-contained ``report.html`` (plots embedded) and its twin ``report.json``
(audit/render.py).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedshield.audit.desensitisation import desensitisation_evidence
from fedshield.audit.epsilon import RECOMPUTATION, TOLERANCE, independent_epsilon
from fedshield.audit.one_run import check_empirical
from fedshield.audit.owner_records import OwnerAudit
from fedshield.audit.owners import owner_audits
from fedshield.audit.runs import RunSummary, run_summaries
from fedshield.audit.verify import Verification, verify_log
from fedshield.common import wire
from fedshield.common.audit_events import Event, Field

__all__ = [
    "TOLERANCE",
    "attention_needed",
    "build_report",
    "independent_epsilon",
    "requirements",
]


@dataclass
class Requirement:
    name: str
    reference: str
    status: str  # pass, fail, n/a (with evidence), unverified
    evidence: str


def _count(logs: list[Verification], entry_type: str) -> int:
    return sum(1 for log in logs for e in log.entries if e["type"] == entry_type)


def _is_server_log(log: Verification) -> bool:
    return any(e["type"] == Event.RUN_START for e in log.entries)


def requirements(
    logs: list[Verification],
    servers: list[Verification],
    owners: list[OwnerAudit],
    runs: list[RunSummary],
    anchors: dict,
) -> list[Requirement]:
    rows = []
    transports = [
        e["data"].get(Field.TRANSPORT, "")
        for s in servers
        for e in s.entries
        if e["type"] == Event.RUN_START
    ]
    joined = "; ".join(sorted(set(transports))) or "no server log given"
    if transports and all("simulation" in t for t in transports):
        status = "n/a"
    elif transports and all("tls" in t.lower() and "insecure" not in t.lower() for t in transports):
        status = "pass"
    elif any("insecure" in t.lower() for t in transports):
        status = "fail"
    else:
        status = "unverified"
    rows.append(
        Requirement(
            "Confidentiality in transit",
            "GDPR Art. 32(1)(a); HIPAA 164.312(e)(1); ISO 27001 A.8.24",
            status,
            f"transport recorded at run start: {joined}",
        )
    )

    node_ids = sorted(
        {
            e["data"][Field.NODE_ID]
            for s in servers
            for e in s.entries
            if e["type"] == Event.UPDATE_RECEIVED
        }
    )
    if transports and all("simulation" in t for t in transports):
        auth_status = "n/a"
    elif transports and all("supernode-auth" in t for t in transports):
        auth_status = "pass"
    else:
        auth_status = "unverified"
    impersonated = _count(servers, Event.REPLY_IMPERSONATED)
    rows.append(
        Requirement(
            "Authentication and access control",
            "HIPAA 164.312(a)(1), (d); ISO A.5.15",
            auth_status,
            f"{len(node_ids)} node ids sent updates, each named by its authenticated node key; "
            f"transport: {joined}; replies refused by the server as not from the node their "
            f"task went to: {impersonated}; foreign apps refused at owners: "
            f"{_count(logs, Event.FOREIGN_APP_REFUSED)}",
        )
    )

    allowed = set(wire.REPLY_METRIC_KEYS)
    released = [e for log in logs for e in log.entries if e["type"] == Event.UPDATE_RELEASED]
    received = [e for log in logs for e in log.entries if e["type"] == Event.UPDATE_RECEIVED]
    rejected = _count(logs, Event.UPDATE_REJECTED)
    extra = sorted(
        {k for e in (*released, *received) for k in e["data"][Field.METRICS] if k not in allowed}
    )
    desensitised = desensitisation_evidence([log for log in logs if not _is_server_log(log)])
    without = [d.owner for d in desensitised if not d.complete]
    rows.append(
        Requirement(
            "Data minimisation / desensitisation",
            "GDPR Art. 5(1)(c); ISO A.8.11, A.8.12",
            "fail"
            if extra or without or not desensitised or not (released or received)
            else "pass",
            f"update records: {len(released)} released by owners (owners' logs), "
            f"{len(received)} received and accepted by the server (server log), {rejected} "
            f"rejected by the server; what left owners: model arrays (digest, size, L2 distance "
            f"logged) and metrics {sorted(allowed)}"
            + (f"; unexpected keys {extra}" if extra else "")
            + "; desensitisation before training, per owner (counts per type stay in the "
            "owners' logs): "
            + (" | ".join(d.describe() for d in desensitised) or "no owner round recorded")
            + (f"; owners with rounds run without a policy: {without}" if without else ""),
        )
    )

    bad = [f"{o.owner}: {p}" for o in owners for p in o.problems]
    refusals = sum(len(o.refusals) for o in owners)
    raised = [f"{o.owner} ({c.dated()})" for o in owners for c in o.raised_after_refusal]
    non_private = _count(logs, Event.NON_PRIVATE_ROUND)
    rows.append(
        Requirement(
            "Privacy of individual records (DP)",
            "GDPR Art. 25",
            "pass" if owners and not bad and not non_private else "fail",
            f"{len(owners)} owner ledgers; max epsilon claimed "
            f"{max((o.final_claimed for o in owners), default=0):.4f}, recomputed independently "
            f"within {TOLERANCE:.0%}: {'yes' if not bad else 'no'}; every charge judged against "
            f"the budget in force when it was made; {refusals} refusals (reasons listed per owner)"
            + (f"; budget raised after a refusal: {'; '.join(raised)}" if raised else "")
            + _unit_evidence(owners)
            + (f"; {non_private} NON-PRIVATE rounds (owners opted in)" if non_private else "")
            + (f"; problems: {bad[:3]}" if bad else ""),
        )
    )

    broken = [log.summary() for log in logs if not log.ok]
    unanchored = anchors["missing"]
    rows.append(
        Requirement(
            "Integrity of records and logs",
            "GDPR Art. 5(1)(f); HIPAA 164.312(b), (c)(1); ISO A.8.15",
            "pass" if not broken and not unanchored else "fail",
            f"{len(logs)} logs verified (hash chain, Ed25519 checkpoints); {anchors['matched']} log heads "
            f"recorded by the other side found (owner heads in the server log, server heads in owner logs), "
            f"{len(unanchored)} missing; owners' files sealed at rest that failed "
            f"authentication and were never used: {_count(logs, Event.SEALED_FILE_REJECTED)}"
            + (f"; failures: {broken[:3]}" if broken else "")
            + (f"; missing: {unanchored[:3]}" if unanchored else ""),
        )
    )

    server_runs = [r for r in runs if r.from_server]
    accepted = sum(len(r.rounds_with_accepted_update) for r in server_runs)
    planned = sum(r.rounds_planned or 0 for r in server_runs)
    per_run = "; ".join(
        f"run {number}: {r.availability()}" for number, r in enumerate(runs, 1) if r.from_server
    )
    dropped = sum(r.dropped_node_ids for r in server_runs)
    rejected_updates = sum(len(r.updates_rejected) for r in server_runs)
    server_refusals = sum(len(r.refusals) for r in server_runs)
    ended = sum(1 for r in server_runs if r.ended)
    rows.append(
        Requirement(
            "Availability / resilience",
            "GDPR Art. 32(1)(b)",
            "pass" if server_runs and all(r.available for r in server_runs) else "fail",
            f"{accepted}/{planned} rounds with an accepted update; {len(server_runs)} runs "
            f"started, {ended} ended"
            + (f" ({per_run})" if len(server_runs) > 1 else "")
            + f"; {server_refusals} refusals, {rejected_updates} rejected updates, "
            f"{sum(len(r.replies_impersonated) for r in server_runs)} impersonated replies "
            f"refused, {dropped} dropouts" + ("" if servers else "; no server log given"),
        )
    )
    return rows


def _unit_evidence(owners: list[OwnerAudit]) -> str:
    """What the owners' epsilons are per, and who protects a person only by group privacy."""
    units: dict[str, list[str]] = {}
    for owner in owners:
        units.setdefault(owner.per_unit, []).append(owner.owner)
    text = "; epsilon " + ", ".join(
        f"{per} ({len(names)} owner{'s' if len(names) > 1 else ''})"
        for per, names in sorted(units.items())
    )
    warned = [
        f"{o.owner}: the {w.unit!r} with {w.largest_unit_records} records at epsilon "
        f"{w.epsilon_for_largest_unit:.2f}"
        for o in owners
        if (w := o.group_privacy) is not None
    ]
    if warned:
        text += "; per record on data with units (group privacy, the owners' figures): " + (
            "; ".join(warned)
        )
    return text if owners else ""


def _anchors(servers: list[Verification], clients: list[Verification]) -> dict:
    """Each side's log heads as recorded by the other, looked up in the recording's source.

    The server records each owner's ``update-released`` hash; each owner records the
    hash of the server's ``round-configured`` entry with the plan. A hash that cannot be
    found means the log it points into was cut back or rewritten.
    """
    client_hashes = {e["hash"]: e for log in clients for e in log.entries}
    server_hashes = {e["hash"] for log in servers for e in log.entries}
    given = _owners_given(clients)
    matched, missing = 0, []
    for server in servers:
        for entry in server.entries:
            data = entry["data"]
            kind = entry["type"]
            if kind not in (Event.UPDATE_RECEIVED, Event.EVALUATE_RECEIVED):
                continue
            if data.get(Field.OWNER) not in given:
                continue
            where = f"{data[Field.OWNER]} round {data.get(Field.SERVER_ROUND)}"
            found = client_hashes.get(data.get(Field.OWNER_AUDIT_HEAD))
            if found is None:
                missing.append(where)
            elif kind == Event.UPDATE_RECEIVED and found["data"].get(
                Field.UPDATE_SHA256
            ) != data.get(Field.UPDATE_SHA256):
                missing.append(f"{where}: digest differs")
            elif kind == Event.EVALUATE_RECEIVED and found["data"].get(Field.METRICS) != data.get(
                Field.METRICS
            ):
                missing.append(f"{where}: evaluate answer differs")
            else:
                matched += 1
    if servers:
        for log in clients:
            for entry in log.entries:
                head = (
                    entry["data"].get(Field.PLAN, {}).get(wire.SERVER_AUDIT_HEAD)
                    if entry["type"] == Event.ROUND_START
                    else None
                )
                if head is None:
                    continue
                if head in server_hashes:
                    matched += 1
                else:
                    missing.append(
                        f"server entry {head[:12]} recorded by {entry['actor']} is not in the server log"
                    )
    return {"matched": matched, "missing": missing}


def _owners_given(clients: list[Verification]) -> set[str]:
    """The owners whose logs were given, as the server names them: node-key fingerprints
    (deployment), ``node-<id>`` (simulation: no keys) and, for logs written before owners
    were named by key, the owners' own labels."""
    given = set()
    for log in clients:
        for entry in log.entries:
            given.add(entry["actor"])
            data = entry.get("data") or {}
            if entry["type"] == Event.NODE_START and data.get(Field.NODE_KEY_FINGERPRINT):
                given.add(data[Field.NODE_KEY_FINGERPRINT])
            if entry["type"] == Event.ROUND_START and data.get(Field.NODE_ID) is not None:
                given.add(f"node-{data[Field.NODE_ID]}")
    return given


def _version() -> str:
    try:
        return importlib.metadata.version("fedshield")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_report(
    paths: list[Path],
    pinned_keys: list[str] | None = None,
    inputs: list[Path] | None = None,
    evaluation: dict | None = None,
    empirical: dict | None = None,
) -> dict:
    """Verify ``paths`` (audit logs) and build the report's content.

    ``inputs`` are the files or folders the reader named (recorded as given);
    ``evaluation`` is an evaluation file's content (audit/evaluation.py), shown as is;
    ``empirical`` an empirical audit's result (audit/one_run.py ``load_empirical``): a
    lower bound above the run's claim makes the report fail.
    """
    logs = [
        verify_log(p, (pinned_keys or [None])[i] if pinned_keys and i < len(pinned_keys) else None)
        for i, p in enumerate(paths)
    ]
    servers = [log for log in logs if _is_server_log(log)]
    clients = [log for log in logs if not _is_server_log(log)]
    owners = owner_audits(clients)
    runs = run_summaries(servers, clients)
    anchors = _anchors(servers, clients)
    rows = requirements(logs, servers, owners, runs, anchors)
    if evaluation is not None:
        evaluation = {**evaluation, "run": _evaluated_run(evaluation, runs)}
    if empirical is not None:
        run_keys = {key for run in runs for key in run.run_keys}
        charges = [charge for owner in owners for charge in owner.charges]
        empirical = {**empirical, "check": check_empirical(empirical, run_keys, charges)}
    attention = attention_needed(logs, rows, empirical)
    return {
        "generated-at": datetime.now(UTC).isoformat(timespec="seconds"),
        "fedshield-version": _version(),
        "inputs": [str(p) for p in (inputs or paths)],
        "inputs-resolved": [str(Path(p).resolve()) for p in (inputs or paths)],
        "logs": [
            {
                "path": str(log.path),
                "role": "server" if log in servers else "owner",
                "ok": log.ok,
                "summary": log.summary(),
                "entries": len(log.entries),
                "public-key": log.public_key,
                "first-event": log.entries[0]["ts"] if log.entries else None,
                "last-event": log.entries[-1]["ts"] if log.entries else None,
            }
            for log in logs
        ],
        "runs": [r.as_dict() for r in runs],
        "owners": [o.as_dict() for o in owners],
        "requirements": [asdict(r) for r in rows],
        "anchors": anchors,
        "accountant": {
            "guarantee-rests-on": "the owners' PLD figure (dp-accounting, pessimistic)",
            "recomputation": RECOMPUTATION,
        },
        "tolerance": TOLERANCE,
        "evaluation": evaluation,
        "empirical": empirical,
        "attention": attention,
        "ok": not attention,
    }


def attention_needed(
    logs: list[Verification], rows: list[Requirement], empirical: dict | None
) -> list[str]:
    """What keeps the report from passing, one item each: a requirement not met or not
    verified (with its status), a log that failed verification, an empirical test that
    fails. Empty: the report passes."""
    items = [f"{r.name}: {r.status}" for r in rows if r.status not in ("pass", "n/a")]
    items += [f"log {log.summary()}" for log in logs if not log.ok]
    if empirical is not None and not empirical["check"]["ok"]:
        items.append(f"empirical test: {empirical['check']['verdict']}")
    return items


def _evaluated_run(evaluation: dict, runs: list[RunSummary]) -> str:
    """Which run's model the evaluation file scored, by the model's SHA-256."""
    for run in runs:
        if run.model_sha256 and run.model_sha256 == evaluation.get("model-sha256"):
            return run.id_text
    return "no run in these logs saved this model"
