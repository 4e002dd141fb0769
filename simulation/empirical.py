"""The empirical privacy audit: one simulated run with canaries, scored as the server can.

prepare (draw m canaries, deal them to the simulated owners, flip each one's coin, write
them down) -> run the real simulation (Flower's Simulation Engine, the owners' real
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

from fedshield.audit.canaries import Canary, CanaryScorer, draw_canaries, write_canaries
from fedshield.audit.one_run import EMPIRICAL_FORMAT, audit_guesses, exceeds_claim
from fedshield.common.config import RunConfig
from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import ConfigError
from fedshield.common.model import ModelSpec
from fedshield.common.simulation_split import class_names

RESULT_FILE = "empirical.json"

WHAT_IT_SHOWS = (
    "Canaries (records of random words with a random label) were dealt to the simulated "
    "owners and each was put into its owner's data on a coin flip. After one training "
    "run, the server's view (every owner's update, every round) was used to guess which "
    "canaries were trained on. Many correct guesses are impossible for a mechanism that "
    "really is (epsilon, delta)-DP with a small epsilon (Steinke, Nasr and Jagielski, "
    "NeurIPS 2023, Theorem 3.1); the lower bound is the largest epsilon the guesses rule "
    "out at the stated confidence. A lower bound ABOVE the claimed epsilon proves, at "
    "that confidence, that the implementation leaks more than it claims (noise switched "
    "off, clipping that does not clip, an update that bypasses the optimizer). A lower "
    "bound BELOW the claim is consistent with the claim but does not prove it: one run "
    "with these canaries and these scores is a weak attacker, so the bound is usually far "
    "below the true epsilon; it tests this run, this data and these settings only."
)


@dataclass(frozen=True)
class EmpiricalAudit:
    config: RunConfig  # the run's plan, with the canary file set
    canaries: list[Canary]
    scorer: CanaryScorer
    confidence: float


def prepare(
    config: RunConfig, num_clients: int, num_canaries: int, confidence: float
) -> EmpiricalAudit:
    """Draw and write the canaries; returns the run's config and the server-side scorer."""
    if num_canaries < 2 * num_clients:
        raise ConfigError(
            f"--canaries {num_canaries}: need at least 2 per owner ({2 * num_clients} for "
            f"{num_clients} owners); 1000 is the default"
        )
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"--confidence {confidence}: must be in [0.5, 1), e.g. 0.95")
    if config.resume or config.continue_from:
        raise ConfigError("an empirical audit is one fresh run: drop --resume / --continue-from")
    classes = class_names(config)
    canaries = draw_canaries(num_canaries, num_clients, classes)
    included = write_canaries(canaries, Path(config.out_dir) / "canaries")
    config = config.replace(audit_canaries=str(included.resolve()))
    scorer = CanaryScorer(ModelSpec.from_config(config), classes, canaries)
    return EmpiricalAudit(config, canaries, scorer, confidence)


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
    if not config.dp:
        verdict = (
            f"no DP claim (--no-dp); the run is not ({bound:.3g}, {config.delta:g})-DP "
            f"with {audit.confidence:.0%} confidence"
        )
    elif claimed is None:
        verdict = "no owner charged any epsilon; nothing to compare"
    elif bound > claimed:
        verdict = (
            f"LEAKS MORE THAN CLAIMED: the lower bound {bound:.3g} is above the claimed "
            f"epsilon {claimed:.3g} ({audit.confidence:.0%} confidence)"
        )
    else:
        verdict = f"consistent with the claim: lower bound {bound:.3g} <= claimed {claimed:.3g}"
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
        "claimed-epsilon": claimed,
        "recomputed-epsilon": recomputed,
        "per-owner": owners,
        "lower-bound": result.as_dict(),
        "updates-scored": audit.scorer.updates_seen,
        "final-accuracy": rounds[-1]["accuracy"] if rounds else None,
        "canaries-file": str((out_dir / "canaries" / "canaries.json").resolve()),
        "method": "Steinke, Nasr, Jagielski 2023 (arXiv:2305.08846), Theorem 3.1; "
        "union bound over scores x guess counts",
        "verdict": verdict,
        "what-it-shows": WHAT_IT_SHOWS,
    }
    summary["exceeds-claim"] = exceeds_claim(summary)
    write_bytes_atomic(out_dir / RESULT_FILE, json.dumps(summary, indent=1).encode())
    return summary
