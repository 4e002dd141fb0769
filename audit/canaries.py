"""Canaries for the one-run empirical audit, and how the hostile server scores them.

What a canary is, and why this kind: a record of random made-up words (eight random
letters each) with a random label, dealt to one simulated owner and put into that
owner's data with probability 1/2; with a privacy unit, a canary is one unit of several
such records (``records_per_canary``), put in or left out whole on one coin. Random
words carry no meaning the data could teach, so the model can only learn a canary's
label by fitting that very record, which is what differential privacy limits; and they
enter through the owner's real path (the same featuriser, DP-SGD with clipping, noise,
Poisson sampling and ledger), so the audit tests the mechanism as built rather than a
model of it. The gradient-space canaries of Andrew et al. (ICLR 2024) would need a hook
inside the owner's training, i.e. a second code path; input-space canaries need none.

How they are scored: the way the server, the adversary of the threat model, can. It
sees every owner's update every round; for each canary of owner k it records

* ``loss-drop``: the sum over rounds of how much owner k's update lowered the canary's
  loss (the global model's loss minus the loss after owner k's update), a white-box
  statistic that adds up a trace of the canary across every release; and
* ``fit``: the sum over rounds of minus the canary's loss under owner k's update, i.e.
  how well the owner's models fit it (memorisation); summing over rounds averages out
  the accidental fit of a random canary, which changes from round to round.

A canary unit's score is the sum of its records' scores (``CanaryScorer``, where the
why is).

Each score is then centred on its median within the canaries of the same owner and
label: an owner's data moves the model's bias and its label's direction for all such
canaries alike (label skew, the data's own gradient), which would otherwise rank whole
labels above others. Owners and labels are the auditor's own choices, so the guesses
still depend on the output alone.

The scorer is given texts, labels and owners only: which canaries were included is
never passed to it (audit/one_run.py counts correct guesses at the end).
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fedshield.common.durable import write_bytes_atomic
from fedshield.common.model import ModelSpec, as_tensors
from fedshield.common.simulation_split import CANARY_FORMAT

WORDS_PER_CANARY = 20
# A record of a canary unit adds this many words of its own to the unit's words.
OWN_WORDS_PER_UNIT_RECORD = 4
LETTERS_PER_WORD = 8
SCORES = ("loss-drop", "fit")


@dataclass(frozen=True)
class Canary:
    """One canary: one record, or with a privacy unit one unit of records; one coin."""

    owner: int  # simulated owner (partition id) whose data may carry it
    texts: tuple[str, ...]  # its records, all with ``label``
    label: str
    included: bool


def draw_canaries(
    total: int,
    owners: int,
    classes: tuple[str, ...],
    seed: int | None = None,
    records_per_canary: int = 1,
) -> list[Canary]:
    """``total`` canaries dealt evenly to ``owners``, each included with probability 1/2;
    each canary is ``records_per_canary`` records (a canary unit when more than one).

    ``seed`` None draws from the OS (the default: an audit's coins must be unpredictable
    to the code under test); a seed makes a test reproducible.
    """
    if total < 2:
        raise ValueError(f"--canaries must be >= 2, got {total}")
    if owners < 1 or len(classes) < 2:
        raise ValueError("need at least one owner and two classes")
    if records_per_canary < 1:
        raise ValueError(f"records per canary must be >= 1, got {records_per_canary}")
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    letters = np.array(list(string.ascii_lowercase))

    def words(count: int) -> list[str]:
        return ["".join(w) for w in rng.choice(letters, size=(count, LETTERS_PER_WORD))]

    # A unit's records share its words and its label, each adding a few words of its own
    # (no two records alike): their gradients point nearly the same way, the worst case
    # for a unit, so k records clipped one by one would move an update by nearly kC
    # where the unit may move it by C, and a unit that is not clipped as one shows.
    own = OWN_WORDS_PER_UNIT_RECORD if records_per_canary > 1 else 0
    canaries = []
    for i in range(total):
        shared = words(WORDS_PER_CANARY)
        texts = tuple(" ".join(shared + words(own)) for _ in range(records_per_canary))
        canaries.append(
            Canary(
                owner=i % owners,
                texts=texts,
                label=classes[int(rng.integers(len(classes)))],
                included=bool(rng.random() < 0.5),
            )
        )
    return canaries


def write_canaries(canaries: list[Canary], folder: Path) -> Path:
    """Write every canary with its coin (``canaries.json``, the auditor's record) and the
    included ones' records per owner (``included.json``, read by the simulated owners;
    a canary's records share its unit name, so that an owner with a privacy unit takes
    them as one unit); returns the latter's path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(
        folder / "canaries.json",
        json.dumps({"canaries": [asdict(c) for c in canaries]}, indent=1).encode(),
    )
    owners: dict[str, list[dict]] = {}
    for number, canary in enumerate(canaries):
        if canary.included:
            owners.setdefault(str(canary.owner), []).extend(
                {"text": text, "label": canary.label, "unit": f"canary-{number}"}
                for text in canary.texts
            )
    included = folder / "included.json"
    write_bytes_atomic(included, json.dumps({"format": CANARY_FORMAT, "owners": owners}).encode())
    return included


