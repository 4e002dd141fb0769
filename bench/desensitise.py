"""Desensitisation (issue 23): recall and precision per identifier type, what ordinary
prose triggers, throughput, and the accuracy cost at epsilon 3 on IMDB.

Planting: real IMDB reviews (the built-in CSV) each get one synthetic identifier, valid
as its type requires (Luhn, mod-11, Verhoeff, check letters; phone numbers that
libphonenumber accepts), in one of several real-world formats, inside a sentence
inserted at a word boundary; the identifier's span is kept. Faker makes most values;
NHS, NINO, TFN and Aadhaar numbers are ours (Faker's en_IN Aadhaar fails Verhoeff, its
en_GB NINO uses the unissued prefix ZZ). Seeded: the same arguments give the same texts
and tables.

  * recall per type: a planted identifier counts as found when a found span of the same
    type covers it entirely; "removed" when found spans of any types cover it (what the
    owner's text loses); "as another type" counts those covered or cut by another type;
  * precision per type, two ways: over every span of the type found in the planted
    texts (prose hits included), and over the spans found in the inserted sentences;
  * prose: spans found in the same reviews before planting, per 1,000 reviews, with
    examples (real dates and web addresses in reviews count here too);
  * extra formats (ambiguous without context, e.g. an SSN as nine bare digits) are
    planted apart and reported, outside the targets;
  * throughput: ``Desensitiser.apply`` (default policy, tag operator) on one process and
    on two, after warm-up, median of ``--repeats`` passes;
  * ``--accuracy``: ``fedshield simulate --epsilon 3`` (10 owners, 40 rounds) per seed,
    with and without ``--no-desensitise``, final held-out accuracy from metrics.json.

    .venv/bin/python bench/desensitise.py [--texts 10000] [--accuracy] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import ipaddress
import json
import multiprocessing
import random
import re
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import phonenumbers
from faker import Faker
from tables import print_table, write_json  # bench/tables.py

from fedshield.common.data import builtin_csv_path
from fedshield.common.desensitise import Desensitiser
from fedshield.common.desensitise_policy import DEFAULT_TYPES, DesensitisePolicy
from fedshield.common.recognizers import library_versions

FEDSHIELD = [sys.executable, "-c", "from fedshield.cli.app import main; main()"]
RECALL_TARGET = 0.99
PERSON_RECALL_TARGET = 0.90
PRECISION_TARGET = 0.95
TEXTS_PER_S_PER_CORE_TARGET = 1000
ACCURACY_LOSS_TARGET_POINTS = 0.5
TEMPLATES = (
    "My details are {} if anyone asks.",
    "(I wrote {} on the back of the ticket.)",
    "Someone left {} in the comments, of all things.",
    "Reference: {}.",
    "The note just said {}, nothing more.",
    "Send it to {} and wait.",
)
PHONE_REGIONS = (
    ("en_US", "US"),
    ("en_GB", "GB"),
    ("de_DE", "DE"),
    ("fr_FR", "FR"),
    ("en_IN", "IN"),
)
IBAN_LOCALES = ("en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL")
COUNTED_CARDS = ("visa16", "visa13", "mastercard", "amex", "discover", "diners", "jcb16")
EXTRA_CARDS = ("visa19", "maestro", "jcb15")  # rare lengths and prefixes, reported apart


@dataclass(frozen=True)
class Planted:
    """A review with one synthetic identifier inside an inserted sentence."""

    text: str
    entity: str
    fmt: str
    value: str
    start: int
    end: int
    sentence_start: int
    sentence_end: int


Generator = Callable[[], str]


class Identifiers:
    """Valid synthetic identifiers per type and format, from Faker and our generators."""

    def __init__(self, seed: int) -> None:
        Faker.seed(seed)
        self.rng = random.Random(seed)
        self.fakers: dict[str, Faker] = {}
        self.phone_tries: Counter = Counter()
        self.phone_valid: Counter = Counter()

    def faker(self, locale: str) -> Faker:
        if locale not in self.fakers:
            self.fakers[locale] = Faker(locale)
        return self.fakers[locale]

    def counted(self) -> dict[str, list[tuple[str, Generator]]]:
        """Type -> [(format, generator)]: the formats the recall target is measured on."""
        fake, rng = self.faker("en_US"), self.rng
        formats: dict[str, list[tuple[str, Generator]]] = {
            "EMAIL_ADDRESS": [
                ("free mail", fake.free_email),
                ("company", fake.company_email),
                ("de_DE", lambda: self.faker("de_DE").email()),
                ("plus tag", lambda: fake.user_name() + "+news@" + fake.free_email_domain()),
            ],
            "PHONE_NUMBER": self._phone_formats(),
            "URL": [
                ("https with path", lambda: fake.uri(schemes=["https"])),
                ("http, home page", lambda: fake.url(schemes=["http"])),
                ("www, no scheme", lambda: "www." + fake.domain_name() + "/" + fake.uri_path()),
                ("bare domain + path", lambda: fake.domain_name() + "/" + fake.uri_path()),
                ("bare .co.uk", lambda: self.faker("en_GB").domain_word() + ".co.uk"),
            ],
            "IP_ADDRESS": [
                ("IPv4 public", fake.ipv4_public),
                ("IPv4 private", fake.ipv4_private),
                ("IPv6 full", fake.ipv6),
                ("IPv6 compressed", self._ipv6_compressed),
            ],
            "CREDIT_CARD": [
                (f"{brand}, {grouping}", self._card(brand, grouping))
                for brand in COUNTED_CARDS
                for grouping in ("spaces", "dashes", "ungrouped")
            ],
            "IBAN_CODE": [
                (f"{locale[-2:]}, {spacing}", self._iban(locale, spacing))
                for locale in IBAN_LOCALES
                for spacing in ("spaced", "compact")
            ],
            "US_SSN": [
                ("123-45-6789", fake.ssn),
                ("123 45 6789", lambda: fake.ssn().replace("-", " ")),
            ],
            "UK_NHS": [
                ("943 476 5919", lambda: _grouped(uk_nhs_number(rng), (3, 3, 4), " ")),
                ("943-476-5919", lambda: _grouped(uk_nhs_number(rng), (3, 3, 4), "-")),
                ("9434765919", lambda: uk_nhs_number(rng)),
            ],
            "UK_NINO": [
                ("AB 12 34 56 C", lambda: _grouped(uk_nino(rng), (2, 2, 2, 2, 1), " ")),
                ("AB123456C", lambda: uk_nino(rng)),
            ],
            "ES_NIF": [
                ("12345678Z", self.faker("es_ES").nif),
                ("12345678-Z", self._dashed_nif),
            ],
            "IT_FISCAL_CODE": [("RSSMRA85T10A562S", self.faker("it_IT").ssn)],
            "AU_TFN": [
                ("123 456 782", lambda: _grouped(au_tfn(rng), (3, 3, 3), " ")),
                ("123456782", lambda: au_tfn(rng)),
            ],
            "IN_AADHAAR": [
                ("2345 6789 0124", lambda: _grouped(in_aadhaar(rng), (4, 4, 4), " ")),
                ("2345-6789-0124", lambda: _grouped(in_aadhaar(rng), (4, 4, 4), "-")),
                ("234567890124", lambda: in_aadhaar(rng)),
            ],
            "PL_PESEL": [("44051401359", self.faker("pl_PL").pesel)],
            "DATE_TIME": [
                ("March 5th, 2021", lambda: self._date("{month} {day}{suffix}, {year}")),
                ("March 5, 2021", lambda: self._date("{month} {day}, {year}")),
                ("Mar 5, 2021", lambda: self._date("{mon} {day}, {year}")),
                ("5 March 2021", lambda: self._date("{day} {month} {year}")),
                ("2021-03-05", lambda: self._date("{year}-{mm}-{dd}")),
                ("03/05/2021", lambda: self._date("{mm}/{dd}/{year}")),
                ("05.03.2021", lambda: self._date("{dd}.{mm}.{year}")),
            ],
        }
        assert set(formats) == set(DEFAULT_TYPES), set(DEFAULT_TYPES) ^ set(formats)
        return formats

    def extras(self) -> dict[str, list[tuple[str, Generator]]]:
        """Formats outside the targets: ambiguous without context, or rare."""
        fake, rng = self.faker("en_US"), self.rng
        nif = self.faker("es_ES").nif
        return {
            "US_SSN": [("123456789 (bare)", lambda: fake.ssn().replace("-", ""))],
            "ES_NIF": [
                ("12.345.678-Z", lambda: _dotted_nif(nif())),
                ("12345678z (lower case)", lambda: nif().lower()),
            ],
            "CREDIT_CARD": [
                (f"{brand}, spaces", self._card(brand, "spaces")) for brand in EXTRA_CARDS
            ],
            "PHONE_NUMBER": [("US 212.555.0187", lambda: self._phone("en_US", "US", "dots"))],
            "DATE_TIME": [
                ("5th of March 2021", lambda: self._date("{day}{suffix} of {month} {year}"))
            ],
            "AU_TFN": [
                ("12 345 678 (8-digit TFN)", lambda: _grouped(au_tfn(rng, 8), (2, 3, 3), " "))
            ],
        }

    def _phone_formats(self) -> list[tuple[str, Generator]]:
        formats: list[tuple[str, Generator]] = []
        for locale, region in PHONE_REGIONS:
            styles = ["national", "international"] + (["dashes"] if region == "US" else [])
            formats += [
                (
                    f"{region} {style}",
                    lambda loc=locale, reg=region, st=style: self._phone(loc, reg, st),
                )
                for style in styles
            ]
        formats.append(("E.164 (GB)", lambda: self._phone("en_GB", "GB", "e164")))
        return formats

    def _phone(self, locale: str, region: str, style: str) -> str:
        """A Faker number of ``locale`` that libphonenumber accepts as valid for ``region``
        (Faker's numbers are often invalid: those are out of scope), then formatted."""
        while True:
            self.phone_tries[region] += 1
            raw = self.faker(locale).phone_number()
            try:
                number = phonenumbers.parse(raw, region)
            except phonenumbers.NumberParseException:
                continue
            if "x" in raw.lower() or not phonenumbers.is_valid_number(number):
                continue
            if phonenumbers.region_code_for_number(number) != region:
                continue
            self.phone_valid[region] += 1
            national = str(number.national_number)
            if style == "national":
                return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
            if style == "international":
                return phonenumbers.format_number(
                    number, phonenumbers.PhoneNumberFormat.INTERNATIONAL
                )
            if style == "e164":
                return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            separator = "-" if style == "dashes" else "."
            return _grouped(national, (3, 3, 4), separator)

    def _ipv6_compressed(self) -> str:
        """A full IPv6 address with a run of two or three zero groups, written with '::'."""
        groups = self.faker("en_US").ipv6().split(":")
        start, length = self.rng.randrange(1, 6), self.rng.randrange(2, 4)
        groups[start : start + length] = ["0"] * length
        return ipaddress.IPv6Address(":".join(groups)).compressed

    def _card(self, brand: str, grouping: str) -> Generator:
        def generate() -> str:
            number = self.faker("en_US").credit_card_number(card_type=brand)
            assert luhn_valid(number), number
            if grouping == "ungrouped":
                return number
            sizes = {15: (4, 6, 5), 14: (4, 6, 4), 13: (4, 3, 3, 3)}.get(len(number), (4,) * 5)
            return _grouped(number, sizes, " " if grouping == "spaces" else "-")

        return generate

    def _iban(self, locale: str, spacing: str) -> Generator:
        def generate() -> str:
            iban = self.faker(locale).iban()
            return _grouped(iban, (4,) * 9, " ") if spacing == "spaced" else iban

        return generate

    def _dashed_nif(self) -> str:
        nif = self.faker("es_ES").nif()
        return f"{nif[:-1]}-{nif[-1]}"

    def _date(self, pattern: str) -> str:
        day = datetime.date(1950, 1, 1) + datetime.timedelta(days=self.rng.randrange(27_000))
        suffix = (
            "th" if 11 <= day.day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day.day % 10, "th")
        )
        return pattern.format(
            year=day.year,
            month=day.strftime("%B"),
            mon=day.strftime("%b"),
            day=day.day,
            suffix=suffix,
            mm=f"{day.month:02d}",
            dd=f"{day.day:02d}",
        )


