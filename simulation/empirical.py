"""The empirical privacy audit: one simulated run with canaries, scored as the server can.

prepare (draw m canaries, one record each or, with a privacy unit, one unit of several
records each; deal them to the simulated owners, flip each one's coin, write them
down) -> run the real simulation (Flower's Simulation Engine, the owners' real
ClientApp, DP-SGD and ledgers; the server scores every accepted update against the
canaries) -> finish (guess, count, bound epsilon from below: audit/one_run.py; recompute
the claimed epsilon from the owners' signed logs: audit/report.py) -> ``empirical.json``.

It composes the simulation with the audit package, so it lives in the simulation layer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedshield.audit.canaries import SCORES, Canary, CanaryScorer, draw_canaries, write_canaries
from fedshield.audit.one_run import (
    EMPIRICAL_FORMAT,
    WHAT_IT_SHOWS,
    audit_guesses,
    guess_sizes,
    max_detectable,
    verdict,
)
from fedshield.common.config import RunConfig
from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import ConfigError
from fedshield.common.model import ModelSpec
from fedshield.common.simulation_split import class_names

RESULT_FILE = "empirical.json"


@dataclass(frozen=True)
class EmpiricalAudit:
    config: RunConfig  # the run's plan, with the canary file set
    canaries: list[Canary]
    scorer: CanaryScorer
    confidence: float
    # The largest bound these canaries can give (every guess right): a claim at or above
    # it cannot be contradicted by this audit.
    ceiling: float


def prepare(
    config: RunConfig,
    num_clients: int,
    num_canaries: int,
    confidence: float,
    records_per_canary: int = 1,
) -> EmpiricalAudit:
    """Draw and write the canaries; returns the run's config and the server-side scorer.

    With the owners' ``privacy-unit``, each canary is a unit of ``records_per_canary``
    records, and the bound is compared with the claim per unit."""
    if records_per_canary > 1 and not config.privacy_unit:
        raise ConfigError(
            f"--records-per-canary {records_per_canary}: canaries of several records need "
            "--privacy-unit COLUMN (without it each record is its own unit, and a canary of "
            "several records would test group privacy, not the claim); pass --privacy-unit "
            "or --records-per-canary 1"
        )
    if not 1 <= records_per_canary <= config.max_records_per_unit:
        raise ConfigError(
            f"--records-per-canary {records_per_canary}: must be in [1, "
            f"{config.max_records_per_unit}] (max-records-per-unit: above it a round trains "
            "a random subset of a canary unit, which only weakens the audit); the default "
            "is 5 with --privacy-unit, 1 without"
        )
    if num_canaries < 2 * num_clients:
        raise ConfigError(
            f"--canaries {num_canaries}: need at least 2 per owner ({2 * num_clients} for "
            f"{num_clients} owners); 1000 is the default"
        )
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"--confidence {confidence}: must be in [0.5, 1), e.g. 0.95")
    if config.resume or config.continue_from:
        raise ConfigError("an empirical audit is one fresh run: drop --resume / --continue-from")
    out_dir = Path(config.out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(
            f"--out {out_dir}: not empty; an empirical audit needs a fresh folder (its "
            "ledgers and logs must hold this run alone)"
        )
    classes = class_names(config)
    canaries = draw_canaries(
        num_canaries, num_clients, classes, records_per_canary=records_per_canary
    )
    included = write_canaries(canaries, out_dir / "canaries")
    config = config.replace(audit_canaries=str(included.resolve()))
    scorer = CanaryScorer(ModelSpec.from_config(config), classes, canaries)
    beta = (1.0 - confidence) / (len(SCORES) * len(guess_sizes(num_canaries)))
    ceiling = max_detectable(num_canaries, config.delta, beta)
    return EmpiricalAudit(config, canaries, scorer, confidence, ceiling)


def _claims(out_dir: Path) -> tuple[float | None, float | None, list[dict], list[str]]:
    """(max claimed epsilon, max recomputed epsilon, per owner, run keys) from the run's
    signed logs."""
    from fedshield.audit.report import build_report

    logs = sorted((out_dir / "audit").rglob("audit.jsonl"))
    report = build_report(logs, inputs=[out_dir / "audit"])
    owners = [
        {
            "owner": o["owner"],
            "claimed": o["final_claimed"],
            "recomputed": o["final_recomputed"],
            "status": o["status"],
        }
        for o in report["owners"]
    ]
    keys = [key for run in report["runs"] for key in run["run_keys"]]
    charged = [o for o in owners if o["claimed"] > 0]
    if not charged:
        return None, None, owners, keys
    return (
        max(o["claimed"] for o in charged),
        max(o["recomputed"] for o in charged),
        owners,
        keys,
    )


def finish(audit: EmpiricalAudit) -> dict:
    """Guess, bound, compare with the claims; write and return ``empirical.json``."""
    config = audit.config
    out_dir = Path(config.out_dir)
    included = np.array([c.included for c in audit.canaries])
    result = audit_guesses(audit.scorer.scores(), included, config.delta, audit.confidence)
    claimed, recomputed, owners, run_keys = _claims(out_dir)
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    rounds = metrics.get("rounds", [])
    bound = result.epsilon_lower_bound
    said = verdict(
        bound,
        claimed if config.dp else None,
        result.max_detectable,
        result.confidence,
        config.delta,
    )
    summary = {
        "format": EMPIRICAL_FORMAT,
        "generated-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": str(out_dir.resolve()),
        "run-keys": run_keys,
        "data": config.data,
        "owners": config.num_clients,
        "rounds": config.num_rounds,
        "dp": config.dp,
        "target-epsilon": config.target_epsilon if config.dp else None,
        "delta": config.delta,
        # What one canary is and what the claim protects: "record", or the unit column.
        "privacy-unit": config.privacy_unit or "record",
        "records-per-canary": len(audit.canaries[0].texts),
        "claimed-epsilon": claimed,
        "recomputed-epsilon": recomputed,
        "per-owner": owners,
        "lower-bound": result.as_dict(),
        "updates-scored": audit.scorer.updates_seen,
        "final-accuracy": rounds[-1]["accuracy"] if rounds else None,
        "canaries-file": str((out_dir / "canaries" / "canaries.json").resolve()),
        "method": "Steinke, Nasr, Jagielski 2023 (arXiv:2305.08846), Theorem 3.1; "
        "union bound over scores x guess counts",
        "verdict": said,
        "exceeds-claim": claimed is not None and config.dp and bound > claimed,
        "what-it-shows": WHAT_IT_SHOWS,
    }
    write_bytes_atomic(out_dir / RESULT_FILE, json.dumps(summary, indent=1).encode())
    return summary