class CanaryScorer:
    """Scores canaries from what the server receives: one call per accepted update."""

    def __init__(self, spec: ModelSpec, classes: tuple[str, ...], canaries: list[Canary]):
        self.model = spec.build(len(classes))
        self.model.eval()
        # One row per canary record; a canary unit's records are consecutive rows.
        self._canary_of_row = np.repeat(np.arange(len(canaries)), [len(c.texts) for c in canaries])
        owner_of_row = np.array([c.owner for c in canaries], dtype=np.int64)[self._canary_of_row]
        self._rows: dict[int, np.ndarray] = {  # owner -> its canaries' record rows
            owner: np.flatnonzero(owner_of_row == owner) for owner in np.unique(owner_of_row)
        }
        index = {name: i for i, name in enumerate(classes)}
        self._labels = torch.tensor(
            [index[c.label] for c in canaries for _ in c.texts], dtype=torch.long
        )
        self._cells = [
            np.array([i for i, c in enumerate(canaries) if (c.owner, c.label) == cell])
            for cell in sorted({(c.owner, c.label) for c in canaries})
        ]
        texts = [text for c in canaries for text in c.texts]
        self._inputs = as_tensors(spec.encode(texts, torch.device("cpu")))
        self.loss_drop = np.zeros(len(canaries))
        self.fit = np.zeros(len(canaries))
        self.updates_seen = 0

    def _losses(self, arrays, rows: np.ndarray) -> np.ndarray:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        index = torch.from_numpy(rows)
        with torch.no_grad():
            logits = self.model(*(t[index] for t in self._inputs))
            losses = torch.nn.functional.cross_entropy(
                logits.double(), self._labels[index], reduction="none"
            )
        return torch.nan_to_num(losses, nan=1e6, posinf=1e6).numpy()

    def observe(
        self, server_round: int, owner: str, label: str | None, global_arrays, update_arrays
    ) -> None:
        """The server accepted ``update_arrays`` from ``owner`` against ``global_arrays``.

        Simulated owners are named by node id (no keys); the scorer, who plays every owner
        in this simulation, finds an owner's canaries by the label it declared, client-i."""
        prefix = "client-"
        label = label or ""
        if not label.startswith(prefix) or not label[len(prefix) :].isdigit():
            return
        rows = self._rows.get(int(label[len(prefix) :]))
        if rows is None:
            return
        after = self._losses(update_arrays, rows)
        # A canary unit scores the sum of its records' scores. Sound for the one-run
        # bound: the unit has one coin, so it is one canary with one guess, made from the
        # output and its own records, never from a coin (a guess per record would be k
        # guesses on one coin, which Theorem 3.1 does not cover). The sum, because what
        # unit-level DP bounds is how far all of a unit's records move the model together.
        canary = self._canary_of_row[rows]
        np.add.at(self.loss_drop, canary, self._losses(global_arrays, rows) - after)
        np.add.at(self.fit, canary, -after)
        self.updates_seen += 1

    def scores(self) -> dict[str, np.ndarray]:
        """Each score centred on its median within every (owner, label) cell."""
        centred = {"loss-drop": self.loss_drop.copy(), "fit": self.fit.copy()}
        for values in centred.values():
            for rows in self._cells:
                values[rows] -= np.median(values[rows])
        return centred