def _grouped(value: str, sizes: tuple[int, ...], separator: str) -> str:
    """``value`` cut into parts of ``sizes`` (the rest dropped, empty parts skipped)."""
    parts, at = [], 0
    for size in sizes:
        parts.append(value[at : at + size])
        at += size
    return separator.join(p for p in parts if p)


def _dotted_nif(nif: str) -> str:
    digits, letter = nif[:-1].zfill(8), nif[-1]
    return f"{digits[:2]}.{digits[2:5]}.{digits[5:]}-{letter}"


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in number][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def uk_nhs_number(rng: random.Random) -> str:
    """Ten digits in the ranges England and Wales issue (400... and 600-708...), the last a
    mod-11 check digit (a body whose check would be 10 is never issued)."""
    while True:
        prefix = rng.choice([*range(400, 500), *range(600, 709)])
        body = [int(d) for d in str(prefix)] + [rng.randrange(10) for _ in range(6)]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(body)) % 11
        if check == 11:
            check = 0
        if check != 10:
            return "".join(map(str, body)) + str(check)


def uk_nino(rng: random.Random) -> str:
    """Two prefix letters as HMRC allocates them, six digits, a suffix A-D."""
    first = "ABCEGHJKLMNOPRSTWXYZ"
    second = "ABCEGHJKLMNPRSTWXYZ"
    while True:
        prefix = rng.choice(first) + rng.choice(second)
        if prefix not in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
            break
    return prefix + "".join(rng.choice(string.digits) for _ in range(6)) + rng.choice("ABCD")


