"""Exact accounting: the noise each accountant needs for a target, and what it reports.

For each setting (rounds of full-batch or Poisson-subsampled DP-SGD at a target epsilon)
prints the noise multiplier calibrated by RDP (Opacus, the accountant before the switch)
and by the accountant of record (PLD), the epsilon each reports at PLD's noise, the
independent recomputation (exact closed form at sample rate 1, Opacus's PRV interval
otherwise) and how long calibration took.

    python bench/accounting.py
"""

from __future__ import annotations

import time
import warnings

from opacus.accountants.utils import get_noise_multiplier

from fedshield.audit.epsilon import epsilon_interval
from fedshield.common.dp_event import DpEvent
from fedshield.common.privacy import epsilon_rdp, epsilon_spent, noise_for_target_epsilon

DELTA = 1e-5
SETTINGS = [  # (what, target epsilon, sample rate, steps)
    ("demo: 40 full-batch rounds", 3.0, 1.0, 40),
    ("small owners: 10 full-batch rounds", 8.0, 1.0, 10),
    ("small owners: 4 full-batch rounds", 8.0, 1.0, 4),
    ("40 rounds x 10 Poisson steps at q 0.1", 3.0, 0.1, 400),
    ("10 rounds x 10 Poisson steps at q 0.1", 8.0, 0.1, 100),
]


def main() -> None:
    warnings.filterwarnings("ignore")
    print(
        "| setting | target | sigma RDP | sigma PLD | noise saved | eps RDP @ PLD sigma "
        "| eps PLD | independent | calibration s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for what, target, rate, steps in SETTINGS:
        rdp_sigma = get_noise_multiplier(
            target_epsilon=target,
            target_delta=DELTA,
            sample_rate=rate,
            steps=steps,
            epsilon_tolerance=0.001,
        )
        started = time.perf_counter()
        sigma = noise_for_target_epsilon(target, DELTA, rate, steps)
        took = time.perf_counter() - started
        events = [DpEvent(sigma, rate, steps)]
        low, high = epsilon_interval([DpEvent(sigma, rate, steps)], DELTA)
        independent = f"{high:.4f}" if low == high else f"[{low:.4f}, {high:.4f}]"
        print(
            f"| {what} | {target:g} | {rdp_sigma:.3f} | {sigma:.3f} | {1 - sigma / rdp_sigma:.1%} "
            f"| {epsilon_rdp(events, DELTA):.4f} | {epsilon_spent(events, DELTA):.4f} "
            f"| {independent} | {took:.2f} |"
        )


if __name__ == "__main__":
    main()
