"""Before round 1 of a simulation: every simulated owner's texts desensitised (and, for
MiniLM, encoded) and the evaluation data desensitised, once each, into the run's sealed
cache, so that no round waits on them (a late first-round reply is dropped after its
owner was charged).

Desensitisation is pure Python, so owners run in parallel processes, one per core, when
there is enough text to pay for starting them; MiniLM encoding is multi-threaded torch
already, so it runs in this process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from fedshield.client.encoding_cache import prepare_simulated_owner
from fedshield.common.config import RunConfig
from fedshield.server.app import prepare_operator_evaluation_data

# Below this many texts, processes would take longer to start than the work itself.
PARALLEL_MIN_TEXTS = 5000


def prepare_owners(
    config: RunConfig, clients: int, records: int, on_owner: Callable[[], None]
) -> None:
    """Fill the caches; ``on_owner`` is called as each owner is done."""
    workers = max(1, min(clients + 1, os.cpu_count() or 1))
    if config.model == "minilm" or records < PARALLEL_MIN_TEXTS:
        workers = 1
    if workers == 1:
        for pid in range(clients):
            prepare_simulated_owner(config, clients, pid)
            on_owner()
        prepare_operator_evaluation_data(config)
        return
    # spawn, not fork: this process holds torch (and, on a GPU machine, maybe CUDA).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        evaluation = pool.submit(prepare_operator_evaluation_data, config)
        owners = [
            pool.submit(prepare_simulated_owner, config, clients, pid) for pid in range(clients)
        ]
        for owner in owners:
            owner.result()
            on_owner()
        evaluation.result()
