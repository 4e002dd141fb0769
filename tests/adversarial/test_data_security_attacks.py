"""Issue 23, data security at the owner: attacks that the owner's code resists.

Three attackers, each with only what it has:
- a hostile server/operator: the plan, the model, the class list, Flower's run config,
  the replies and refusals it gets back;
- another local user, or a stray file: whatever lands in the owner's cache folder under
  the names the owner reads, and key folders or key files others can read;
- a cryptanalyst of the sealed files and pseudonyms (nonces, key ids, associated data,
  small domains, interrupted rotations).
Plus the owner's own data written in forms a careful owner expects caught, and the audit
report on a round run without a policy.

Each test plays the attack against the real code (the real ClientApp with real Flower
messages where a server is the attacker) and asserts what the owner kept and what left.
Attacks that succeeded at the time of writing are not here: they are in the review.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import stat
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context

from fedshield.audit.report import build_report
from fedshield.audit.verify import verify_log
from fedshield.client.ledger import PrivacyLedger
from fedshield.client.owner import resolve_owner, with_desensitised_text
from fedshield.common import desensitised_data, sealed, wire
from fedshield.common.config import RunConfig
from fedshield.common.data import TextDataset, builtin_csv_path, load_dataset
from fedshield.common.desensitise import Desensitiser, _without_overlaps
from fedshield.common.desensitise_policy import (
    DEFAULT_TYPES,
    DesensitisePolicy,
    pseudonym,
)
from fedshield.common.desensitise_policy import (
    key_id as pseudonym_key_id,
)
from fedshield.common.desensitised_data import cache_path, desensitised
from fedshield.common.errors import SealedFileError
from fedshield.common.owner_keys import OwnerKeys, open_owner_keys, rotate_at_rest_key
from tests.support.client_app import PLAN, owner_context, run_train, train_message
from tests.support.planted import IDENTIFIERS, every_value, files_under, found_in, planted_text

VALUES = list(every_value())
ROWS = 150  # every row carries two planted identifiers; 150 rows cycle through every type


def _set_task_identity() -> None:
    """What Flower's runtime sets in a ClientApp process (tests/conftest.py
    ``flower_task_identity``), for the module-scoped round below."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 42, 1


def _reviews(n: int, seed: int) -> pd.DataFrame:
    frame = pd.read_csv(builtin_csv_path())
    frame = frame[frame["source"] == "imdb"].sample(n=n, random_state=seed)
    return frame.reset_index(drop=True)[["text", "label"]]


def _planted_csv(path: Path, n: int = ROWS, seed: int = 5) -> Path:
    frame = _reviews(n, seed)
    frame["text"] = [planted_text(t, row) for row, t in enumerate(frame["text"])]
    frame.to_csv(path, index=False)
    return path


def _owner(home: Path, data: Path) -> Context:
    context = owner_context(data, home / "ledgers")
    context.node_config.update({"key-dir": str(home / "keys"), "cache-dir": str(home / "cache")})
    return context


def _audit(home: Path, kind: str) -> list[dict]:
    log = verify_log(home / "audit" / "audit.jsonl")
    assert log.ok, log.problem
    return [e for e in log.entries if e["type"] == kind]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module")
def default_desensitiser() -> Desensitiser:
    return Desensitiser(DesensitisePolicy())


# --- 1. A hostile server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_round(tmp_path_factory):
    """One real round at a deployed owner whose data holds planted identifiers of every
    default type, while the server's Flower run config tries to switch desensitisation
    off and to point the owner at folders of the server's choosing."""
    _set_task_identity()
    work = tmp_path_factory.mktemp("hostile-run-config")
    data = _planted_csv(work / "owner.csv")
    home, elsewhere = work / "owner", work / "server-chosen"
    (elsewhere / "policy").mkdir(parents=True)
    weak = elsewhere / "policy" / "weak.toml"
    weak.write_text('entities = ["AGE"]\nscore-threshold = 1.0\n')
    context = _owner(home, data)
    context.run_config = {
        "desensitise": False,
        "desensitise-policy": str(weak),
        "key-dir": str(elsewhere / "keys"),
        "cache-dir": str(elsewhere / "cache"),
        "out-dir": str(elsewhere / "out"),
        "ledger-dir": str(elsewhere / "ledgers"),
        "audit-dir": str(elsewhere / "audit"),
    }
    # A run key: the owner keeps its release beside the ledger (sealed) for a re-sent round.
    reply = run_train(context, train_message(PLAN.replace(run_key="a1" * 16)))
    return home, elsewhere, data, reply


