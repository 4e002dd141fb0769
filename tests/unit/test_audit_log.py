"""The audit log detects every edit, deletion, insertion, swap and truncation."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedshield.audit.verify import verify_log
from fedshield.common.audit_events import Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.errors import AuditLogError


def write_log(directory, entries: int = 30) -> bytes:
    log = AuditLog(directory / "audit.jsonl", actor="owner-a", checkpoint_every=10)
    for i in range(entries):
        log.append(
            Event.DP_CHARGED,
            **{Field.SERVER_ROUND: i, Field.NOISE_MULTIPLIER: 1.1, Field.EPSILON_AFTER: 0.1 * i},
        )
    log.checkpoint("run-end")
    return (directory / "audit.jsonl").read_bytes()


@pytest.fixture(scope="module")
def real_log(tmp_path_factory) -> bytes:
    return write_log(tmp_path_factory.mktemp("audit"))


def check(tmp_path, content: bytes):
    path = tmp_path / "tampered.jsonl"
    path.write_bytes(content)
    return verify_log(path)


def test_an_untouched_log_verifies(tmp_path, real_log):
    result = check(tmp_path, real_log)
    assert result.ok, result.problem
    assert result.entries[0]["type"] == "log-start"
    assert [e["type"] for e in result.entries].count("checkpoint") == 4  # 3 periodic + run-end


def test_the_writer_fsyncs_and_continues_the_chain_after_reopening(tmp_path):
    AuditLog(tmp_path / "a.jsonl", "srv").append(Event.RUN_START, config={"num-rounds": 3})
    log = AuditLog(tmp_path / "a.jsonl", "srv")
    log.append(Event.ROUND_EVALUATED, **{Field.SERVER_ROUND: 1})
    log.checkpoint("run-end")
    result = verify_log(tmp_path / "a.jsonl")
    assert result.ok, result.problem
    assert [e["seq"] for e in result.entries] == [0, 1, 2, 3]


def test_a_partial_last_line_is_reported_and_blocks_further_writes(tmp_path, real_log):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(real_log + b'{"seq": 99, "ts"')
    result = verify_log(path)
    assert not result.ok and "incomplete last line" in result.problem
    partial_line = real_log.count(b"\n") + 1
    assert result.problem.startswith(f"line {partial_line}:")
    with pytest.raises(AuditLogError, match="last line is incomplete"):
        AuditLog(path, "owner-a").append(Event.ROUND_NOT_AGGREGATED)


def test_a_pinned_key_rejects_a_log_rewritten_with_another_key(tmp_path, real_log):
    key = json.loads(real_log.split(b"\n")[0])["data"]["public-key"]
    assert verify_log_bytes(tmp_path, real_log, key).ok
    forged = write_log(tmp_path / "forger")
    result = verify_log_bytes(tmp_path, forged, key)
    assert not result.ok and "is not the pinned key" in result.problem


def verify_log_bytes(tmp_path, content: bytes, key: str):
    path = tmp_path / "pinned.jsonl"
    path.write_bytes(content)
    return verify_log(path, key)


LINES = st.integers(min_value=0, max_value=10_000)
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(line=LINES, position=st.integers(min_value=0, max_value=10_000), byte=st.integers(0, 255))
def test_any_byte_edit_is_detected(tmp_path, real_log, line, position, byte):
    lines = real_log.split(b"\n")[:-1]
    i = line % len(lines)
    target = bytearray(lines[i])
    j = position % len(target)
    if target[j] == byte:
        byte = (byte + 1) % 256
    target[j] = byte
    lines[i] = bytes(target)
    result = check(tmp_path, b"\n".join(lines) + b"\n")
    assert not result.ok


@FAST
@given(line=LINES)
def test_any_deletion_is_detected(tmp_path, real_log, line):
    lines = real_log.split(b"\n")[:-1]
    del lines[line % len(lines)]
    assert not check(tmp_path, b"\n".join(lines) + b"\n").ok


@FAST
@given(source=LINES, where=LINES)
def test_any_insertion_is_detected(tmp_path, real_log, source, where):
    lines = real_log.split(b"\n")[:-1]
    lines.insert(where % (len(lines) + 1), lines[source % len(lines)])
    assert not check(tmp_path, b"\n".join(lines) + b"\n").ok


@FAST
@given(a=LINES, b=LINES)
def test_any_swap_is_detected(tmp_path, real_log, a, b):
    lines = real_log.split(b"\n")[:-1]
    i, j = a % len(lines), b % len(lines)
    if i == j:
        j = (i + 1) % len(lines)
    lines[i], lines[j] = lines[j], lines[i]
    assert not check(tmp_path, b"\n".join(lines) + b"\n").ok


@FAST
@given(cut=st.integers(min_value=0, max_value=1_000_000))
def test_truncation_is_detected_unless_it_ends_on_an_earlier_checkpoint(tmp_path, real_log, cut):
    # The one cut the log alone cannot reveal: right after an earlier signed checkpoint
    # (the log then looks like a shorter, closed log). The server's record of each
    # owner's audit head catches that case (see the audit report).
    cut = cut % len(real_log)
    lines = real_log.split(b"\n")[:-1]
    checkpoint_ends = set()
    offset = 0
    for line in lines:
        offset += len(line) + 1
        if json.loads(line)["type"] == "checkpoint":
            checkpoint_ends.add(offset)
    result = check(tmp_path, real_log[:cut])
    if cut in checkpoint_ends:
        assert result.ok
    else:
        assert not result.ok


def test_processes_starting_at_once_agree_on_one_signing_key(tmp_path):
    """Two processes of one owner starting together (a re-sent round) once raised
    FileExistsError in one of them; now the second reads the first's whole key."""
    from concurrent.futures import ThreadPoolExecutor

    from fedshield.common.audit_log import load_or_create_signing_key, public_key_hex

    path = tmp_path / "audit" / "audit-key.pem"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_or_create_signing_key(path), range(16)))
    assert len({public_key_hex(k.public_key()) for k in keys}) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["audit-key.pem", "audit-key.pub"]
