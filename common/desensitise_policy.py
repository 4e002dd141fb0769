"""An owner's desensitisation policy: which identifiers are removed, and how.

Guarantee: a policy that reaches the desensitiser names only known entity types and
known operators, and every operator replaces the identifier's characters as a whole,
never passing them through: ``tag`` (the type, ``<EMAIL_ADDRESS>``; the default),
``pseudonym`` (a keyed HMAC-SHA256 token: one person's identifier gives the same token in
every record of this owner, another owner's key gives another token, and the key never
leaves the owner), ``mask`` (letters and digits become ``*``), ``drop``, and
``generalise`` (dates to the year or month, ages to a ten-year band, other numbers to
their order of magnitude). A bad policy file is refused with the key, the value and the
fix. The policy is the owner's: it lives in its node config, never in a plan.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fedshield.common.errors import ConfigError

# Identifiers found by patterns and checksums alone: offline, no model.
PATTERN_TYPES: dict[str, str] = {
    "EMAIL_ADDRESS": "e-mail address",
    "PHONE_NUMBER": "phone number (libphonenumber, several regions)",
    "URL": "web address",
    "IP_ADDRESS": "IPv4 or IPv6 address",
    "CREDIT_CARD": "payment card number (Luhn checksum)",
    "IBAN_CODE": "IBAN (checksum)",
    "US_SSN": "US social security number",
    "UK_NHS": "UK NHS number (checksum)",
    "UK_NINO": "UK national insurance number",
    "ES_NIF": "Spanish NIF (check letter)",
    "IT_FISCAL_CODE": "Italian fiscal code (check character)",
    "AU_TFN": "Australian tax file number (checksum)",
    "IN_AADHAAR": "Indian Aadhaar number (Verhoeff checksum)",
    "PL_PESEL": "Polish PESEL (checksum)",
    "DATE_TIME": "calendar date (numeric or written out)",
    "AGE": "a person's age ('42 years old', 'aged 42')",
}
# Found only by a named-entity model the owner installs and names (``ner-model``).
NER_TYPES: dict[str, str] = {
    "PERSON": "a person's name",
    "LOCATION": "a place",
}
# The default: every pattern type but AGE (ages are rarely identifying on their own and
# common in ordinary text; an owner adds them with generalise when they matter).
DEFAULT_TYPES: tuple[str, ...] = tuple(t for t in PATTERN_TYPES if t != "AGE")
OPERATORS = ("tag", "pseudonym", "mask", "drop", "generalise")
DATE_PRECISIONS = ("year", "month")
POLICY_KEYS = ("entities", "operators", "score-threshold", "ner-model", "date-precision")

_MONTHS = "(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\\.?"
_YEAR = re.compile(r"(?<!\d)(1[89]\d\d|20\d\d)(?!\d)")
_DATE_FORMATS = (
    "%Y-%m-%d", "%Y/%m/%d", "%d.%m.%Y", "%m/%d/%Y", "%d/%m/%Y", "%m-%d-%Y", "%d-%m-%Y",
    "%B %d %Y", "%b %d %Y", "%d %B %Y", "%d %b %Y",
)  # fmt: skip


@dataclass(frozen=True)
class DesensitisePolicy:
    """What the owner removes: entity types, an operator per type, and the model, if any."""

    entities: tuple[str, ...] = DEFAULT_TYPES
    # (type, operator) pairs; a type not named here gets ``tag``.
    operators: tuple[tuple[str, str], ...] = ()
    score_threshold: float = 0.4
    # A spaCy package or folder the owner installed and trusts; "" = patterns only.
    ner_model: str = ""
    date_precision: str = "year"
    source: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        known = {**PATTERN_TYPES, **NER_TYPES}
        for entity in self.entities:
            _require(entity in known, "entities", entity, f"use some of {sorted(known)}")
        for entity, operator in self.operators:
            _require(entity in self.entities, "operators", entity, "list it in entities too")
            _require(operator in OPERATORS, f"operators.{entity}", operator, f"use {OPERATORS}")
        ner = [e for e in self.entities if e in NER_TYPES]
        _require(
            not ner or bool(self.ner_model),
            "entities",
            ",".join(ner),
            "names and places need a model you trust: set ner-model to an installed spaCy "
            "package or folder, or leave these types out",
        )
        _require(
            0.0 < self.score_threshold <= 1.0,
            "score-threshold",
            self.score_threshold,
            "must be in (0, 1]; 0.4 is the default",
        )
        _require(
            self.date_precision in DATE_PRECISIONS,
            "date-precision",
            self.date_precision,
            f"use one of {DATE_PRECISIONS}",
        )

    @classmethod
    def from_file(cls, path: str | Path) -> DesensitisePolicy:
        """A TOML policy file: ``entities = [...]``, ``[operators] TYPE = "operator"``."""
        path = Path(path).expanduser()
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such policy file; check --desensitise-policy") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not a TOML policy file ({err})") from None
        unknown = sorted(set(table) - set(POLICY_KEYS))
        _require(not unknown, "policy", ",".join(unknown), f"known keys: {POLICY_KEYS}")
        operators = table.get("operators", {})
        _require(isinstance(operators, dict), "operators", operators, "use a [operators] table")
        entities = table.get("entities", list(DEFAULT_TYPES))
        _require(
            isinstance(entities, list) and all(isinstance(e, str) for e in entities),
            "entities",
            entities,
            "use a list of type names",
        )
        return cls(
            entities=tuple(entities),
            operators=tuple(sorted((str(k), str(v)) for k, v in operators.items())),
            score_threshold=float(table.get("score-threshold", 0.4)),
            ner_model=str(table.get("ner-model", "")),
            date_precision=str(table.get("date-precision", "year")),
            source=str(path),
        )

    def operator_for(self, entity: str) -> str:
        return dict(self.operators).get(entity, "tag")

    @property
    def needs_key(self) -> bool:
        return any(self.operator_for(e) == "pseudonym" for e in self.entities)

    def as_dict(self) -> dict:
        """The policy as the owner's audit log records it (no key, no data)."""
        return {
            "entities": list(self.entities),
            "operators": {e: self.operator_for(e) for e in self.entities},
            "score-threshold": self.score_threshold,
            "ner-model": self.ner_model,
            "date-precision": self.date_precision,
            "source": self.source,
        }


