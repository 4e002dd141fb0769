"""The owner's keys (common/owner_keys.py) and `fedshield client rotate-key`: private on
disk, refused when others can read them, one key however many processes start at once,
and a rotation that re-seals every file while the pseudonym key stays."""

from __future__ import annotations

import stat
import threading

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord
from typer.testing import CliRunner

from fedshield.cli.app import app
from fedshield.client.releases import ReleasedUpdates
from fedshield.common import owner_keys
from fedshield.common.errors import ConfigError, SealedFileError
from fedshield.common.owner_keys import open_owner_keys, rotate_at_rest_key
from fedshield.common.sealed import DESENSITISED_TEXT, ENCODED_RECORDS, read_sealed, write_sealed


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_created_private_on_first_use_and_read_back_after(tmp_path):
    key_dir = tmp_path / "home" / "keys"
    keys = open_owner_keys(key_dir)
    assert mode(key_dir) == 0o700
    assert {p.name for p in key_dir.iterdir()} == {"at-rest.key", "pseudonym.key"}
    assert all(mode(p) == 0o600 for p in key_dir.iterdir())
    assert len(keys.at_rest) == len(keys.pseudonym) == 32 and keys.at_rest != keys.pseudonym
    assert open_owner_keys(key_dir) == keys
    assert len(keys.key_id) == 16 and keys.key_id not in repr(keys.at_rest)
    assert keys.at_rest.hex() not in repr(keys)


def test_a_missing_key_folder_is_refused_when_not_asked_to_create(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        open_owner_keys(tmp_path / "nowhere", create=False)


@pytest.mark.parametrize("loose", [0o755, 0o750, 0o701])
def test_a_key_folder_others_can_enter_is_refused_with_the_fix(tmp_path, loose):
    key_dir = tmp_path / "keys"
    open_owner_keys(key_dir)
    key_dir.chmod(loose)
    with pytest.raises(ConfigError) as refused:
        open_owner_keys(key_dir)
    assert f"chmod 700 {key_dir}" in str(refused.value) and oct(loose) in str(refused.value)


@pytest.mark.parametrize("name", ["at-rest.key", "pseudonym.key"])
@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_is_refused_with_the_fix(tmp_path, name, loose):
    key_dir = tmp_path / "keys"
    open_owner_keys(key_dir)
    (key_dir / name).chmod(loose)
    with pytest.raises(ConfigError) as refused:
        open_owner_keys(key_dir)
    assert f"chmod 600 {key_dir / name}" in str(refused.value)


@pytest.mark.parametrize("size", [0, 16, 33])
def test_a_key_of_the_wrong_length_is_refused(tmp_path, size):
    key_dir = tmp_path / "keys"
    open_owner_keys(key_dir)
    (key_dir / "at-rest.key").write_bytes(b"k" * size)
    with pytest.raises(ConfigError, match="not 32"):
        open_owner_keys(key_dir)


def test_the_key_folder_is_checked_at_client_start(tmp_path):
    from fedshield.client.node_settings import SuperNodeSettings, check_private_folders
    from fedshield.common.config import OwnerConfig

    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o755)
    key_dir.chmod(0o755)
    owner = OwnerConfig.from_options(
        data_path=tmp_path / "d.csv", epsilon_budget=3.0, cache_dir="", key_dir=str(key_dir)
    )
    settings = SuperNodeSettings(superlink="127.0.0.1:9092", ca=None, auth_key=None, owner=owner)
    with pytest.raises(ConfigError, match=f"--key-dir {key_dir}: .*chmod 700 {key_dir}"):
        check_private_folders(settings)


