"""Desensitisation: every default type found offline, operators as documented, windows
equal to whole-text analysis, bad policies refused."""

from __future__ import annotations

import socket

import pandas as pd
import pytest

from fedshield.common.data import builtin_csv_path
from fedshield.common.desensitise import Desensitiser, _without_overlaps
from fedshield.common.desensitise_policy import (
    DEFAULT_TYPES,
    DesensitisePolicy,
    generalise,
    pseudonym,
)
from fedshield.common.errors import ConfigError

# One realistic identifier of each default type, checksums valid.
PLANTED = {
    "EMAIL_ADDRESS": "maria.keller@example-clinic.org",
    "PHONE_NUMBER": "+1 (212) 555-0187",
    "URL": "https://records.example.com/patient/8812",
    "IP_ADDRESS": "192.168.10.25",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN_CODE": "GB82 WEST 1234 5698 7654 32",
    "US_SSN": "536-90-4399",
    "UK_NHS": "943 476 5919",
    "UK_NINO": "AB 12 34 56 C",
    "ES_NIF": "12345678Z",
    "IT_FISCAL_CODE": "RSSMRA85T10A562S",
    "AU_TFN": "876 543 210",
    "IN_AADHAAR": "2345 6789 0124",
    "PL_PESEL": "44051401359",
    "DATE_TIME": "March 5th, 2021",
}
KEY_A, KEY_B = b"a" * 32, b"b" * 32


@pytest.fixture(scope="module")
def default() -> Desensitiser:
    return Desensitiser(DesensitisePolicy())


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    return pd.read_csv(builtin_csv_path())["text"].tolist()[:400]


def test_every_default_type_is_found_and_tagged(default):
    assert set(PLANTED) == set(DEFAULT_TYPES)
    for entity, value in PLANTED.items():
        text = f"Patient note: the value {value} was given at intake."
        out, counts = default.apply([text])
        assert value not in out[0], entity
        assert f"<{entity}>" in out[0], (entity, out[0])
        assert counts == {entity: 1}, (entity, counts)


def test_ordinary_prose_is_left_alone(default):
    text = "The film...it's good.In short, 8 out of 10; watch it in 1985 style at home."
    assert default.apply_one(text) == text


def test_windows_give_the_same_spans_as_whole_texts(default, reviews):
    planted = " ".join(f"{v} and" for v in PLANTED.values())
    for text in [*reviews, planted, f"{planted} {reviews[0]}"]:
        whole = _without_overlaps(default._analyze(text, 0))
        assert default.find(text) == whole


def test_runs_offline(monkeypatch):
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    fresh = Desensitiser(DesensitisePolicy())
    assert fresh.apply_one(f"write to {PLANTED['EMAIL_ADDRESS']}") == "write to <EMAIL_ADDRESS>"
    assert attempts == []


def test_pseudonyms_are_stable_per_key_and_differ_across_keys():
    policy = DesensitisePolicy(
        operators=(("EMAIL_ADDRESS", "pseudonym"), ("PHONE_NUMBER", "pseudonym"))
    )
    a, b = Desensitiser(policy, KEY_A), Desensitiser(policy, KEY_B)
    text = f"mail {PLANTED['EMAIL_ADDRESS']} or call {PLANTED['PHONE_NUMBER']}"
    assert a.apply_one(text) == a.apply_one(text)
    assert a.apply_one(text) != b.apply_one(text)
    # One number, written two ways, is one pseudonym; another number is another.
    assert pseudonym(KEY_A, "PHONE_NUMBER", "212-555-0187") == pseudonym(
        KEY_A, "PHONE_NUMBER", "(212) 555 0187"
    )
    assert pseudonym(KEY_A, "PHONE_NUMBER", "212-555-0188") != pseudonym(
        KEY_A, "PHONE_NUMBER", "212-555-0187"
    )
    assert "0187" not in a.apply_one(text) and "keller" not in a.apply_one(text)
    with pytest.raises(ConfigError, match="pseudonym key"):
        Desensitiser(policy, None)


def test_mask_drop_and_generalise():
    policy = DesensitisePolicy(
        entities=("PHONE_NUMBER", "IP_ADDRESS", "DATE_TIME", "AGE"),
        operators=(
            ("PHONE_NUMBER", "mask"),
            ("IP_ADDRESS", "drop"),
            ("DATE_TIME", "generalise"),
            ("AGE", "generalise"),
        ),
    )
    out = Desensitiser(policy).apply_one(
        "call 212-555-0187 from 10.0.0.7 on March 5th, 2021; she is 47 years old"
    )
    assert out == "call ***-***-**** from  on 2021; she is 40-49 years old"


