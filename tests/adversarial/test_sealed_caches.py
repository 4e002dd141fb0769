"""Encryption at rest (issue 23, part 4) against someone who can write the owner's files:
an encoding cache that was edited, or copied in from another owner's folder, is rebuilt
from the owner's own data, never used; a kept release that was edited is never re-sent.
What is on disk never holds the owner's text or its encodings in the clear. Each rejected
file is an entry of the owner's audit log: its name, purpose and why, no content."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
import torch

from fedshield.audit.verify import verify_log
from fedshield.client import encoding_cache
from fedshield.client import owner as owner_module
from fedshield.client.ledger import KIND_TRAIN, PrivacyLedger
from fedshield.common import desensitised_data, wire
from fedshield.common.data import load_dataset
from fedshield.common.desensitise import desensitiser_for
from fedshield.common.desensitised_data import cache_path
from fedshield.common.model import ModelSpec
from fedshield.common.owner_keys import open_owner_keys
from fedshield.common.sealed import (
    DESENSITISED_TEXT,
    ENCODED_RECORDS,
    RELEASED_UPDATE,
    read_sealed,
    write_sealed,
)
from fedshield.common.splits import take
from tests.support.client_app import PLAN, owner_context, run_train, train_message

# The cheap encoder: encoded_on_disk caches whatever spec it is given, and the hashed
# featuriser takes milliseconds where MiniLM takes minutes.
SPEC = ModelSpec()


def make_owner(tmp_path, name: str) -> owner_module.Owner:
    return owner_module.Owner(
        owner_id=name,
        dataset=take(load_dataset("rotten-tomatoes"), 20, seed=0),
        ledger=None,
        device=torch.device("cpu"),
        audit_dir=tmp_path / name / "audit",
        cache_dir=tmp_path / name / "cache",
        keys=open_owner_keys(tmp_path / name / "keys"),
    )


def poisoned(owner: owner_module.Owner) -> bytes:
    """An npz of the right shape that a real encoding never equals."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, part0=np.full((len(owner.dataset), SPEC.featurizer.out_dim), 7.0, "f4"))
    return buffer.getvalue()


@pytest.fixture()
def encode_calls(monkeypatch):
    calls = []
    real = ModelSpec.encode

    def counting(self, texts, device):
        calls.append(len(texts))
        return real(self, texts, device)

    monkeypatch.setattr(ModelSpec, "encode", counting)
    return calls


def rejections(audit_dir) -> list[dict]:
    """The owner's ``sealed-file-rejected`` entries (its log verified first)."""
    log = verify_log(audit_dir / "audit.jsonl")
    return [e["data"] for e in log.entries if e["type"] == "sealed-file-rejected"]


def assert_rebuilt(owner, expected, encode_calls) -> None:
    path = encoding_cache.encoding_path(owner, SPEC)
    got = encoding_cache.encoded_on_disk(owner, SPEC)
    assert encode_calls == [len(owner.dataset)], "the bad cache was used, not rebuilt"
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    read_sealed(path, owner.keys, ENCODED_RECORDS)  # overwritten, sealed under its own key
    (entry,) = rejections(owner.audit_dir)
    assert entry["file"] == path.name and entry["purpose"] == ENCODED_RECORDS
    assert entry["reason"] and entry["action"].startswith("rebuilt")


def test_the_cache_holds_no_encoding_in_the_clear(tmp_path):
    owner = make_owner(tmp_path, "a")
    (parts,) = encoding_cache.encoded_on_disk(owner, SPEC)
    stored = encoding_cache.encoding_path(owner, SPEC).read_bytes()
    assert not stored.startswith(b"PK")  # not a zip (npz) any more
    assert parts.astype("f4").tobytes()[:64] not in stored