def test_processes_starting_together_keep_one_key(tmp_path):
    key_dir = tmp_path / "keys"
    results, start = [], threading.Barrier(8)

    def first_start():
        start.wait()
        results.append(open_owner_keys(key_dir))

    threads = [threading.Thread(target=first_start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert sorted(p.name for p in key_dir.iterdir()) == ["at-rest.key", "pseudonym.key"]


def test_rotation_changes_the_at_rest_key_and_keeps_the_pseudonym_key(tmp_path):
    key_dir = tmp_path / "keys"
    before = open_owner_keys(key_dir)
    old_id, new_id = rotate_at_rest_key(key_dir)
    after = open_owner_keys(key_dir)
    assert (old_id, new_id) == (before.key_id, after.key_id) and old_id != new_id
    assert after.pseudonym == before.pseudonym and after.at_rest != before.at_rest
    assert owner_keys.open_previous_keys(key_dir).at_rest == before.at_rest
    assert mode(key_dir / "at-rest.key") == mode(key_dir / "at-rest.key.previous") == 0o600
    # Interrupted before re-sealing: running again resumes, never loses the old key.
    assert rotate_at_rest_key(key_dir) == (old_id, new_id)
    owner_keys.finish_rotation(key_dir)
    assert owner_keys.open_previous_keys(key_dir) is None


def test_a_crash_between_saving_the_old_key_and_writing_the_new_one_still_rotates(tmp_path):
    key_dir = tmp_path / "keys"
    before = open_owner_keys(key_dir)
    (key_dir / "at-rest.key.previous").write_bytes(before.at_rest)
    (key_dir / "at-rest.key.previous").chmod(0o600)
    old_id, new_id = rotate_at_rest_key(key_dir)
    assert old_id == before.key_id != new_id == open_owner_keys(key_dir).key_id


def test_rotate_key_reseals_the_cache_and_the_kept_releases(tmp_path):
    key_dir, cache, ledgers = tmp_path / "keys", tmp_path / "cache", tmp_path / "ledgers"
    old = open_owner_keys(key_dir)
    cache.mkdir(mode=0o700)
    cached = cache / "encoded-0123.npz"
    write_sealed(cached, b"encodings", old, ENCODED_RECORDS)
    texts = cache / "desensitised-0123.sealed"
    write_sealed(texts, b"[PERSON] was admitted", old, DESENSITISED_TEXT)
    releases = ReleasedUpdates(ledgers, "f" * 64, old)
    arrays = ArrayRecord({"w": torch.ones(3)})
    releases.remember("run", 1, "g" * 64, arrays, MetricRecord({"noise-multiplier": 1.0}), "")
    clear = cache / "encoded-old.npz"
    clear.write_bytes(b"clear text from before encryption at rest")

    args = ["client", "rotate-key", "--key-dir", str(key_dir), "--cache-dir", str(cache)]
    result = CliRunner().invoke(app, [*args, "--ledger-dir", str(ledgers)])
    assert result.exit_code == 0, result.output
    new = open_owner_keys(key_dir)
    assert new.key_id != old.key_id and new.pseudonym == old.pseudonym
    assert f"{old.key_id} -> {new.key_id}" in result.output
    assert "re-sealed 3 file(s); 0 already" in result.output and str(clear) in result.output
    assert not (key_dir / "at-rest.key.previous").exists()

    assert read_sealed(cached, new, ENCODED_RECORDS) == b"encodings"
    assert read_sealed(texts, new, DESENSITISED_TEXT) == b"[PERSON] was admitted"
    found = ReleasedUpdates(ledgers, "f" * 64, new).find("run", 1, "g" * 64)
    assert found is not None and torch.equal(found[0].to_torch_state_dict()["w"], torch.ones(3))
    with pytest.raises(SealedFileError):
        read_sealed(cached, old, ENCODED_RECORDS)
    assert ReleasedUpdates(ledgers, "f" * 64, old).find("run", 1, "g" * 64) is None


def test_rotate_key_after_an_interrupted_rotation_finishes_it_then_rotates(tmp_path):
    key_dir, cache, ledgers = tmp_path / "keys", tmp_path / "cache", tmp_path / "ledgers"
    old = open_owner_keys(key_dir)
    cache.mkdir(mode=0o700)
    ledgers.mkdir(mode=0o700)
    for name in ("encoded-a.npz", "encoded-b.npz"):
        write_sealed(cache / name, name.encode(), old, ENCODED_RECORDS)
    rotate_at_rest_key(key_dir)  # the crash: new key written, nothing re-sealed yet
    new = open_owner_keys(key_dir)
    write_sealed(cache / "encoded-a.npz", b"encoded-a.npz", new, ENCODED_RECORDS)

    result = CliRunner().invoke(
        app,
        ["client", "rotate-key", "--key-dir", str(key_dir), "--cache-dir", str(cache),
         "--ledger-dir", str(ledgers)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # The interrupted rotation is finished, then the one asked for now: a key the owner
    # rotates away from (it may have leaked) does not stay in use.
    assert "finished an interrupted rotation first" in result.output
    assert "re-sealed 2 file(s); 0 already" in result.output
    newest = open_owner_keys(key_dir)
    assert newest.at_rest not in (old.at_rest, new.at_rest) and newest.pseudonym == old.pseudonym
    assert not (key_dir / "at-rest.key.previous").exists()
    for name in ("encoded-a.npz", "encoded-b.npz"):
        assert read_sealed(cache / name, newest, ENCODED_RECORDS) == name.encode()


def test_rotate_key_refuses_a_mistyped_folder_before_rotating(tmp_path):
    key_dir = tmp_path / "keys"
    before = open_owner_keys(key_dir)
    result = CliRunner().invoke(
        app,
        ["client", "rotate-key", "--key-dir", str(key_dir), "--cache-dir", "",
         "--ledger-dir", str(tmp_path / "typo")],
    )  # fmt: skip
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    assert open_owner_keys(key_dir) == before


def test_rotate_key_is_refused_while_a_node_runs_and_works_once_it_is_gone(tmp_path):
    """A node holds its key folder for as long as it runs (another process here, killed
    the hard way at the end): the rotation is refused with the fix and changes nothing,
    and runs once the node is gone, since the kernel drops a dead holder's lock."""
    import subprocess
    import sys

    key_dir, ledgers = tmp_path / "keys", tmp_path / "ledgers"
    before = open_owner_keys(key_dir)
    ledgers.mkdir(mode=0o700)
    node = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from fedshield.common.key_folder_lock import node_uses_keys\n"
         f"with node_uses_keys({str(key_dir)!r}):\n"
         "    print('running', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert node.stdout.readline().strip() == "running"
        args = ["client", "rotate-key", "--key-dir", str(key_dir), "--cache-dir", ""]
        result = CliRunner().invoke(app, [*args, "--ledger-dir", str(ledgers)])
        assert isinstance(result.exception, ConfigError)
        assert "a running node uses" in str(result.exception) and "then rotate" in str(
            result.exception
        )
        assert open_owner_keys(key_dir) == before
    finally:
        node.kill()
        node.wait()
    result = CliRunner().invoke(app, [*args, "--ledger-dir", str(ledgers)])
    assert result.exit_code == 0, result.output
    assert open_owner_keys(key_dir).key_id != before.key_id


def test_nodes_share_the_key_folder_and_none_starts_during_a_rotation(tmp_path):
    from fedshield.common.key_folder_lock import node_uses_keys, rotation_owns_keys

    key_dir = tmp_path / "keys"
    with node_uses_keys(key_dir), node_uses_keys(key_dir):  # two owners, one folder
        pass
    with (
        rotation_owns_keys(key_dir),
        pytest.raises(ConfigError, match="a key rotation is under way"),
        node_uses_keys(key_dir),
    ):
        pass
    with node_uses_keys(key_dir):  # released when the rotation ends
        pass