def _require(ok: bool, key: str, value: object, fix: str) -> None:
    if not ok:
        raise ConfigError(f"desensitisation policy: {key} = {value!r}: {fix}")


def key_id(key: bytes) -> str:
    """A public name for a pseudonym key: two policies with the same id used the same key."""
    return hmac.new(key, b"fedshield pseudonym key id", hashlib.sha256).hexdigest()[:16]


def policy_digest(policy: DesensitisePolicy, key: bytes | None, versions: dict) -> str:
    """What the desensitised text depends on, so that caches follow a change of policy."""
    described = {
        **policy.as_dict(),
        "source": "",
        "key": key_id(key) if key else "",
        "versions": versions,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _normalised(entity: str, value: str) -> str:
    # One identifier, one pseudonym: "212-555-0187" and "(212) 555 0187" are one number.
    digits = re.sub(r"\D", "", value)
    if entity in ("EMAIL_ADDRESS", "URL", "PERSON", "LOCATION") or not digits:
        return " ".join(value.casefold().split())
    return digits


def pseudonym(key: bytes, entity: str, value: str) -> str:
    mac = hmac.new(key, f"{entity}\n{_normalised(entity, value)}".encode(), hashlib.sha256)
    return f"<{entity}_{mac.hexdigest()[:12]}>"


def mask(value: str) -> str:
    return re.sub(r"\w", "*", value)


def generalise(entity: str, value: str, date_precision: str = "year") -> str:
    """The identifier made coarse: its year (or month), age band, or order of magnitude."""
    if entity == "DATE_TIME":
        return _generalised_date(value, date_precision)
    if entity == "AGE":
        return re.sub(r"\d+", lambda m: _age_band(int(m.group())), value)
    digits = re.sub(r"\D", "", value)
    return f"<{entity} ~1e{len(digits) - 1}>" if digits else f"<{entity}>"


def _age_band(age: int) -> str:
    low = age // 10 * 10
    return f"{low}-{low + 9}"


def _generalised_date(value: str, precision: str) -> str:
    cleaned = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", value.strip()).replace(",", "")
    cleaned = re.sub(r"\s+", " ", cleaned)
    for fmt in _DATE_FORMATS:
        try:
            parsed = datetime.strptime(cleaned, fmt)
        except ValueError:
            continue
        return f"{parsed.year}" if precision == "year" else f"{parsed.year}-{parsed.month:02d}"
    year = _YEAR.search(value)
    if year is None:
        return "<DATE_TIME>"
    # Day and month of an unparsed form stay unknown: the year alone, whatever the precision.
    month = re.search(_MONTHS, value, re.IGNORECASE)
    if precision == "month" and month is not None:
        number = datetime.strptime(month.group()[:3].title(), "%b").month
        return f"{year.group()}-{number:02d}"
    return year.group()


def replacement(policy: DesensitisePolicy, key: bytes | None, entity: str, value: str) -> str:
    """What replaces ``value``, an identifier of type ``entity``, under ``policy``."""
    operator = policy.operator_for(entity)
    if operator == "pseudonym":
        if key is None:
            raise ConfigError("a pseudonym operator needs the owner's pseudonym key")
        return pseudonym(key, entity, value)
    if operator == "mask":
        return mask(value)
    if operator == "drop":
        return ""
    if operator == "generalise":
        return generalise(entity, value, policy.date_precision)
    return f"<{entity}>"