@pytest.mark.parametrize(
    ("entity", "value", "precision", "expected"),
    [
        ("DATE_TIME", "2021-03-05", "year", "2021"),
        ("DATE_TIME", "2021-03-05", "month", "2021-03"),
        ("DATE_TIME", "5 March 2021", "month", "2021-03"),
        ("DATE_TIME", "12/03/85", "year", "<DATE_TIME>"),  # no four-digit year: nothing kept
        ("AGE", "aged 7", "year", "aged 0-9"),
        ("AGE", "103-year-old", "year", "100-109-year-old"),
        ("US_SSN", "536-90-4399", "year", "<US_SSN ~1e8>"),
    ],
)
def test_generalisation_keeps_only_the_coarse_part(entity, value, precision, expected):
    assert generalise(entity, value, precision) == expected


def test_bad_policies_are_refused_with_the_fix(tmp_path):
    cases = {
        'entities = ["SHOE_SIZE"]': "SHOE_SIZE",
        '[operators]\nEMAIL_ADDRESS = "shred"': "shred",
        'entities = ["PERSON"]': "ner-model",
        'colour = "blue"': "colour",
        "entities = [": "not a TOML",
        'entities = ["PERSON"]\nner-model = "no_such_model_x"': "neither an installed",
    }
    for i, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"p{i}.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            Desensitiser(DesensitisePolicy.from_file(path)).apply_one("x")
    with pytest.raises(ConfigError, match="no such policy file"):
        DesensitisePolicy.from_file(tmp_path / "missing.toml")


def test_names_and_places_with_a_model_the_owner_installed(tmp_path):
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns(
        [{"label": "PERSON", "pattern": "Maria Keller"}, {"label": "GPE", "pattern": "Zurich"}]
    )
    nlp.to_disk(tmp_path / "model")
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        f'entities = ["PERSON", "LOCATION", "EMAIL_ADDRESS"]\nner-model = "{tmp_path / "model"}"\n'
        '[operators]\nPERSON = "pseudonym"\n'
    )
    desensitiser = Desensitiser(DesensitisePolicy.from_file(policy_file), KEY_A)
    out = desensitiser.apply_one("Maria Keller moved to Zurich; write to maria@example.org")
    assert out.startswith("<PERSON_") and "<LOCATION>" in out and "<EMAIL_ADDRESS>" in out
    assert "SpacyRecognizer" in desensitiser.describe()["recognizers"]


def test_the_description_names_no_key_and_follows_the_key():
    policy = DesensitisePolicy(operators=(("EMAIL_ADDRESS", "pseudonym"),))
    a, b = Desensitiser(policy, KEY_A), Desensitiser(policy, KEY_B)
    described = a.describe()
    assert described["operators"]["EMAIL_ADDRESS"] == "pseudonym"
    assert described["versions"]["presidio-analyzer"] != "not installed"
    assert KEY_A.hex() not in str(described)
    assert a.digest != b.digest


@pytest.mark.parametrize(
    ("text", "entity"),
    [
        ("call ＋１ (２１２) ５５５-０１８７ now", "PHONE_NUMBER"),  # fullwidth digits
        ("call ٢١٢-٥٥٥-٠١٨٧ now", "PHONE_NUMBER"),  # Arabic-Indic digits
        ("TFN ८७६ ५४३ २१० ok", "AU_TFN"),  # Devanagari digits
        ("host dead:beef::cafe here", "IP_ADDRESS"),  # IPv6 in hex letters alone
        ("on March" + " " * 60 + "5, 2021 it was", "DATE_TIME"),  # a long run of spaces
        ("mail maria\u200b.keller@example.org", "EMAIL_ADDRESS"),  # a zero-width space
        ("card 4111\u200b1111 1111 1111", "CREDIT_CARD"),
        ("ｍａｒｉａ@ｅｘａｍｐｌｅ.ｏｒｇ", "EMAIL_ADDRESS"),  # fullwidth letters
    ],
)
def test_identifiers_written_unusually_are_found_whole(default, text, entity):
    out, counts = default.apply([text])
    assert counts == {entity: 1}, (text, out)
    kept = "".join(ch for ch in out[0] if ch.isdigit() or ch == "@")
    assert kept == "", out[0]  # no digit or '@' of the identifier is left