def test_flower_run_config_cannot_switch_off_weaken_or_redirect_desensitisation(hostile_round):
    home, elsewhere, _, reply = hostile_round
    assert not reply.has_error(), reply.error
    (start,) = _audit(home, "round-start")
    evidence = start["data"]["desensitisation"]
    assert evidence["policy"]["source"] == "default"
    assert tuple(evidence["policy"]["entities"]) == DEFAULT_TYPES
    assert evidence["policy"]["score-threshold"] == 0.4
    (replaced,) = _audit(home, "text-desensitised")  # after the pre-flight, before training
    assert replaced["data"]["policy-digest"] == evidence["policy"]["digest"]
    # every planted type was replaced
    assert set(replaced["data"]["identifiers-replaced"]) == set(DEFAULT_TYPES)
    # Nothing was written where the server pointed: no keys, no cache, no ledger, no log.
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == [
        Path("policy"),
        Path("policy/weak.toml"),
    ]
    assert sorted(p.name for p in (home / "keys").iterdir()) == ["at-rest.key", "pseudonym.key"]
    assert list((home / "cache").glob("desensitised-*.sealed"))


def test_no_reply_field_carries_the_counts_the_policy_or_its_digest(hostile_round):
    from flwr.common.serde import message_to_proto

    home, _, _, reply = hostile_round
    fields = wire.reply_fields(reply.content)
    assert fields <= set(wire.REPLY_SCHEMA["train"])
    assert not fields & {f"{r}.{k}" for r in ("metrics", "owner") for k in wire.OWNER_ONLY}
    (start,) = _audit(home, "round-start")
    policy = start["data"]["desensitisation"]["policy"]
    sent = message_to_proto(reply).SerializeToString()
    for secret in (policy["digest"], policy["digest"][:12], "desensitis", *DEFAULT_TYPES):
        assert secret.encode() not in sent, secret
    assert found_in_bytes(sent, VALUES) == []


def found_in_bytes(blob: bytes, values: list[str]) -> list[str]:
    return [v for v in values if v.lower().encode() in blob.lower()]


def test_no_planted_identifier_rests_in_the_clear_and_text_derived_files_are_private(
    hostile_round,
):
    home, _, _, _ = hostile_round
    files = files_under(home)
    assert found_in(files, VALUES) == []
    assert _mode(home / "keys") == 0o700
    for key in (home / "keys").iterdir():
        assert _mode(key) == 0o600, key
    assert _mode(home / "cache") == 0o700
    text_derived = [*(home / "cache").iterdir(), *(home / "ledgers").glob("*.releases/*")]
    assert any(p.suffix == ".pt" for p in text_derived)  # the kept release is among them
    for path in text_derived:
        assert path.is_file() and not path.is_symlink(), path
        assert _mode(path) == 0o600, path
        assert path.read_bytes().startswith(sealed.MAGIC), path


def test_the_sealed_cache_holds_the_desensitised_texts_only(hostile_round):
    home, _, data, _ = hostile_round
    keys = open_owner_keys(home / "keys", create=False)
    (path,) = (home / "cache").glob("desensitised-*.sealed")
    stored = json.loads(sealed.read_sealed(path, keys, sealed.DESENSITISED_TEXT))
    assert len(stored["texts"]) == ROWS
    joined = "\n".join(stored["texts"])
    assert [v for v in VALUES if v in joined] == []
    assert joined.count("<EMAIL_ADDRESS>") >= 1 and "<CREDIT_CARD>" in joined


@pytest.mark.parametrize(
    "key, value",
    [
        ("desensitise", False),
        ("desensitise-policy", "/tmp/server-policy.toml"),
        ("key-dir", "/tmp/server-keys"),
        ("cache-dir", "/tmp/server-cache"),
    ],
)
def test_a_plan_naming_the_owners_desensitisation_settings_is_refused_unread(
    tmp_path, flower_task_identity, key, value
):
    data = _planted_csv(tmp_path / "owner.csv", n=40)
    home = tmp_path / "owner"
    message = train_message()
    message.content[wire.CONFIG][key] = value
    reply = run_train(_owner(home, data), message)
    assert reply.has_error() and reply.error.code == wire.ERROR_BAD_DATA_OR_CONFIG
    assert reply.error.reason == f"hospital-a: {wire.REFUSAL_REASONS[reply.error.code]}"
    assert PrivacyLedger(home / "ledgers").entries() == []
    assert not (home / "cache").exists() and not (home / "keys").exists()
    assert not Path(str(value)).exists()
    (refused,) = _audit(home, "round-refused")
    assert key in refused["data"]["reason"]


