"""An owner's records after its desensitisation policy, computed once and kept sealed.

Guarantee: ``desensitised`` returns the data set with every text through the owner's
``Desensitiser`` and the counts of what was replaced, per entity type; the result is
kept in the owner's cache folder sealed under its at-rest key (``common/sealed.py``), so
a round reads it instead of analysing every text again, and a cache file that was
edited, truncated or copied from another owner is rebuilt, never used. The record count
and labels are unchanged (desensitisation maps each record to one record: add/remove
neighbours stay neighbours), so the data version and its count release are the file's;
``TextDataset.text_version`` names the text itself, for every cache of encodings.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from fedshield.common.data import TextDataset
from fedshield.common.desensitise import Desensitiser, desensitiser_for
from fedshield.common.desensitise_policy import DesensitisePolicy
from fedshield.common.errors import SealedFileError
from fedshield.common.owner_keys import OwnerKeys, open_owner_keys
from fedshield.common.sealed import DESENSITISED_TEXT, read_sealed, write_sealed

# In memory too: a deployed owner's tasks are forked from a process that desensitised
# at start (client/executor.py), and a simulation actor plays its owners round after round.
_MEMO: dict[tuple[str, int, str], dict] = {}


def cache_path(cache_dir: Path, dataset: TextDataset, digest: str) -> Path:
    name = hashlib.sha256(f"{dataset.fingerprint}\n{digest}".encode()).hexdigest()
    return Path(cache_dir).expanduser() / f"desensitised-{name[:32]}.sealed"


def desensitised(
    dataset: TextDataset,
    desensitiser: Desensitiser,
    keys: OwnerKeys | None = None,
    cache_dir: Path | None = None,
    on_rejected: Callable[[SealedFileError, str], None] | None = None,
) -> tuple[TextDataset, dict[str, int]]:
    """``dataset`` desensitised, and the count per entity type of what was replaced.

    A cached result that fails authentication is rebuilt; ``on_rejected(error, action)``
    hears of it (the owner records it in its audit log)."""
    memo_key = (dataset.fingerprint, len(dataset), desensitiser.digest)
    stored = _MEMO.get(memo_key)
    path = cache_path(cache_dir, dataset, desensitiser.digest) if cache_dir and keys else None
    if stored is None and path is not None:
        stored = _read(path, keys, len(dataset), on_rejected)
    if stored is None:
        texts, counts = desensitiser.apply(dataset.texts)
        stored = {"texts": texts, "counts": dict(sorted(counts.items()))}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_sealed(path, json.dumps(stored).encode("utf-8"), keys, DESENSITISED_TEXT)
    if len(_MEMO) >= 16:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[memo_key] = stored
    result = replace(dataset, texts=stored["texts"], desensitised=desensitiser.digest)
    return result, Counter(stored["counts"])


def _read(path: Path, keys: OwnerKeys, records: int, on_rejected=None) -> dict | None:
    """The cached result, or None: absent, failing authentication, or for other records."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(read_sealed(path, keys, DESENSITISED_TEXT))
    except SealedFileError as error:
        if on_rejected is not None:
            on_rejected(error, "rebuilt from the owner's data and overwritten")
        return None  # rebuilt and overwritten by the caller, never used
    except ValueError:
        return None
    return stored if len(stored.get("texts", ())) == records else None


def local_desensitiser(enabled: bool, policy_path: str, key_dir: Path) -> Desensitiser | None:
    """The owner's policy for ``data check``, ``predict`` and ``evaluate`` on its machine,
    with its existing pseudonym key: never a new one, whose pseudonyms would not match
    the ones training saw."""
    if not enabled:
        return None
    policy = DesensitisePolicy.from_file(policy_path) if policy_path else DesensitisePolicy()
    keys = open_owner_keys(Path(key_dir).expanduser(), create=False) if policy.needs_key else None
    return desensitiser_for(True, policy_path, keys.pseudonym if keys else None)
