"""The desensitisation evidence in owners' logs: which policy ran, for which rounds.

Guarantee: ``desensitisation_evidence`` reads every owner's ``round-start`` entries (the
owner writes the policy in force into each, before training) and says, per owner, which
policies ran (entity types, operators, recognizers, library versions, digest) and which
rounds ran without one. The counts of what was replaced stay in the owners' logs: they
are exact functions of the owners' records, so the report names none of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fedshield.audit.verify import Verification
from fedshield.common.audit_events import Event, Field
from fedshield.common.desensitise_policy import DEFAULT_TYPES


@dataclass
class OwnerDesensitisation:
    owner: str  # the log's folder name: the owner's label as its log is filed
    rounds: int = 0
    rounds_without_policy: list[int] = field(default_factory=list)
    policies: dict[str, dict] = field(default_factory=dict)  # digest -> policy

    @property
    def complete(self) -> bool:
        return self.rounds > 0 and not self.rounds_without_policy

    def describe(self) -> str:
        if not self.policies:
            return f"{self.owner}: no policy in {self.rounds} rounds"
        shown = []
        for digest, policy in self.policies.items():
            operators = Counter(policy.get("operators", {}).values())
            versions = policy.get("versions", {})
            left_out = [t for t in DEFAULT_TYPES if t not in policy.get("entities", [])]
            shown.append(
                f"{len(policy.get('entities', []))} types "
                f"({', '.join(f'{op} x{n}' for op, n in sorted(operators.items()))}), "
                f"{len(policy.get('recognizers', []))} recognizers, score threshold "
                f"{policy.get('score-threshold', '?')}"
                + (f", DEFAULT TYPES LEFT OUT: {left_out}" if left_out else "")
                + (f", NER model {policy['ner-model']}" if policy.get("ner-model") else "")
                + f", presidio-analyzer {versions.get('presidio-analyzer', '?')}, "
                f"digest {digest[:12]}"
            )
        missing = (
            f"; rounds without a policy: {self.rounds_without_policy[:5]}"
            if self.rounds_without_policy
            else ""
        )
        return f"{self.owner}: {self.rounds} rounds; {'; '.join(shown)}{missing}"


def desensitisation_evidence(owner_logs: list[Verification]) -> list[OwnerDesensitisation]:
    found = []
    for log in owner_logs:
        record = OwnerDesensitisation(owner=log.path.parent.name)
        for entry in log.entries:
            if entry["type"] != Event.ROUND_START:
                continue
            record.rounds += 1
            evidence = entry["data"].get(Field.DESENSITISATION)
            policy = evidence.get("policy") if isinstance(evidence, dict) else None
            if not isinstance(policy, dict) or not policy.get("entities"):
                record.rounds_without_policy.append(entry["data"].get(Field.SERVER_ROUND))
                continue
            record.policies.setdefault(str(policy.get("digest", "")), policy)
        if record.rounds:
            found.append(record)
    return found