@pytest.mark.parametrize("damage", ["flip", "truncate", "plaintext-npz"])
def test_a_tampered_cache_is_rebuilt_never_used(tmp_path, encode_calls, damage):
    owner = make_owner(tmp_path, "a")
    expected = encoding_cache.encoded_on_disk(owner, SPEC)
    path = encoding_cache.encoding_path(owner, SPEC)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-20] ^= 0x40
    elif damage == "truncate":
        del data[len(data) // 2 :]
    else:  # what an attacker (or an earlier version) leaves in the clear
        data = bytearray(poisoned(owner))
    path.write_bytes(bytes(data))
    encode_calls.clear()
    assert_rebuilt(owner, expected, encode_calls)


def test_a_cache_copied_from_another_owner_is_rebuilt_never_used(tmp_path, encode_calls):
    mine, theirs = make_owner(tmp_path, "a"), make_owner(tmp_path, "b")
    expected = encoding_cache.encoded_on_disk(mine, SPEC)
    # Another owner's well-formed cache, sealed under its own key, for the same data
    # version and model, copied in under this owner's file name.
    foreign = encoding_cache.encoding_path(theirs, SPEC)
    foreign.parent.mkdir(parents=True, mode=0o700)
    write_sealed(foreign, poisoned(theirs), theirs.keys, ENCODED_RECORDS)
    path = encoding_cache.encoding_path(mine, SPEC)
    path.write_bytes(foreign.read_bytes())
    encode_calls.clear()
    assert_rebuilt(mine, expected, encode_calls)


def test_a_server_varying_the_model_cannot_fill_the_owners_disk(tmp_path, encode_calls):
    """Each model description or class list the server picks is one more encoding of the
    owner's data: past MAX_ENCODINGS_PER_OWNER the least recently used is deleted, so a
    hostile server sending a new max-tokens or class list every run holds at most that
    many on the owner's disk. Another owner's encodings in the same folder and the one in
    use are kept; files named as before the bound (some in the clear) are deleted; a
    folder planted under an encoding's name is passed over, never a crash."""
    mine = make_owner(tmp_path, "a")
    theirs = dataclasses.replace(
        make_owner(tmp_path, "b"),
        dataset=take(load_dataset("rotten-tomatoes"), 20, seed=1),
        cache_dir=mine.cache_dir,
    )
    encoding_cache.encoded_on_disk(theirs, SPEC)
    legacy = mine.cache_dir / ("encoded-" + "0" * 32 + ".npz")
    legacy.write_bytes(poisoned(mine))
    planted = [
        mine.cache_dir / "encoded-x.npz",
        encoding_cache.encoding_path(mine, SPEC).with_name(
            encoding_cache.encoding_path(mine, SPEC).name[:25] + "z" * 32 + ".npz"
        ),
    ]
    for folder in planted:
        folder.mkdir()
        os.utime(folder, (0, 0))  # the oldest: first in line for eviction
    specs = [
        dataclasses.replace(SPEC, featurizer=dataclasses.replace(SPEC.featurizer, out_dim=d))
        for d in (64, 128, 256, 512)
    ]
    # another data version: the same texts under a class list the server chose
    relabelled = dataclasses.replace(
        mine, dataset=dataclasses.replace(mine.dataset, fingerprint="other classes")
    )
    encoding_cache.encoded_on_disk(mine, specs[0])
    variants = [(mine, s) for s in specs[1:]] + [(relabelled, s) for s in specs]
    for owner, spec in variants:  # (a pause between runs: file times are a few ms coarse)
        time.sleep(0.02)
        encoding_cache.encoded_on_disk(owner, spec)
        time.sleep(0.02)
        encoding_cache.encoded_on_disk(mine, specs[0])  # in use every run: kept
    files = {p.name for p in mine.cache_dir.glob("encoded-*.npz") if p.is_file()}
    everything = {encoding_cache.encoding_path(o, s).name for o, s in variants} | {
        encoding_cache.encoding_path(mine, specs[0]).name
    }
    mine_kept = everything & files
    assert len(mine_kept) == encoding_cache.MAX_ENCODINGS_PER_OWNER
    assert encoding_cache.encoding_path(mine, specs[0]).name in mine_kept
    assert encoding_cache.encoding_path(relabelled, specs[-1]).name in mine_kept
    theirs_name = encoding_cache.encoding_path(theirs, SPEC).name
    assert not legacy.exists() and files == mine_kept | {theirs_name}  # theirs is kept
    assert all(folder.is_dir() for folder in planted)
    encode_calls.clear()
    encoding_cache.encoded_on_disk(mine, specs[0])  # still read from the disk
    assert encode_calls == []


def test_without_keys_nothing_is_written_to_disk(tmp_path):
    owner = make_owner(tmp_path, "a")
    keyless = owner_module.Owner(**{**owner.__dict__, "keys": None})
    encoding_cache.encoded_on_disk(keyless, SPEC)
    assert not owner.cache_dir.exists()


@pytest.mark.usefixtures("flower_task_identity")
def test_a_tampered_release_is_not_re_sent(owner_csv, tmp_path):
    """A re-sent round is answered from the kept release, at no new cost; an edited
    release is never sent: the round trains again and is charged as new."""
    context = owner_context(owner_csv, tmp_path / "ledgers")
    context.node_config.update(
        {"key-dir": str(tmp_path / "keys"), "cache-dir": str(tmp_path / "cache")}
    )
    plan = PLAN.replace(run_key="resumed-run")

    def resent():
        torch.manual_seed(0)  # the same global model each time the round is sent
        return run_train(context, train_message(plan))

    def trained() -> int:
        return sum(e.kind == KIND_TRAIN for e in PrivacyLedger(tmp_path / "ledgers").entries())

    def update(reply) -> str:
        assert not reply.has_error(), reply.error
        return wire.arrays_digest(reply.content[wire.ARRAYS])[0]

    first = update(resent())
    assert update(resent()) == first and trained() == 1  # re-sent, not re-trained

    (release,) = (tmp_path / "ledgers").glob("*.releases/*.pt")
    data = bytearray(release.read_bytes())
    data[-1] ^= 0x01
    release.write_bytes(bytes(data))
    assert update(resent()) != first  # trained again (fresh noise), the bad file not sent
    assert trained() == 2  # and charged as new
    (entry,) = rejections(tmp_path / "audit")
    assert entry["file"] == release.name and entry["purpose"] == RELEASED_UPDATE
    assert "fails authentication" in entry["reason"] and "charged as new" in entry["action"]


def test_a_tampered_desensitised_text_cache_is_rebuilt_and_recorded(tmp_path):
    bare = make_owner(tmp_path, "a")
    policy = desensitiser_for(True, "", bare.keys.pseudonym)
    owner = dataclasses.replace(bare, desensitiser=policy)
    first, _ = owner_module.with_desensitised_text(owner)
    path = cache_path(owner.cache_dir, owner.dataset, policy.digest)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    desensitised_data._MEMO.clear()  # a fresh process: only the disk remembers
    again, _ = owner_module.with_desensitised_text(owner)
    assert again.dataset.texts == first.dataset.texts
    read_sealed(path, owner.keys, DESENSITISED_TEXT)  # rebuilt under the owner's key
    (entry,) = rejections(owner.audit_dir)
    assert entry["file"] == path.name and entry["purpose"] == DESENSITISED_TEXT
    assert not any(text in str(entry) for text in owner.dataset.texts)
