"""How long the server waits for a round's replies when the plan leaves it to the data.

``round-timeout-s = 0`` (the default) means: fit the wait to what the owners take. The
server cannot know an owner's data size (it is private), so it learns from the replies:

- the first round of a process (a start or a resume) gets a start-up allowance, because
  it includes every owner's first read, featurisation or encoding of its data: 600 s for
  the hashed model, 3 h for MiniLM (encoding on CPU ran at 15-50 records/s on 2 cores,
  docs/BENCHMARKS.md; 3 h covers about 160,000 records at 256 tokens);
- every later round waits ``FACTOR`` times the slowest reply seen since, at least
  ``FLOOR_S`` and at most the allowance. The first round's time counts only until a later
  round is seen, since it includes the one-off encoding. Only train batches teach it
  (an evaluate answer takes far less), and a batch with no reply teaches nothing.

A round learns from its slowest reply received, so one owner that never answers costs
each round at most that wait, not the allowance; a fast owner cannot shrink the wait
for the others, since the slowest reply counts.

An owner that misses the wait has its update dropped and is named on the operator's
console and in ``metrics.json`` (``late``). A positive ``round-timeout-s`` is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FACTOR = 5.0
FLOOR_S = 120.0
HASHED_START_S = 600.0
MINILM_START_S = 3 * 3600.0


@dataclass
class RoundTimeouts:
    """The wait for each round's replies: fixed, or learnt from the replies so far."""

    fixed_s: float  # the plan's round-timeout-s; 0 = learn
    start_s: float  # the first round's allowance
    first_round_s: float | None = None
    slowest_later_s: float | None = None
    used: list[float] = field(default_factory=list)
    _reported: int = 0  # how many of ``used`` a round's entry has already shown

    @classmethod
    def for_plan(cls, round_timeout_s: float, model: str) -> RoundTimeouts:
        return cls(
            fixed_s=round_timeout_s,
            start_s=MINILM_START_S if model == "minilm" else HASHED_START_S,
        )

    def next_timeout_s(self) -> float:
        """The wait for the next batch of messages (a train or an evaluate round)."""
        if self.fixed_s > 0:
            seconds = self.fixed_s
        elif self.first_round_s is None:
            seconds = self.start_s
        else:
            seen = self.slowest_later_s if self.slowest_later_s is not None else self.first_round_s
            seconds = min(self.start_s, max(FLOOR_S, FACTOR * seen))
        self.used.append(seconds)
        return seconds

    def longest_wait_since_last_asked(self) -> float | None:
        """The longest wait used since the previous call (one round's entry), or None."""
        waits, self._reported = self.used[self._reported :], len(self.used)
        return max(waits, default=None)

    def observe(self, seconds_to_last_reply: float, replied: bool) -> None:
        """Learn from a finished train wait: the time to its slowest reply received."""
        if not replied:
            return
        if self.first_round_s is None:
            self.first_round_s = seconds_to_last_reply
        else:
            self.slowest_later_s = max(self.slowest_later_s or 0.0, seconds_to_last_reply)

    def describe(self) -> str:
        if self.fixed_s > 0:
            return f"{self.fixed_s:g} s (round-timeout-s)"
        return (
            f"learnt: first round {self.start_s:g} s, then {FACTOR:g} x the slowest round "
            f"(at least {FLOOR_S:g} s, at most {self.start_s:g} s)"
        )