def test_a_refusal_is_the_same_whether_or_not_the_text_holds_identifiers(
    tmp_path, flower_task_identity
):
    """A non-private plan the owners did not opt in to: the reply (code, reason, fields)
    must not say whether the owner's text held identifiers or how many were replaced."""
    clean = _reviews(ROWS, 5)
    clean["text"] = [f"{t} An ordinary sentence, nothing in it." for t in clean["text"]]
    clean.to_csv(tmp_path / "clean.csv", index=False)
    planted = _planted_csv(tmp_path / "planted.csv")
    replies = {}
    for name, data in (("clean", tmp_path / "clean.csv"), ("planted", planted)):
        replies[name] = run_train(
            _owner(tmp_path / name, data), train_message(PLAN.replace(dp=False))
        )
        assert replies[name].has_error()
    assert replies["clean"].error.code == replies["planted"].error.code == wire.ERROR_POLICY
    assert replies["clean"].error.reason == replies["planted"].error.reason
    # Refused in the pre-flight, before the text was read: neither owner desensitised it,
    # so the refusal took no longer for the text that held identifiers.
    for name in replies:
        assert _audit(tmp_path / name, "text-desensitised") == []


def test_a_class_list_cannot_make_one_data_versions_cache_stand_in_for_another(
    tmp_path, default_desensitiser
):
    """An owner with no class list of its own takes the plan's: two lists that keep the
    same number of rows must each get the desensitised texts of their own rows, also
    when the first version's sealed cache is copied over the second's name."""
    rows = []
    for i in range(30):
        label = "abc"[i % 3]
        rows.append(
            {
                "text": f"row {i} of {label}: mail {IDENTIFIERS['EMAIL_ADDRESS'][i % 4]}",
                "label": label,
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "owner.csv", index=False)
    home = tmp_path / "owner"
    node_config = dict(_owner(home, tmp_path / "owner.csv").node_config)
    # The owner's desensitiser as resolve_owner builds it: its digest names its keys.
    keys = open_owner_keys(home / "keys")
    desensitiser = Desensitiser(DesensitisePolicy(), keys.pseudonym)
    expected, paths = {}, {}
    for classes in (("a", "c"), ("b", "c")):
        raw = load_dataset(tmp_path / "owner.csv", classes=classes, usable_rows_only=True)
        expected[classes] = default_desensitiser.apply(raw.texts)[0]
        paths[classes] = cache_path(home / "cache", raw, desensitiser.digest)
        owner, _ = with_desensitised_text(resolve_owner(node_config, RunConfig(), classes))
        assert owner.dataset.texts == expected[classes]
    assert len(set(paths.values())) == 2 and all(p.is_file() for p in paths.values())
    assert expected[("a", "c")] != expected[("b", "c")]
    shutil.copyfile(paths[("a", "c")], paths[("b", "c")])
    desensitised_data._MEMO.clear()  # a new process: only the disk remains
    owner, _ = with_desensitised_text(resolve_owner(node_config, RunConfig(), ("b", "c")))
    assert owner.dataset.texts == expected[("b", "c")]


# --- 2. Another local user, or a stray file in the owner's folders ------------------------


def _clear_payload(texts: list[str]) -> bytes:
    """What a planted cache would make the owner train on: its texts, not desensitised."""
    return json.dumps({"texts": texts, "counts": {}}).encode()


def _plant(
    kind: str, path: Path, texts: list[str], owner: OwnerKeys, elsewhere: Path
) -> Path | None:
    """Put a file at the owner's cache name; returns a file whose bytes must not change."""
    payload = _clear_payload(texts)
    elsewhere.mkdir(parents=True, exist_ok=True)
    if kind == "sealed-under-the-attackers-own-keys":
        sealed.write_sealed(
            path, payload, open_owner_keys(elsewhere / "keys"), sealed.DESENSITISED_TEXT
        )
    elif kind == "forged-header-with-the-owners-public-key-id":
        blob = sealed.MAGIC + owner.key_id.encode() + os.urandom(12) + payload + os.urandom(16)
        path.write_bytes(blob)
    elif kind == "another-owners-cache-of-the-same-data":
        other = open_owner_keys(elsewhere / "other-owner-keys")
        sealed.write_sealed(path, payload, other, sealed.DESENSITISED_TEXT)
    elif kind == "sealed-under-the-owners-rotated-out-key":
        old = OwnerKeys(at_rest=os.urandom(32), pseudonym=owner.pseudonym)
        sealed.write_sealed(path, payload, old, sealed.DESENSITISED_TEXT)
    elif kind == "owners-key-another-purpose":
        sealed.write_sealed(path, payload, owner, sealed.ENCODED_RECORDS)
    elif kind == "owners-key-another-name":
        other_name = path.with_name("desensitised-" + "0" * 32 + ".sealed")
        sealed.write_sealed(other_name, payload, owner, sealed.DESENSITISED_TEXT)
        os.replace(other_name, path)
    elif kind == "clear-json":
        path.write_bytes(payload)
    elif kind == "symlink-to-a-file-elsewhere":
        target = elsewhere / "attacker.sealed"
        sealed.write_sealed(
            target, payload, open_owner_keys(elsewhere / "keys"), sealed.DESENSITISED_TEXT
        )
        path.symlink_to(target)
        return target
    else:
        raise AssertionError(kind)
    return None


@pytest.fixture(autouse=True)
def fresh_process_memory():
    """Each test as a new process would see it: the disk only, no desensitised memo."""
    desensitised_data._MEMO.clear()
    yield
    desensitised_data._MEMO.clear()


@pytest.mark.parametrize(
    "kind",
    [
        "sealed-under-the-attackers-own-keys",
        "forged-header-with-the-owners-public-key-id",
        "another-owners-cache-of-the-same-data",
        "sealed-under-the-owners-rotated-out-key",
        "owners-key-another-purpose",
        "owners-key-another-name",
        "clear-json",
        "symlink-to-a-file-elsewhere",
    ],
)
def test_a_cache_file_planted_under_the_owners_name_is_never_used(
    tmp_path, default_desensitiser, kind
):
    texts = [planted_text(f"review {i}, fine.", i) for i in range(20)]
    dataset = TextDataset(texts, np.zeros(20, dtype=int), ("0", "1"), "f" * 64, "owner.csv")
    keys = open_owner_keys(tmp_path / "owner" / "keys")
    cache = tmp_path / "owner" / "cache"
    cache.mkdir(mode=0o700)
    path = cache_path(cache, dataset, default_desensitiser.digest)
    target = _plant(kind, path, texts, keys, tmp_path / "attacker")
    before = target.read_bytes() if target else None
    result, counts = desensitised(dataset, default_desensitiser, keys, cache)
    assert result.texts == default_desensitiser.apply(texts)[0]
    assert sum(counts.values()) == 40 and [v for v in VALUES if v in "".join(result.texts)] == []
    # Rebuilt in place: a regular file of the owner's, sealed under its key; a symlink's
    # target is left as it was (the owner never writes through it).
    assert path.is_file() and not path.is_symlink() and _mode(path) == 0o600
    assert (
        json.loads(sealed.read_sealed(path, keys, sealed.DESENSITISED_TEXT))["texts"]
        == result.texts
    )
    if target is not None:
        assert target.read_bytes() == before


@pytest.mark.parametrize(
    "loosen, fix",
    [
        (lambda keys: keys.chmod(0o750), "chmod 700"),
        (lambda keys: keys.chmod(0o701), "chmod 700"),
        (lambda keys: (keys / "at-rest.key").chmod(0o640), "chmod 600"),
        (lambda keys: (keys / "pseudonym.key").chmod(0o604), "chmod 600"),
        (lambda keys: _swap_for_symlink(keys / "at-rest.key"), "symbolic link"),
    ],
    ids=["folder-group", "folder-others", "at-rest-key", "pseudonym-key", "key-symlink"],
)
def test_a_loose_key_folder_or_key_refuses_the_round_with_the_fix(
    tmp_path, flower_task_identity, loosen, fix
):
    data = _planted_csv(tmp_path / "owner.csv", n=40)
    home = tmp_path / "owner"
    open_owner_keys(home / "keys")
    loosen(home / "keys")
    reply = run_train(_owner(home, data))
    assert reply.has_error() and reply.error.code == wire.ERROR_BAD_DATA_OR_CONFIG
    assert PrivacyLedger(home / "ledgers").entries() == []
    assert not (home / "cache").exists()  # refused before any text was read or kept
    (refused,) = _audit(home, "round-refused")
    assert fix in refused["data"]["reason"]


def _swap_for_symlink(key: Path) -> None:
    moved = key.parent.parent / "elsewhere.key"
    os.replace(key, moved)
    key.symlink_to(moved)


# --- 3. Crypto misuse -------------------------------------------------------------------


def test_every_seal_draws_a_fresh_nonce_and_the_header_holds_no_key_material(tmp_path):
    keys = open_owner_keys(tmp_path / "keys")
    header_bytes = len(sealed.MAGIC) + 16 + 12  # magic, key id, nonce
    headers, bodies = set(), set()
    for _ in range(50):
        sealed.write_sealed(tmp_path / "x.sealed", b"same bytes", keys, sealed.DESENSITISED_TEXT)
        blob = (tmp_path / "x.sealed").read_bytes()
        headers.add(blob[:header_bytes])
        bodies.add(blob[header_bytes:])
    assert len(headers) == 50 and len(bodies) == 50
    for header in headers:
        for secret in (keys.at_rest, keys.pseudonym):
            assert secret[:8] not in header and secret.hex()[:16].encode() not in header
    assert keys.key_id != hashlib.sha256(keys.at_rest).hexdigest()[:16]
    assert pseudonym_key_id(keys.pseudonym) != keys.key_id


def test_a_pseudonym_of_a_small_domain_is_not_found_without_the_key(tmp_path):
    """10,000 phone numbers differ only in their last four digits: with the owner's key
    the pseudonym is found by enumeration, with anything public it is not."""
    keys = open_owner_keys(tmp_path / "keys")
    other = open_owner_keys(tmp_path / "other-owner")
    token = pseudonym(keys.pseudonym, "PHONE_NUMBER", "+1 (212) 555-0187")
    mac = token.removeprefix("<PHONE_NUMBER_").removesuffix(">")
    candidates = [f"1212555{n:04d}" for n in range(10_000)]

    def found(key: bytes | None) -> list[str]:
        hits = []
        for value in candidates:
            message = f"PHONE_NUMBER\n{value}".encode()
            digest = (
                hmac.new(key, message, hashlib.sha256)
                if key is not None
                else hashlib.sha256(message)
            ).hexdigest()
            if digest[:12] == mac:
                hits.append(value)
        return hits

    assert found(keys.pseudonym) == ["12125550187"]  # the owner can; the enumeration is right
    public = [None, b"", keys.key_id.encode(), pseudonym_key_id(keys.pseudonym).encode()]
    for key in [*public, other.pseudonym, keys.at_rest]:
        assert found(key) == [], key


def test_a_rotation_interrupted_while_resealing_finishes_and_loses_no_file(tmp_path, monkeypatch):
    from fedshield.cli.keys import client_rotate_key

    key_dir, cache, ledgers = tmp_path / "keys", tmp_path / "cache", tmp_path / "ledgers"
    cache.mkdir(mode=0o700)
    ledgers.mkdir(mode=0o700)
    keys = open_owner_keys(key_dir)
    names = [f"desensitised-{i:032d}.sealed" for i in range(4)]
    for name in names:
        sealed.write_sealed(cache / name, name.encode(), keys, sealed.DESENSITISED_TEXT)
    real = sealed.reseal
    calls = Counter()

    def crash_on_the_third(path, old, new, purpose):
        calls["reseal"] += 1
        if calls["reseal"] == 3:
            raise KeyboardInterrupt  # the power cut
        real(path, old, new, purpose)

    monkeypatch.setattr(sealed, "reseal", crash_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        client_rotate_key(key_dir=key_dir, cache_dir=str(cache), ledger_dir=ledgers)
    assert (key_dir / "at-rest.key.previous").exists()
    monkeypatch.setattr(sealed, "reseal", real)
    client_rotate_key(key_dir=key_dir, cache_dir=str(cache), ledger_dir=ledgers)
    final = open_owner_keys(key_dir, create=False)
    assert final.at_rest != keys.at_rest and final.pseudonym == keys.pseudonym
    assert not (key_dir / "at-rest.key.previous").exists()
    for name in names:
        assert sealed.read_sealed(cache / name, final, sealed.DESENSITISED_TEXT) == name.encode()
        with pytest.raises(SealedFileError):
            sealed.read_sealed(cache / name, keys, sealed.DESENSITISED_TEXT)


def test_a_crash_right_after_saving_the_old_key_rotates_on_the_next_run(tmp_path):
    key_dir = tmp_path / "keys"
    keys = open_owner_keys(key_dir)
    (key_dir / "at-rest.key.previous").write_bytes(keys.at_rest)  # crash before the new key
    (key_dir / "at-rest.key.previous").chmod(0o600)
    old_id, new_id = rotate_at_rest_key(key_dir)
    assert old_id == keys.key_id and new_id != keys.key_id


# --- 4. The owner's own data in forms a careful owner expects caught ----------------------


@pytest.mark.parametrize(
    "text, secret",
    [
        ("Write to MARIA.KELLER@EXAMPLE-CLINIC.ORG today.", "MARIA.KELLER"),
        ("Write to Maria.Keller@Example-Clinic.org today.", "Maria.Keller"),
        ("mail<br />maria.keller@example-clinic.org<br />bye", "maria.keller"),
        ('<a href="mailto:maria.keller@example-clinic.org">me</a>', "maria.keller"),
        ("(maria.keller@example-clinic.org).", "maria.keller"),
        ("Call 212.555.0187 now.", "0187"),
        ("Call +1.212.555.0187 now.", "0187"),
        ("call<br />+44 20 7946 0958<br />", "0958"),
        ("Call +1\u00a0(212)\u00a0555-0187 now.", "0187"),
        ("Card 4111-1111-1111-1111 used.", "1111"),
        ("card:4111111111111111,", "1111"),
        ("card<br />5105 1051 0510 5100<br />", "5100"),
        ("IBAN DE89-3704-0044-0532-0130-00 ok", "3704"),
        ("<p>GB82WEST12345698765432</p>", "5698"),
        ("Born 05.03.2021 in town.", "05.03"),
        ("Seen 2021-03-05T10:22:00Z here", "03-05"),
        ("Born 5th of March, 2021 here", "5th"),
        ("ssn:536-90-4399.", "4399"),
        ("ip=192.168.10.25,", "168"),
        ('<a href="HTTPS://RECORDS.EXAMPLE.COM/patient/8812">x</a>', "8812"),
        ("visit Records.Example.Com/Patient/8812.", "8812"),
        ("a@example.org,212-555-0187;192.168.10.25", "0187"),
    ],
)
def test_identifiers_in_careful_variants_are_replaced(default_desensitiser, text, secret):
    out = default_desensitiser.apply_one(text)
    assert secret not in out, out


@pytest.mark.parametrize(
    "text",
    [
        "https://" + "a" * 300 + ".example.com/" + "b" * 300 + " end",
        "x" * 200 + "@example.org end",
        "records." + "sub." * 40 + "example.com and more",
        "Card 4111 1111 1111 1111 " + "zzz " * 40,
        "zzz " * 40 + "born March 5th, 2021",
        "GB82 WEST 1234 5698 7654 32" + "!" * 100,
        "<br /><br />maria.keller@example-clinic.org<br /><br />" * 3,
        "5 March 2021" + " word" * 30 + " 14 July 1998",
        "www." + "long-name-" * 20 + "example.org",
        "Born 5 March" + " " * 60 + "2021 in town.",
    ],
)
def test_windows_find_what_whole_text_analysis_finds_on_adversarial_ascii(
    default_desensitiser, text
):
    whole = _without_overlaps(default_desensitiser._analyze(text, 0))
    assert default_desensitiser.find(text) == whole


# --- 5. The audit evidence ----------------------------------------------------------------


def test_a_round_without_a_policy_fails_the_report_row(tmp_path, flower_task_identity):
    data = _planted_csv(tmp_path / "owner.csv")  # the count release must clear batch 64
    home = tmp_path / "owner"
    context = _owner(home, data)
    context.node_config["desensitise"] = False
    reply = run_train(context)
    assert not reply.has_error(), reply.error
    (start,) = _audit(home, "round-start")
    assert start["data"]["desensitisation"] is None
    report = build_report([home / "audit" / "audit.jsonl"])
    (row,) = [
        r for r in report["requirements"] if r["name"] == "Data minimisation / desensitisation"
    ]
    assert row["status"] == "fail"
    assert "rounds run without a policy" in row["evidence"]
