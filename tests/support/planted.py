"""Identifiers planted in owners' data, and a scan for them in whatever fedshield wrote;
and defects planted in a test-only build of fedshield.

``IDENTIFIERS`` holds several realistic values of every default desensitisation type
(checksums valid; the first of each is tests/unit/test_desensitise.py's PLANTED value),
each found and tagged by the default policy in a review's prose. ``found_in`` looks for
a value in a file's bytes and in the forms a writer may give it: JSON escapes ('/' as
'\\/', '@' as '\\u0040'), the digits alone of a number written with separators, HTML
escapes, any case, inside zip members (model.pt, .npz) and gzip streams.

``planted_build`` gives the environment of a test-only build with a defect (``NOISE_OFF``,
``UNITS_CLIPPED_PER_RECORD``): the defect runs in every process of a run, the owners'
Ray workers included, so that the empirical audit can be shown to catch it.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import os
import re
import zipfile
from pathlib import Path

import pandas as pd

IDENTIFIERS: dict[str, tuple[str, ...]] = {
    "EMAIL_ADDRESS": (
        "maria.keller@example-clinic.org",
        "j.okafor@mailbox.example.net",
        "dr.schmidt77@hospital-example.de",
        "tom_h1990@inbox.example.co.uk",
    ),
    "PHONE_NUMBER": ("+1 (212) 555-0187", "+44 20 7946 0958", "(415) 555-2671", "+49 30 901820"),
    "URL": (
        "https://records.example.com/patient/8812",
        "http://www.example.org/users/jdoe",
        "www.clinic-example.com/chart?id=5521",
        "intranet.example.de/staff/4410",
    ),
    "IP_ADDRESS": ("192.168.10.25", "10.44.3.201", "2001:db8:85a3::8a2e:370:7334", "203.0.113.77"),
    "CREDIT_CARD": (
        "4111 1111 1111 1111",
        "5555555555554444",
        "3782 822463 10005",
        "5105-1051-0510-5100",
    ),
    "IBAN_CODE": (
        "GB82 WEST 1234 5698 7654 32",
        "DE89 3704 0044 0532 0130 00",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91 ABNA 0417 1643 00",
    ),
    "US_SSN": ("536-90-4399", "401-23-4567", "219-44-8765", "612-30-9182"),
    "UK_NHS": ("943 476 5919", "401 023 2137", "485 777 3457", "450 557 7104"),
    "UK_NINO": ("AB 12 34 56 C", "JG 10 37 92 D", "NP 44 51 23 B", "CE 98 76 54 A"),
    "ES_NIF": ("12345678Z", "87654321X", "50123456Q", "31415926L"),
    "IT_FISCAL_CODE": (
        "RSSMRA85T10A562S",
        "BNCLRA80A41H501D",
        "VRDGPP72C15F205P",
        "FRRLCU90E60L219T",
    ),
    "AU_TFN": ("876 543 210", "628 194 821", "252 760 189", "385 280 841"),
    "IN_AADHAAR": ("2345 6789 0124", "4987 1234 5679", "5213 6789 4016", "6123 4509 8769"),
    "PL_PESEL": ("44051401359", "02070803628", "90123112340", "85031509874"),
    "DATE_TIME": ("March 5th, 2021", "2019-11-23", "14 July 1998", "August 31, 1987"),
}
TYPES = tuple(IDENTIFIERS)
# Short sentences appended to a review, each naming two identifiers in ordinary prose.
_SENTENCES = (
    "My neighbour left a note: write to {0} or use {1} about it.",
    "Seen again on the day recorded as {0}, ref {1}, and it was no better.",
    "For the record, the form asked for {0}; I also gave {1}.",
)


def every_value() -> dict[str, str]:
    """Each planted value, to its type."""
    return {value: entity for entity, values in IDENTIFIERS.items() for value in values}


def planted_text(text: str, row: int, shift: int = 0) -> str:
    """``text`` with a sentence naming two identifiers of other types; row after row the
    types and values cycle through all of ``IDENTIFIERS``. ``shift`` > 0 names other
    values of the same types (the same text, other people)."""
    first, second = TYPES[row % len(TYPES)], TYPES[(row * 7 + 3) % len(TYPES)]
    if first == second:
        second = TYPES[(row + 1) % len(TYPES)]

    def value(entity: str) -> str:
        values = IDENTIFIERS[entity]
        return values[(row // len(TYPES) + shift) % len(values)]

    return f"{text} {_SENTENCES[row % len(_SENTENCES)].format(value(first), value(second))}"


def planted_frame(
    reviews: pd.DataFrame, planted_rows: int, marker: str, marked_rows: int
) -> pd.DataFrame:
    """``reviews`` (text, label) with identifiers planted in the first ``planted_rows``
    and ``marker`` appended to the last ``marked_rows`` (a word found nowhere else)."""
    frame = reviews[["text", "label"]].reset_index(drop=True).copy()
    for row in range(planted_rows):
        frame.loc[row, "text"] = planted_text(frame.loc[row, "text"], row)
    for row in range(len(frame) - marked_rows, len(frame)):
        frame.loc[row, "text"] = f"{frame.loc[row, 'text']} Truly {marker} stuff."
    return frame


def forms(value: str) -> set[bytes]:
    """The byte strings that would show ``value`` in a file, lowercase."""
    written = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value).replace("/", "\\/")[1:-1],
        value.replace("@", "\\u0040"),
        html.escape(value),
    }
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 9 and digits != value:  # shorter digit runs occur by chance
        written.add(digits)
    return {w.lower().encode("utf-8") for w in written}


def _contents(path: Path) -> list[bytes]:
    """The file's bytes, and what a reader would decode from them: zip members, a gzip
    stream, the strings of a JSON or JSON Lines file with every escape undone."""
    raw = path.read_bytes()
    found = [raw]
    if zipfile.is_zipfile(io.BytesIO(raw)):
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            found += [archive.read(name) for name in archive.namelist()]
    if raw[:2] == b"\x1f\x8b":
        found.append(gzip.decompress(raw))
    for blob in list(found):
        found += _json_strings(blob)
    return found


def _json_strings(blob: bytes) -> list[bytes]:
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        return []
    documents = []
    for piece in [text, *text.splitlines()]:
        try:
            documents.append(json.loads(piece))
        except ValueError:
            continue
    strings: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                strings.append(str(key))
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            strings.append(node)

    for document in documents:
        walk(document)
    return ["\n".join(strings).encode("utf-8")] if strings else []


def files_under(*roots: Path) -> list[Path]:
    """Every regular file under ``roots`` (a root may be a file)."""
    found = []
    for root in roots:
        found += [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return sorted(found)


def found_in(paths: list[Path], needles: list[str]) -> list[str]:
    """'path: needle' for each needle found in any form in any of ``paths``."""
    wanted = {needle: forms(needle) for needle in needles}
    hits = []
    for path in paths:
        contents = [blob.lower() for blob in _contents(path)]
        for needle, variants in wanted.items():
            if any(v in blob for blob in contents for v in variants):
                hits.append(f"{path}: {needle!r}")
    return hits


# A defect: the module it goes into, and Python run on that module (``module``) right
# after its first import. Each leaves the rest of the product, the ledger's claim
# included, as it is.
# The owners' DP noise is zero (sampler, clipping, accounting and ledger untouched).
NOISE_OFF = (
    "fedshield.client.secure_random",
    "module.SecureRandom.normal_like = "
    "lambda self, reference, std: __import__('torch').zeros_like(reference)",
)
# Unit-level DP-SGD clips each record, not each unit (the per-unit sums are never
# formed), while the ledger still charges per unit: a unit of k records moves the
# update by up to kC.
UNITS_CLIPPED_PER_RECORD = (
    "fedshield.client.train",
    "module.group_per_unit = lambda params, positions: None",
)

# Python runs sitecustomize at start-up in every process that has it on its path, Ray's
# workers included (they inherit PYTHONPATH). It plants the defect when its module is
# first imported, so that the processes that never import it (Ray's own) start as fast
# as ever.
_SITECUSTOMIZE = """
import importlib.abc
import importlib.util
import sys


class _PlantDefect(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != {module!r}:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            exec({patch!r}, {{"module": module}})

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PlantDefect())
"""


def planted_build(folder: Path, defect: tuple[str, str]) -> dict[str, str]:
    """The environment variables of a test-only build with ``defect`` planted: a
    sitecustomize.py in ``folder``, put first on PYTHONPATH."""
    module, patch = defect
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(module=module, patch=patch))
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path}