def au_tfn(rng: random.Random, length: int = 9) -> str:
    """A tax file number whose weighted digit sum is a multiple of 11."""
    weights = (1, 4, 3, 7, 5, 8, 6, 9, 10) if length == 9 else (10, 7, 8, 4, 6, 3, 5, 1)
    while True:
        digits = [rng.randrange(10) for _ in range(length)]
        if digits[0] != 0 and sum(d * w for d, w in zip(digits, weights, strict=True)) % 11 == 0:
            return "".join(map(str, digits))


# The checksums are ours on purpose, not Presidio's validators: a benchmark of a
# recognizer must not make its test data with the code under test.
_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]
_VERHOEFF_INV = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9]


def verhoeff_check_digit(body: str) -> str:
    c = 0
    for i, digit in enumerate(reversed(body)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[(i + 1) % 8][int(digit)]]
    return str(_VERHOEFF_INV[c])


def in_aadhaar(rng: random.Random) -> str:
    """Twelve digits, the first 2-9, the last a Verhoeff check digit."""
    body = str(rng.randrange(2, 10)) + "".join(rng.choice(string.digits) for _ in range(10))
    return body + verhoeff_check_digit(body)


_BETWEEN_WORDS = re.compile(r"(?<=[\w.,!?;:\"')]) (?=[\w\"'(])")


