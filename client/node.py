"""The data owner's node lifecycle behind ``fedshield client start``.

Guarantee: local problems fail first and at once, and a node whose every round would be
refused never joins. In this order, each step reporting through ``say`` so the CLI only
prints:

1. ``check_inputs`` (client/node_settings.py, called by the CLI before any heavy
   import): the address, numbers, CA file, node key and data path;
2. ``check_local``: the data file, delta against N, the ledger and the budget left,
   and the owner's keys (common/owner_keys.py: created on first start);
3. ``connect``: wait for the SuperLink (client/superlink_wait.py), then read the class
   list the operator publishes (client/published.py) and compare it with the owner's
   labels (client/class_check.py). Nothing about the owner's data is sent;
4. ``record_node_start`` (the node's identity, the TLS peer, the wait, the class list),
   then ``run_supernode`` (client/supernode.py) until a stop signal, the SuperLink's
   departure, the operator's removal of this node, or a failure; ``record_node_stop``
   says which, whatever went wrong.

The ClientApp that Flower starts for each message reads the owner's settings from the
node config built here (``node_config``), never from the server. Exit codes: see
client/supernode.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedshield.client.class_check import check_federation_classes
from fedshield.client.published import FederationInfo, fetch_federation_info
from fedshield.client.stop_signals import StopSignals
from fedshield.client.superlink_wait import wait_for_superlink
from fedshield.client.supernode import STOP_FAILED, STOP_SIGNAL, NodeStop, run_supernode
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.config import split_class_names
from fedshield.common.errors import StoppedBySignal
from fedshield.common.key_folder_lock import node_uses_keys
from fedshield.common.pki import node_key_fingerprint

if TYPE_CHECKING:  # torch-free at import: the CLI checks its inputs before loading these
    from fedshield.client.node_settings import SuperNodeSettings
    from fedshield.common.data import TextDataset


@dataclass(frozen=True)
class LocalChecks:
    """What the owner's own machine says, before any connection."""

    dataset: TextDataset
    epsilon_spent: float
    node_key_fingerprint: str
    at_rest_key_id: str = ""
    desensitisation: str = "off"  # the policy in force, as the owner's console shows it


@dataclass(frozen=True)
class Readiness:
    dataset: TextDataset
    epsilon_spent: float
    node_key_fingerprint: str
    transport: dict
    federation: FederationInfo | None = None
    superlink_wait: dict = field(default_factory=dict)


def check_local(settings: SuperNodeSettings) -> LocalChecks:
    """The data, delta, the ledger and the keys: everything a data owner should see fail
    here, before waiting for or talking to the federation."""
    from fedshield.client.ledger import PrivacyLedger
    from fedshield.common.data import load_dataset
    from fedshield.common.owner_keys import open_owner_keys
    from fedshield.common.privacy import check_delta

    owner = settings.owner
    fingerprint = (
        "none (insecure mode: no node authentication)"
        if settings.insecure
        else node_key_fingerprint(settings.auth_key)
    )
    dataset = load_dataset(
        owner.data_path,
        owner.text_column,
        owner.label_column,
        split_class_names(owner.classes),
        unit_column=owner.privacy_unit,
    )
    unit_level = owner.privacy_unit and not owner.record_level
    check_delta(owner.delta, dataset.unit_count if unit_level else len(dataset))
    spent = PrivacyLedger(owner.ledger_dir).epsilon(owner.delta)
    # Created here on first start, so a key folder others can read is refused at start.
    keys = open_owner_keys(Path(owner.key_dir).expanduser())
    return LocalChecks(dataset, spent, fingerprint, keys.key_id, desensitisation_line(owner, keys))


def unit_line(owner, dataset: TextDataset) -> str:
    """What one DP contribution is, for the owner's console (exact figures: its own)."""
    if not owner.privacy_unit:
        return "privacy unit: record (epsilon protects one record; --privacy-unit COLUMN protects a person)"
    name, largest = owner.privacy_unit, dataset.largest_unit
    if owner.record_level:
        return (
            f"privacy unit: record (record-level) on data with units '{name}': "
            f"{dataset.unit_count} units, the largest {largest} records, protected only "
            "through group privacy (each round's ledger warning shows its epsilon)"
        )
    return (
        f"privacy unit: '{name}', {dataset.unit_count} units (largest {largest} records; "
        f"at most {owner.max_records_per_unit} train a round): epsilon protects one '{name}'"
    )


