"""An owner's records through the model's frozen encoding: cached in memory per process,
and for the pretrained encoder also on the owner's disk, sealed and bounded.

Guarantee: encodings are derived from private text, so they stay with the owner, sealed
under its at-rest key (common/sealed.py) and never in the clear; a cache file that fails
authentication is never used (rebuilt, and the audit log says so); text the owner's
policy has not been through is never encoded; at most ``MAX_ENCODINGS_PER_OWNER`` are
kept per owner, whatever model descriptions or class lists a server sends.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
from pathlib import Path

import numpy as np

from fedshield.client.integrity import rejection_recorder
from fedshield.client.owner import (
    NUM_PARTITIONS,
    PARTITION_ID,
    Owner,
    mark_simulated_owners,
    resolve_owner,
    with_desensitised_text,
)
from fedshield.common.config import RunConfig
from fedshield.common.errors import SealedFileError
from fedshield.common.model import ModelInputs, ModelSpec
from fedshield.common.sealed import ENCODED_RECORDS, read_sealed, write_sealed

_INPUT_CACHE: dict[tuple[str, ModelSpec], ModelInputs] = {}


def owner_inputs(owner: Owner, spec: ModelSpec) -> ModelInputs:
    """The owner's records through the model's frozen encoding, cached.

    In memory per process (a simulation actor lives on across rounds), and for the
    pretrained encoder also on the owner's disk: simulated owners move between actors
    and a deployed owner's tasks are fresh processes, and encoding is the costly part.
    """
    if owner.desensitiser is not None and not owner.dataset.desensitised:
        # Fail closed: text the owner's policy has not been through is never encoded.
        raise RuntimeError("the owner's text was not desensitised before encoding")
    key = (owner.dataset.text_version, spec)
    if key not in _INPUT_CACHE:
        if len(_INPUT_CACHE) >= 16:
            _INPUT_CACHE.pop(next(iter(_INPUT_CACHE)))
        use_disk = owner.cache_dir is not None and spec.encoding_is_costly
        _INPUT_CACHE[key] = (
            encoded_on_disk(owner, spec)
            if use_disk
            else spec.encode(owner.dataset.texts, owner.device)
        )
    return _INPUT_CACHE[key]


# Encodings kept per owner: the server picks the model's description (max-tokens,
# finetune-layers, ...) and, for an owner without its own class list, the classes that
# make its data version; without a bound a hostile server could fill the owner's disk
# with one multi-GB cache per variant. Past this many, the least recently used goes.
MAX_ENCODINGS_PER_OWNER = 3


def encoding_path(owner: Owner, spec: ModelSpec) -> Path:
    # Encodings are derived from private text: they stay with the owner, sealed under its
    # at-rest key (common/sealed.py), keyed by the texts as read (after desensitisation)
    # and the model's public description. The first part of the name is the owner's
    # alone, so the bound counts its own files, not those of owners sharing the folder.
    description = json.dumps(spec.describe(), sort_keys=True)
    mine = hashlib.sha256(f"owner\n{owner.owner_id}".encode()).hexdigest()
    name = hashlib.sha256(f"{owner.dataset.text_version}\n{description}".encode()).hexdigest()
    return owner.cache_dir / f"encoded-{mine[:16]}-{name[:32]}.npz"


def evict_encodings(kept: Path) -> None:
    """Delete this owner's least recently used encodings past MAX_ENCODINGS_PER_OWNER, and
    files named as versions before the bound named theirs (some kept in the clear). Only
    regular files are touched, and nothing here can fail the round: a file another
    process deleted, moved or planted (a folder, a link, another user's) is passed over."""
    try:
        prefix = kept.name.split("-")[1]
        candidates = [
            p
            for p in kept.parent.glob("encoded-*.npz")
            if p.name.count("-") == 1 or p.name.startswith(f"encoded-{prefix}-")
        ]
        dated = []
        for path in candidates:
            try:
                status = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(status.st_mode):
                dated.append((path.name.count("-") == 2, status.st_mtime_ns, path))
        dated.sort(reverse=True)  # this owner's files newest first, then the old-named
        stale = [p for _, _, p in dated[MAX_ENCODINGS_PER_OWNER:] if p != kept]
        stale += [p for mine, _, p in dated[:MAX_ENCODINGS_PER_OWNER] if not mine]
        for path in stale:
            with contextlib.suppress(OSError):
                path.unlink()
    except OSError:  # the folder itself went away or became unreadable: nothing to bound
        return


def prepare_simulated_owner(config: RunConfig, num_clients: int, pid: int) -> int:
    """Fill one simulated owner's sealed caches before round 1: its desensitised texts
    (``resolve_owner`` builds them) and, for the pretrained encoder, its encodings.

    Both take long on CPU and could outlast a round's timeout, and a late first-round
    reply is dropped after its owner was charged; done up front, round 1 only reads.
    Returns ``pid``; the caller's process keeps nothing of the owner.
    """
    mark_simulated_owners()
    spec = ModelSpec.from_config(config)
    owner = resolve_owner({PARTITION_ID: pid, NUM_PARTITIONS: num_clients}, config, None)
    owner, _ = with_desensitised_text(owner)
    if spec.encoding_is_costly and not encoding_path(owner, spec).exists():
        encoded_on_disk(owner, spec)
    return pid


def encoded_on_disk(owner: Owner, spec: ModelSpec) -> ModelInputs:
    """The owner's encodings from its sealed cache, or encoded now and sealed there.

    A cache file that fails authentication (edited, truncated, another owner's, under a
    rotated key, or clear text from an earlier version) is never used: it is rebuilt
    from the owner's data and overwritten. Without keys nothing is kept on disk.
    """
    if owner.keys is None:  # never in the clear: encode every time instead
        return spec.encode(owner.dataset.texts, owner.device)
    path = encoding_path(owner, spec)
    if path.exists():
        try:
            stored_bytes = read_sealed(path, owner.keys, ENCODED_RECORDS)
        except FileNotFoundError:  # evicted by another process since: encoded below
            pass
        except SealedFileError as exc:
            # The reason and the path (a hash, no text) only: then rebuilt below.
            record = rejection_recorder(owner.audit_dir, owner.owner_id, ENCODED_RECORDS)
            record(exc, "rebuilt from the owner's data and overwritten")
        else:
            with np.load(io.BytesIO(stored_bytes)) as stored:
                parts = tuple(stored[f"part{i}"] for i in range(len(stored.files)))
            if all(len(part) == len(owner.dataset) for part in parts):
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)  # recently used: the last to be evicted
                return parts
    parts = spec.encode(owner.dataset.texts, owner.device)
    owner.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"part{i}": p for i, p in enumerate(parts)})
    # Atomic: a concurrent reader (another simulated owner's actor) sees old or new.
    write_sealed(path, buffer.getvalue(), owner.keys, ENCODED_RECORDS)
    evict_encodings(path)
    return parts