def plant(
    reviews: list[str], formats: dict[str, list[tuple[str, Generator]]], rng: random.Random
) -> list[Planted]:
    """One identifier per review, types and formats in turn, each in a sentence inserted
    between two words of the review (or at its end)."""
    types = list(formats)
    planted = []
    for i, review in enumerate(reviews):
        entity = types[i % len(types)]
        fmt, generate = formats[entity][(i // len(types)) % len(formats[entity])]
        value = generate()
        template = rng.choice(TEMPLATES)
        sentence = template.format(value)
        gaps = [m.start() for m in _BETWEEN_WORDS.finditer(review)]
        at = rng.choice(gaps) if gaps else len(review)
        text = f"{review[:at]} {sentence}{review[at:]}"
        start = at + 1 + template.index("{}")
        planted.append(
            Planted(
                text, entity, fmt, value, start, start + len(value), at + 1, at + 1 + len(sentence)
            )
        )
    return planted


@dataclass
class Scores:
    """What ``find`` made of planted texts, per type and per (type, format)."""

    planted: Counter = field(default_factory=Counter)
    found: Counter = field(default_factory=Counter)  # covered by one span of the same type
    removed: Counter = field(default_factory=Counter)  # covered by spans of any type
    as_other: dict = field(default_factory=lambda: defaultdict(Counter))
    spans: Counter = field(default_factory=Counter)  # spans found per type, anywhere
    in_sentence: Counter = field(default_factory=Counter)  # ... in the inserted sentence
    true: Counter = field(default_factory=Counter)  # ... over a planted one of the type
    by_format: dict = field(default_factory=lambda: defaultdict(Counter))
    missed: dict = field(default_factory=lambda: defaultdict(list))


def score(desensitiser: Desensitiser, planted: list[Planted]) -> Scores:
    s = Scores()
    for item in planted:
        spans = desensitiser.find(item.text)
        key = (item.entity, item.fmt)
        s.by_format[key]["planted"] += 1
        s.planted[item.entity] += 1
        for f in spans:
            s.spans[f.entity] += 1
            s.in_sentence[f.entity] += f.start < item.sentence_end and f.end > item.sentence_start
            s.true[f.entity] += (
                f.entity == item.entity and f.start < item.end and f.end > item.start
            )
        near = [f for f in spans if f.start < item.end and f.end > item.start]
        covered = set().union(*(range(f.start, f.end) for f in near))
        if covered >= set(range(item.start, item.end)):
            s.removed[item.entity] += 1
            s.by_format[key]["removed"] += 1
        if any(
            f.entity == item.entity and f.start <= item.start and f.end >= item.end for f in near
        ):
            s.found[item.entity] += 1
            s.by_format[key]["found"] += 1
            continue
        for other in {f.entity for f in near if f.entity != item.entity}:
            s.as_other[item.entity][other] += 1
        instead = ", ".join(
            f"{f.entity if f.entity != item.entity else 'part'} {item.text[f.start : f.end]!r}"
            for f in near
        )
        s.missed[key].append((item.value, instead or "nothing"))
    return s


def prose_hits(desensitiser: Desensitiser, reviews: list[str]) -> list[dict]:
    """Every span found in unplanted reviews (real text), with some context."""
    hits = []
    for review in reviews:
        for f in desensitiser.find(review):
            context = review[max(0, f.start - 30) : f.end + 30].replace("\n", " ")
            hits.append({"entity": f.entity, "value": review[f.start : f.end], "context": context})
    return hits


def timed_passes(desensitiser: Desensitiser, texts: list[str], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        desensitiser.apply(texts)
        seconds.append(time.perf_counter() - start)
    return seconds


_SHARED: dict = {}  # the texts, inherited by forked workers


def _worker(index: int, processes: int, repeats: int, barrier, results) -> None:
    desensitiser = Desensitiser(DesensitisePolicy())
    desensitiser.apply(_SHARED["warm-up"])
    share = _SHARED["texts"][index::processes]
    for repeat in range(repeats):
        barrier.wait()
        start = time.perf_counter()
        desensitiser.apply(share)
        results.put((repeat, time.perf_counter() - start))


def parallel_passes(
    texts: list[str], warm_up: list[str], processes: int, repeats: int
) -> list[float]:
    """Seconds per pass over ``texts`` split among ``processes`` forked workers, each warm,
    started together: the slowest worker's time."""
    context = multiprocessing.get_context("fork")
    _SHARED.update({"texts": texts, "warm-up": warm_up})
    barrier, results = context.Barrier(processes + 1), context.Queue()
    workers = [
        context.Process(target=_worker, args=(i, processes, repeats, barrier, results))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    seconds = []
    for _ in range(repeats):
        barrier.wait()
        seconds.append(max(results.get()[1] for _ in range(processes)))
    for worker in workers:
        worker.join()
    return seconds


def simulate(seed: int, desensitise: bool, out: Path) -> dict:
    """One ``fedshield simulate`` at epsilon 3 with the defaults; its final metrics."""
    command = [*FEDSHIELD, "simulate", "--epsilon", "3", "--seed", str(seed), "--out", str(out)]
    command += [] if desensitise else ["--no-desensitise"]
    start = time.time()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.time() - start
    metrics = out / "metrics.json"
    if proc.returncode != 0 or not metrics.exists():
        raise SystemExit(
            f"{' '.join(command)}: exit {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    final = json.loads(metrics.read_text())["final"]
    return {"accuracy": final["accuracy"], "epsilon": final["epsilon_max"], "seconds": seconds}


def person_row(ner_model: str, reviews: list[str], seed: int) -> list[object]:
    """PERSON recall with an NER model the owner installed; without one, why not."""
    import spacy.util

    if not ner_model:
        installed = sorted(spacy.util.get_installed_models())
        why = (
            f"pass --ner-model (installed: {', '.join(installed)})"
            if installed
            else "no NER model installed"
        )
        return [
            "PERSON",
            "-",
            "-",
            f"not measured: {why}",
            "",
            "",
            f">= {PERSON_RECALL_TARGET}",
            "-",
            "",
            "",
            "",
            "",
        ]
    Faker.seed(seed)
    fakers = [Faker(locale) for locale in ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT")]
    planted = plant(
        reviews, {"PERSON": [(f.locales[0], f.name) for f in fakers]}, random.Random(seed)
    )
    policy = DesensitisePolicy(entities=(*DEFAULT_TYPES, "PERSON"), ner_model=ner_model)
    s = score(Desensitiser(policy), planted)
    recall = s.found["PERSON"] / s.planted["PERSON"]
    return [
        "PERSON",
        f"{len(fakers)} locales",
        s.planted["PERSON"],
        f"{recall:.3f}",
        f"{s.removed['PERSON'] / s.planted['PERSON']:.3f}",
        ", ".join(f"{k} {v}" for k, v in s.as_other["PERSON"].most_common()) or "0",
        f">= {PERSON_RECALL_TARGET}",
        _verdict(recall >= PERSON_RECALL_TARGET),
        "n/a: reviews name real people",
        "",
        "",
        "",
    ]


def _verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 1.0


def recall_precision_table(
    s: Scores, counted: dict, prose: Counter, reviews: int, person: list[object]
) -> None:
    def row(name: str, formats: int, entities: tuple[str, ...]) -> list[object]:
        def total(counter: Counter) -> int:
            return sum(counter[e] for e in entities)

        planted, recall = total(s.planted), _ratio(total(s.found), total(s.planted))
        in_sentence = _ratio(total(s.true), total(s.in_sentence))
        in_texts = _ratio(total(s.true), total(s.spans))
        others = Counter()
        for e in entities:
            others.update(s.as_other[e])
        return [
            name,
            formats,
            planted,
            f"{recall:.3f}",
            f"{_ratio(total(s.removed), planted):.3f}",
            ", ".join(f"{k} {v}" for k, v in others.most_common(3)) or "0",
            f">= {RECALL_TARGET}",
            _verdict(recall >= RECALL_TARGET),
            f"{in_sentence:.3f} ({total(s.true)}/{total(s.in_sentence)})",
            f"{in_texts:.3f} ({total(s.true)}/{total(s.spans)})",
            f"{_verdict(in_sentence >= PRECISION_TARGET)} / {_verdict(in_texts >= PRECISION_TARGET)}",
            f"{total(prose) * 1000 / reviews:.1f}",
        ]

    rows = [row(e, len(counted[e]), (e,)) for e in DEFAULT_TYPES]
    rows.append(person)
    rows.append(row("**all pattern types**", sum(map(len, counted.values())), DEFAULT_TYPES))
    print_table(
        [
            "type",
            "formats",
            "planted",
            "recall (same type)",
            "removed (any type)",
            "found as another type",
            "target",
            "recall",
            "precision, inserted sentences",
            "precision, whole planted texts",
            "precision >= 0.95 (sentences / texts)",
            "hits per 1,000 unplanted reviews",
        ],
        rows,
    )


def format_table(s: Scores, only_missed: bool, examples: int) -> None:
    rows = [
        [
            entity,
            fmt,
            counts["planted"],
            f"{counts['found'] / counts['planted']:.3f}",
            f"{counts['removed'] / counts['planted']:.3f}",
            "; ".join(
                f"`{value}` -> {instead}" for value, instead in s.missed[(entity, fmt)][:examples]
            ),
        ]
        for (entity, fmt), counts in sorted(s.by_format.items())
        if counts["found"] < counts["planted"] or not only_missed
    ]
    print_table(
        ["type", "format", "planted", "recall", "removed", "missed: value -> found over it"],
        rows or [["none", "", "", "", "", ""]],
    )


def formats_table(identifiers: Identifiers, counted: dict) -> None:
    """Every counted format with one example value (synthetic)."""
    rows = []
    for entity, formats in counted.items():
        rows.append([entity, "; ".join(f"{fmt}: `{generate()}`" for fmt, generate in formats)])
    print_table(["type", "formats: example"], rows)


def prose_table(hits: list[dict], reviews: int) -> None:
    counts = Counter(h["entity"] for h in hits)
    print_table(
        ["type", "hits", "per 1,000 reviews", "examples (real review text)"],
        [
            [
                entity,
                count,
                f"{count * 1000 / reviews:.1f}",
                "; ".join([f"`{h['value'][:40]}`" for h in hits if h["entity"] == entity][:6]),
            ]
            for entity, count in counts.most_common()
        ]
        or [["none", 0, 0, ""]],
    )


def throughput_table(
    desensitiser: Desensitiser, texts: dict[str, list[str]], warm_up: list[str], repeats: int
) -> dict:
    rows, rates = [], {}
    for processes in (1, 2):
        for name, batch in texts.items():
            if processes == 1:
                seconds = timed_passes(desensitiser, batch, repeats)
            else:
                seconds = parallel_passes(batch, warm_up, processes, repeats)
            rate = len(batch) / statistics.median(seconds)
            rates[f"{processes} process(es), {name}"] = rate
            rows.append(
                [
                    f"{name} reviews",
                    processes,
                    len(batch),
                    f"{statistics.mean(map(len, batch)):.0f}",
                    f"{rate:,.0f}",
                    f"{rate / processes:,.0f}",
                    f">= {TEXTS_PER_S_PER_CORE_TARGET:,}",
                    _verdict(rate / processes >= TEXTS_PER_S_PER_CORE_TARGET),
                ]
            )
    print_table(
        [
            "texts",
            "processes",
            "count",
            "mean chars",
            "texts/s",
            "texts/s per core",
            "target",
            "result",
        ],
        rows,
    )
    return rates


def accuracy_table(seeds: list[int]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="desensitise-bench-") as tmp:
        for seed in seeds:
            on = simulate(seed, True, Path(tmp) / f"s{seed}-desensitised")
            off = simulate(seed, False, Path(tmp) / f"s{seed}-plain")
            results.append({"seed": seed, "desensitised": on, "plain": off})
            print(
                f"seed {seed}: {on['accuracy']:.4f} desensitised, {off['accuracy']:.4f} not",
                flush=True,
            )
    rows = [
        [
            r["seed"],
            f"{r['desensitised']['accuracy']:.4f}",
            f"{r['plain']['accuracy']:.4f}",
            f"{100 * (r['desensitised']['accuracy'] - r['plain']['accuracy']):+.2f}",
            f"{r['desensitised']['epsilon']:.3f} / {r['plain']['epsilon']:.3f}",
            f"{r['desensitised']['seconds']:.0f} / {r['plain']['seconds']:.0f}",
            "",
        ]
        for r in results
    ]
    on = statistics.mean(r["desensitised"]["accuracy"] for r in results)
    off = statistics.mean(r["plain"]["accuracy"] for r in results)
    loss = 100 * (off - on)
    verdict = _verdict(loss <= ACCURACY_LOSS_TARGET_POINTS)
    rows.append(["**mean**", f"{on:.4f}", f"{off:.4f}", f"{-loss:+.2f}", "", "", f"{verdict}"])
    print()
    print_table(
        [
            "seed",
            "desensitised",
            "not desensitised",
            "difference (points)",
            "max epsilon (on / off)",
            "wall s (on / off)",
            f"loss <= {ACCURACY_LOSS_TARGET_POINTS} points",
        ],
        rows,
    )
    return results


def main() -> None:
    from bench_machine import machine, provenance

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--texts", type=int, default=10_000, help="IMDB reviews to plant in (one each)")
    ap.add_argument("--extra-texts", type=int, default=1_000, help="reviews for the extra formats")
    ap.add_argument("--seed", type=int, default=0, help="reviews, identifiers and positions")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per throughput row")
    ap.add_argument("--accuracy", action="store_true", help="also run fedshield simulate per seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of --accuracy")
    ap.add_argument("--ner-model", default="", help="an installed spaCy model: measure PERSON")
    ap.add_argument("--json", type=Path, help="also write the results (and every prose hit) here")
    args = ap.parse_args()

    host = machine()
    print(f"machine: {host['uname']}; {host['nproc']} cores; load {host['loadavg']}")
    print(f"libraries: {library_versions()}, Faker {importlib.metadata.version('faker')}\n")

    imdb = pd.read_csv(builtin_csv_path()).query("source == 'imdb'")["text"]
    imdb = imdb.sample(frac=1.0, random_state=args.seed).tolist()
    warm_up_count = 300
    needed = args.texts + args.extra_texts + warm_up_count
    if needed > len(imdb):
        ap.error(f"--texts + --extra-texts + {warm_up_count} = {needed} > {len(imdb)} IMDB reviews")
    reviews = imdb[: args.texts]
    extra_reviews = imdb[args.texts : args.texts + args.extra_texts]
    warm_reviews = imdb[needed - warm_up_count : needed]

    identifiers = Identifiers(args.seed)
    rng = random.Random(args.seed)
    counted = identifiers.counted()
    planted = plant(reviews, counted, rng)
    extras = plant(extra_reviews, identifiers.extras(), rng)
    warm_up = [p.text for p in plant(warm_reviews, counted, rng)] + warm_reviews

    start = time.perf_counter()
    desensitiser = Desensitiser(DesensitisePolicy())
    desensitiser.describe()  # builds the analyzer
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    desensitiser.apply(warm_up)
    warm_up_s = time.perf_counter() - start

    s = score(desensitiser, planted)
    hits = prose_hits(desensitiser, reviews)
    extra = score(desensitiser, extras)

    print(
        f"Recall and precision: {len(planted):,} IMDB reviews, one valid synthetic identifier "
        f"each (seed {args.seed}); default policy, score threshold 0.4, patterns only. "
        "Precision over whole planted texts counts every hit in the review's own prose as "
        "false, real dates and web addresses included (see the prose table).\n"
    )
    person = person_row(args.ner_model, reviews[:2000], args.seed)
    recall_precision_table(s, counted, Counter(h["entity"] for h in hits), len(reviews), person)
    print(
        "\nPhone numbers: Faker's numbers are kept only where libphonenumber's is_valid_number "
        "accepts them for their region (invalid numbers are out of scope): "
        + ", ".join(
            f"{region} {identifiers.phone_valid[region]}/{identifiers.phone_tries[region]}"
            for _, region in PHONE_REGIONS
        )
        + " kept."
    )
    print("\nFormats planted, one synthetic example each:\n")
    formats_table(identifiers, counted)
    print("\nFormats with misses (synthetic values; what was found over each):\n")
    format_table(s, only_missed=True, examples=3)
    print(f"\nExtra formats, outside the targets ({len(extras):,} other reviews):\n")
    format_table(extra, only_missed=False, examples=2)
    print(f"\nWhat unplanted IMDB prose triggers ({len(reviews):,} reviews):\n")
    prose_table(hits, len(reviews))

    print(
        f"\nThroughput: Desensitiser.apply, default policy (tag), median of {args.repeats} passes "
        f"after warm-up; excluded: start-up {build_s:.1f} s (analyzer) and {warm_up_s:.1f} s "
        f"warm-up over {len(warm_up)} texts (first use loads libphonenumber metadata). "
        f"Load average before: {Path('/proc/loadavg').read_text().split()[0]} (other work on "
        "the machine slows these rows).\n"
    )
    texts = {"unplanted": reviews, "planted": [p.text for p in planted]}
    rates = throughput_table(desensitiser, texts, warm_up, args.repeats)

    accuracy = []
    if args.accuracy:
        print(
            "\nAccuracy cost: fedshield simulate --epsilon 3 --seed S (10 owners, Dirichlet 0.5, "
            "40 rounds, held-out 20% of IMDB), with the default desensitisation and with "
            "--no-desensitise.\n",
            flush=True,
        )
        accuracy = accuracy_table(args.seeds)

    write_json(
        args.json,
        {
            **provenance(),
            "libraries": library_versions(),
            "texts": len(planted),
            "start_up_s": build_s,
            "warm_up_s": warm_up_s,
            "per_type": {
                e: {
                    name: getattr(s, name)[e]
                    for name in ("planted", "found", "removed", "spans", "in_sentence", "true")
                }
                | {"as_other": dict(s.as_other[e])}
                for e in DEFAULT_TYPES
            },
            "per_format": {f"{e} | {f}": dict(c) for (e, f), c in sorted(s.by_format.items())},
            "extra_formats": {
                f"{e} | {f}": dict(c) for (e, f), c in sorted(extra.by_format.items())
            },
            "missed": {f"{e} | {f}": m[:20] for (e, f), m in sorted(s.missed.items())},
            "extra_missed": {f"{e} | {f}": m[:5] for (e, f), m in sorted(extra.missed.items())},
            "prose_hits": hits,
            "texts_per_s": rates,
            "accuracy": accuracy,
        },
    )


if __name__ == "__main__":
    main()
