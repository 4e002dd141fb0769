"""The owner registry: the node keys this operator registered, in STATE/owners.json.

Guarantee: every key ``server start`` registered is recorded here with its fingerprint
and, once known, its node id; a key ``server remove-owner`` removed stays recorded as
removed and is never registered again. ``server status`` and ``server remove-owner``
read this file; the ServerApp names owners by it (server/identity.py).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from fedshield.common.durable import write_bytes_atomic
from fedshield.common.errors import ConfigError

OWNERS_FILE = "owners.json"  # in the state folder: the node keys this operator registered
OWNERS_FORMAT = "fedshield-owners/1"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def load_owner_registry(state_dir: Path) -> list[dict]:
    """The node keys ``server start`` registered from this state folder (``OWNERS_FILE``):
    each with "name" (the key file's stem), "key", "fingerprint", "node-id" (None when the
    SuperLink had it already and this folder never learnt its id), "time", "removed"
    (None, or the time and reason of ``server remove-owner``) and, where the operator set
    one, "max-weight" (the most records the owner weighs in an average)."""
    path = Path(state_dir) / OWNERS_FILE
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text())["owners"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: not a fedshield owner registry ({exc}); it is rewritten by "
            "`fedshield server start`: move it aside and register the keys again"
        ) from None


def save_owner_registry(state_dir: Path, owners: list[dict]) -> None:
    body = {"format": OWNERS_FORMAT, "owners": owners}
    write_bytes_atomic(
        Path(state_dir) / OWNERS_FILE, json.dumps(body, indent=2).encode("utf-8"), mode=0o600
    )


def remember_registration(state_dir: Path, key: Path, fingerprint: str, node_id) -> None:
    """Record a registration; a key the SuperLink had already keeps the node id known here."""
    owners = load_owner_registry(state_dir)
    known = next((o for o in owners if o["fingerprint"] == fingerprint), None)
    if known is not None and node_id is None:
        known["key"] = str(key.resolve())
    else:
        owners = [o for o in owners if o["fingerprint"] != fingerprint]
        owners.append(
            {
                "name": key.stem,
                "key": str(key.resolve()),
                "fingerprint": fingerprint,
                "node-id": node_id,
                "time": _now(),
                "removed": None,
            }
        )
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    save_owner_registry(state_dir, owners)


def set_max_weights(state_dir: Path, max_weights: dict[str, int]) -> None:
    """Record the most records each named owner (its key file's stem) may weigh in an
    average (``max-weight``, server/identity.py); the others keep the default."""
    owners = load_owner_registry(state_dir)
    known = {o["name"] for o in owners if not o.get("removed")}
    unknown = sorted(set(max_weights) - known)
    if unknown:
        raise ConfigError(
            f"--max-weight names {unknown}, which are not registered keys here (registered: "
            f"{', '.join(sorted(known)) or 'none'}); use the stem of a --node-key file"
        )
    for owner in owners:
        if owner["name"] in max_weights:
            owner["max-weight"] = int(max_weights[owner["name"]])
    save_owner_registry(state_dir, owners)


def refuse_removed_key(state_dir: Path, key: Path, fingerprint: str) -> None:
    for owner in load_owner_registry(state_dir):
        if owner["fingerprint"] == fingerprint and owner.get("removed"):
            removed = owner["removed"]
            raise ConfigError(
                f"{key} ({fingerprint}) was removed from this federation on {removed['time']} "
                f"({removed['reason']!r}); the SuperLink in {state_dir} keeps a removed key "
                "unusable. To admit the owner again, it makes a new key with `fedshield pki "
                "node NAME` and you pass the new .pub with --node-key"
            )