def desensitisation_line(owner, keys) -> str:
    """The policy built and warmed up now, so that a bad policy file or a missing NER
    model is refused at start, not in a round; what it says, for the owner's console."""
    from fedshield.common.desensitise import desensitiser_for
    from fedshield.common.desensitise_policy import DEFAULT_TYPES

    desensitiser = desensitiser_for(owner.desensitise, owner.desensitise_policy, keys.pseudonym)
    if desensitiser is None:
        return "OFF (--no-desensitise): identifiers in your text reach the model as they are"
    policy = desensitiser.describe()
    operators = sorted(set(policy["operators"].values()))
    left_out = [t for t in DEFAULT_TYPES if t not in policy["entities"]]
    return (
        f"{policy['source']} policy, {len(policy['entities'])} types ({', '.join(operators)}), "
        f"{len(policy['recognizers'])} recognizers, score threshold "
        f"{policy['score-threshold']:g}, applied before anything reads your text"
        + (f"; default types LEFT OUT: {', '.join(left_out)}" if left_out else "")
    )


def connect(
    settings: SuperNodeSettings,
    local: LocalChecks,
    stops: StopSignals,
    on_line: Callable[[str], None] = print,
    *,
    single_attempt: bool = False,
) -> Readiness:
    """Wait for the SuperLink, then read the federation's class list (not yet checked:
    client/class_check.py)."""
    transport, waited = wait_for_superlink(settings, stops, on_line, single_attempt=single_attempt)
    return Readiness(
        local.dataset,
        local.epsilon_spent,
        local.node_key_fingerprint,
        transport,
        fetch_federation_info(settings),
        waited,
    )


def node_config(settings: SuperNodeSettings, readiness: Readiness) -> dict:
    owner = settings.owner
    transport = (
        "INSECURE plaintext, no node authentication"
        if settings.insecure
        else f"tls {readiness.transport['tls-version']}; "
        f"server-cert-sha256={readiness.transport['peer-certificate-sha256']}; "
        f"supernode-auth key {readiness.node_key_fingerprint}"
    )
    return {
        **owner.as_dict(),
        "data-path": str(Path(owner.data_path).resolve()),
        "ledger-dir": str(Path(owner.ledger_dir).expanduser().resolve()),
        "audit-dir": str(Path(owner.audit_dir).expanduser().resolve()),
        "cache-dir": str(Path(owner.cache_dir).expanduser().resolve()) if owner.cache_dir else "",
        "key-dir": str(Path(owner.key_dir).expanduser().resolve()),
        # Default label from the node key (public), never from the data's fingerprint.
        "owner-id": owner.owner_id or _default_owner_id(readiness.node_key_fingerprint),
        "transport": transport,
        # Settled now, not per round: the owner's --classes, else the federation's
        # published list (the mismatch was shown on this console only). A round's class
        # check is then a comparison of settings, never a question about the records.
        "classes": owner.classes or _published_classes(readiness),
    }


def _published_classes(readiness: Readiness) -> str:
    federation = readiness.federation
    return ",".join(federation.classes) if federation and federation.classes else ""


def _default_owner_id(node_key_fingerprint: str) -> str:
    digest = node_key_fingerprint.removeprefix("SHA256:")
    return f"owner-{digest[:8]}" if not digest.startswith("none") else "owner"


def _owner_audit(config: dict) -> AuditLog:
    return AuditLog(Path(config["audit-dir"]) / "audit.jsonl", actor=config["owner-id"])


def record_node_start(settings: SuperNodeSettings, readiness: Readiness, config: dict) -> None:
    audit = _owner_audit(config)
    if settings.insecure:
        warning = "no TLS and no node authentication: traffic is readable and forgeable"
        audit.append(Event.INSECURE_MODE_WARNING, **{Field.WARNING: warning})
    federation = readiness.federation
    audit.append(
        Event.NODE_START,
        **{
            "superlink": settings.superlink,
            Field.NODE_KEY_FINGERPRINT: readiness.node_key_fingerprint,
            Field.TRANSPORT: readiness.transport,
            "superlink-wait": readiness.superlink_wait,
            "retry-policy": settings.retry.describe(),
            "federation-classes": (
                list(federation.classes)
                if federation and federation.classes
                else f"not checked: {federation.problem if federation else 'not read'}"
            ),
            Field.DATA_FINGERPRINT: readiness.dataset.fingerprint,
            Field.RECORDS: len(readiness.dataset),
            Field.CLASS_COUNTS: readiness.dataset.class_counts(),
            Field.EPSILON_BUDGET: settings.owner.epsilon_budget,
            "epsilon-spent": readiness.epsilon_spent,
            Field.DELTA: settings.owner.delta,
        },
    )
    audit.checkpoint("node-start")


