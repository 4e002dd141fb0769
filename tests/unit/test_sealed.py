"""Sealed files (common/sealed.py): what an owner keeps derived from its text reads back
exactly, under its key and purpose, or fails with a message naming the file."""

from __future__ import annotations

import stat

import pytest

from fedshield.common.errors import DataError, SealedFileError
from fedshield.common.owner_keys import open_owner_keys
from fedshield.common.sealed import read_sealed, reseal, write_sealed

SECRET = b"patient 4711 was admitted with chest pain; " * 20
PURPOSE = "encoded-records"


@pytest.fixture()
def keys(tmp_path):
    return open_owner_keys(tmp_path / "keys")


@pytest.fixture()
def sealed_file(tmp_path, keys):
    path = tmp_path / "cache" / "encoded-a.npz"
    path.parent.mkdir()
    write_sealed(path, SECRET, keys, PURPOSE)
    return path


def refused(path, keys, purpose=PURPOSE) -> str:
    with pytest.raises(SealedFileError) as caught:
        read_sealed(path, keys, purpose)
    assert isinstance(caught.value, DataError) and caught.value.exit_code == 2
    message = str(caught.value)
    assert str(path) in message and "It is not used" in message
    return message


def test_a_sealed_file_reads_back_exactly_and_holds_no_plaintext(sealed_file, keys):
    assert read_sealed(sealed_file, keys, PURPOSE) == SECRET
    stored = sealed_file.read_bytes()
    assert b"patient" not in stored and b"chest" not in stored
    assert stat.S_IMODE(sealed_file.stat().st_mode) == 0o600


def test_two_writes_of_the_same_bytes_differ(sealed_file, keys):
    first = sealed_file.read_bytes()
    write_sealed(sealed_file, SECRET, keys, PURPOSE)
    assert sealed_file.read_bytes() != first  # a fresh nonce each write


@pytest.mark.parametrize("offset", [0, 8, 30, 40, -1])
def test_a_flipped_byte_fails_authentication(sealed_file, keys, offset):
    data = bytearray(sealed_file.read_bytes())
    data[offset] ^= 0x01
    sealed_file.write_bytes(bytes(data))
    refused(sealed_file, keys)


@pytest.mark.parametrize("keep", [0, 10, 40, -1])
def test_a_truncated_file_fails(sealed_file, keys, keep):
    data = sealed_file.read_bytes()
    sealed_file.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    refused(sealed_file, keys)


def test_a_file_sealed_under_another_owners_key_fails(sealed_file, tmp_path):
    other = open_owner_keys(tmp_path / "other-keys")
    assert "another key" in refused(sealed_file, other)


def test_a_file_renamed_or_read_for_another_purpose_fails(sealed_file, keys):
    assert "fails authentication" in refused(sealed_file, keys, purpose="released-update")
    renamed = sealed_file.with_name("encoded-b.npz")
    sealed_file.rename(renamed)
    assert "fails authentication" in refused(renamed, keys)


def test_a_clear_text_file_is_not_taken_for_a_sealed_one(tmp_path, keys):
    path = tmp_path / "encoded-a.npz"
    path.write_bytes(SECRET)
    assert "not a sealed file" in refused(path, keys)


def test_reseal_moves_a_file_to_the_new_key(sealed_file, keys, tmp_path):
    new = open_owner_keys(tmp_path / "new-keys")
    reseal(sealed_file, keys, new, PURPOSE)
    assert read_sealed(sealed_file, new, PURPOSE) == SECRET
    refused(sealed_file, keys)