def record_node_stop(config: dict, stop: NodeStop) -> None:
    audit = _owner_audit(config)
    audit.append(
        Event.NODE_STOP,
        **{Field.REASON: stop.reason, "exit-code": stop.exit_code, "message": stop.message},
        **stop.details,
    )
    audit.checkpoint("node-stop")


def exit_at_once(code: int) -> None:
    """End ``client start`` once the node has stopped (and, if it ran, its stop is
    recorded, fsynced) or was stopped while waiting for the SuperLink.

    Why not a normal exit: the interpreter's teardown with torch and Opacus loaded took
    1-3 s more on the development machine, after the children were already gone; a
    stopped node should give the shell back at once. Nothing is left to flush but the
    standard streams.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start_node(
    settings: SuperNodeSettings, say: Callable[[str], None], *, check_only: bool = False
) -> NodeStop | None:
    """Run the owner's node from the local checks to its stop (see the module docstring);
    returns why it stopped, or None when ``check_only`` found no problem.

    ``settings`` passed ``check_inputs`` already. A problem before the node starts raises
    a FedshieldError; a stop signal while waiting for the SuperLink returns its NodeStop.
    """
    owner = settings.owner
    local = check_local(settings)
    counts = ", ".join(f"{k}: {v}" for k, v in local.dataset.class_counts().items())
    say(
        f"data {owner.data_path}: {len(local.dataset)} records, classes {{{counts}}}, "
        f"fingerprint {local.dataset.fingerprint}"
    )
    say(
        f"privacy budget: epsilon {owner.epsilon_budget:g} at delta {owner.delta:g}; spent "
        f"{local.epsilon_spent:.3f}; left {owner.epsilon_budget - local.epsilon_spent:.3f} "
        f"(ledger {Path(owner.ledger_dir).expanduser()})"
    )
    say(unit_line(owner, local.dataset))
    say(
        f"keys {Path(owner.key_dir).expanduser()}: at-rest key {local.at_rest_key_id} "
        "(encrypts the caches derived from your text, and kept releases)"
    )
    if (Path(owner.key_dir).expanduser() / "at-rest.key.previous").exists():
        say(
            "warning: a key rotation was interrupted (at-rest.key.previous is still there); "
            "stop the node and run `fedshield client rotate-key` again to finish it"
        )
    say(f"desensitisation: {local.desensitisation}")
    say(_policy_line(settings))
    from fedshield.common import minilm
    from fedshield.common.model import resolve_device

    say(
        f"compute: {resolve_device(owner.device)}; models: hashed, "
        + ("minilm" if minilm.is_installed() else f"not minilm ({minilm.INSTALL_HINT})")
    )
    with StopSignals() as stops:
        try:
            ready = connect(settings, local, stops, say, single_attempt=check_only)
        except StoppedBySignal as stopped:
            return NodeStop(STOP_SIGNAL, stopped.exit_code, str(stopped))
        say(
            f"node key {ready.node_key_fingerprint}; SuperLink {settings.superlink}: "
            f"{ready.transport}"
        )
        check_federation_classes(settings, ready.dataset, ready.federation, say)
        if check_only:
            return None
        config = node_config(settings, ready)
        # No key rotation under a running node (common/key_folder_lock.py).
        with node_uses_keys(Path(owner.key_dir)):
            record_node_start(settings, ready, config)
            try:
                stop = run_supernode(settings, config, stops, ready.node_key_fingerprint, say)
            except Exception as exc:  # the stop is recorded whatever went wrong
                stop = NodeStop(
                    STOP_FAILED,
                    1,
                    f"fedshield failed while the node ran ({type(exc).__name__}: {exc}); see "
                    "the output above and start again",
                )
            record_node_stop(config, stop)
    return stop


def _policy_line(settings: SuperNodeSettings) -> str:
    """The owner's policy as ``client start`` shows it: what a plan may ask of this owner."""
    owner = settings.owner
    return (
        "your policy: "
        + ("NON-PRIVATE rounds accepted (--allow-no-dp)" if owner.allow_no_dp else "DP required")
        + "; evaluate "
        + (
            f"allowed with DP (noise {owner.evaluate_noise_multiplier:g})"
            if owner.allow_evaluate
            else "refused"
        )
        + (f"; at most epsilon {owner.run_epsilon_cap:g} per run" if owner.run_epsilon_cap else "")
        + (f"; classes accepted: {owner.classes}" if owner.classes else "")
    )
