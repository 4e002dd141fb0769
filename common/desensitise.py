"""Desensitisation at the owner: identifiers found and replaced before anything reads text.

Guarantee: ``Desensitiser.apply`` returns each text with every identifier its policy
names (``common/desensitise_policy.py``) replaced by the policy's operator, and counts
per entity type; it runs offline (Presidio's pattern and checksum recognizers, the
libphonenumber metadata and tldextract's bundled public-suffix list; no spaCy model
unless the owner names one it installed) and never prints or logs a found value. It runs
where the owner's text is read (the owner's round, ``fedshield simulate``, ``data
check``, ``predict``, ``evaluate``), so training and use see the same text. The counts
are the owner's: they go to its own audit log, never into a reply.

Recognition is Presidio's (presidio-analyzer), with two recognizers of our own where its
defaults misfire on ordinary prose: its bare-domain URL pattern reads an ellipsis
("film...it's") as a web address (347 in 1,500 IMDB reviews), and it has no written-out
dates or ages. Replacement is ours (``desensitise_policy.replacement``) on Presidio's
overlap-resolved spans: Presidio's ``hash`` salts each value at random, so it cannot give
a keyed, stable pseudonym.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

from fedshield.common.desensitise_policy import (
    NER_TYPES,
    DesensitisePolicy,
    policy_digest,
    replacement,
)
from fedshield.common.errors import ConfigError

# Every pattern recognizer's match holds one of these: a digit, '@' or a web address's
# mark. A text without one holds no pattern identifier, and each match lies within a
# window around one (see _windows), so only windows are analysed: 3.5x faster on IMDB,
# with the same spans (tests/unit/test_desensitise.py checks both claims).
# (\d is any Unicode digit, as Presidio's and libphonenumber's patterns read it; an IPv6
# address may be written in hex letters alone: "dead:beef::cafe".)
_CANDIDATE = re.compile(r"\d|@|://|www\.|\w\.[A-Za-z]{2,}|[0-9A-Fa-f]:[0-9A-Fa-f:]|::")
# How many whitespace-separated tokens an identifier spans on either side of a candidate
# character: a spaced IBAN is 8 groups, a written date 3 tokens, a phone number 4. Counted
# in tokens, not characters, so a long run of spaces inside an identifier stays inside.
_WINDOW_TOKENS = 8
_TOKEN = re.compile(r"\S+")
# Characters that render as nothing (zero-width spaces and joiners, soft hyphens, BOM):
# dropped from the text analysed, as are compatibility forms (fullwidth digits, NFKC).
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_LIBRARIES = ("fedshield", "presidio-analyzer", "presidio-anonymizer", "phonenumbers", "tldextract")

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_WRITTEN_DATES = (
    rf"(?i)\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:1[89]|20)\d\d\b",
    rf"(?i)\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+(?:1[89]|20)\d\d\b",
)
_AGES = (
    r"(?i)\b\d{1,3}(?:\s+|-)(?:years?|yrs?)(?:\s+|-)old\b",
    r"(?i)\bage[ds]?:?\s+\d{1,3}\b",
)
_CARDS = r"\b(?:2(?:2[2-9]\d|[3-6]\d\d|7[01]\d|720)|2131|3\d{3}|4\d{3}|5\d{3}|6\d{3}|1800)(?:[- ]?\d){8,15}\b"
_PESEL = r"\b[0-9]{2}(?:[02468][1-9]|[13579][012])(?:0[1-9]|[12][0-9]|3[01])[0-9]{5}\b"
# A phone number has at least this many digits: fewer are years ("In 1692") that
# libphonenumber reads as valid pager numbers, and a window with fewer skips the costly
# phone matcher (8 regions) altogether.
_PHONE_MIN_DIGITS = 7
_DIGIT = re.compile(r"\d")
_URL_END = r"[^\s<>\"'()\[\]]*[^\s<>\"'()\[\].,;:!?]"
_URLS = (
    rf"(?i)\b(?:https?|ftp)://{_URL_END}",
    rf"(?i)(?<![\w.@/-])www\.{_URL_END}",
    # A bare domain: common top-level domains only, never after a dot (an ellipsis).
    r"(?i)(?<![\w.@/-])(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"(?:com|org|net|edu|gov|int|io|info|biz|app|dev|ai|co|us|uk|de|fr|nl|ca|au|nz|ie|eu|"
    r"ch|es|se|dk|fi|pl|pt|gr|cz|hu|ro|ua|ru|tr|il|za|br|mx|jp|cn|kr|hk|sg|tv|ly|health|"
    r"online|site|xyz)\b"
    rf"(?:/{_URL_END})?",
)


@dataclass(frozen=True)
class Found:
    """One identifier: its type and where it is. The value itself is never kept."""

    entity: str
    start: int
    end: int


def _pin_offline() -> None:
    """tldextract (Presidio's e-mail check) fetches the public-suffix list from the
    network by default, with no timeout: an unanswering proxy hangs it. Its bundled
    snapshot is used instead, before and after import."""
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""
    import tldextract
    import tldextract.tldextract as extractor_module

    extractor_module.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    # "Recognizer not added ... language not supported" and similar: not the owner's concern.
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _no_context_enhancer():
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer

    class NoContext(ContextAwareEnhancer):
        def __init__(self) -> None:
            super().__init__(0.0, 0.0, 0, 0)

        def enhance_using_context(
            self, text, raw_results, nlp_artifacts, recognizers, context=None
        ):
            return raw_results

    return NoContext()


def _model_identity(ner_model: str) -> str:
    """The named NER model's name and version (a folder's meta.json, or the installed
    package's version), so that another model, or another version of it, gives another
    digest."""
    import spacy.util

    meta_file = os.path.join(os.path.expanduser(ner_model), "meta.json")
    if os.path.isfile(meta_file):
        meta = spacy.util.load_meta(meta_file)
        return f"{meta.get('lang', '?')}_{meta.get('name', '?')} {meta.get('version', '?')}"
    try:
        return f"{ner_model} {importlib.metadata.version(ner_model)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{ner_model} (version unknown)"


def _pattern_recognizers():
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer import predefined_recognizers as presidio

    def ours(entity: str, name: str, patterns: tuple[str, ...], score: float):
        return PatternRecognizer(
            supported_entity=entity,
            name=name,
            patterns=[Pattern(f"{name}-{i}", regex, score) for i, regex in enumerate(patterns)],
            supported_language="en",
        )

    return [
        presidio.EmailRecognizer(supported_language="en"),
        # Presidio's regions less Canada: one numbering plan with the US, whose matcher
        # finds Canadian numbers already (each region is one more pass of libphonenumber).
        presidio.PhoneRecognizer(
            supported_language="en", supported_regions=("US", "GB", "DE", "FR", "IL", "IN", "BR")
        ),
        ours("URL", "FedshieldUrlRecognizer", _URLS, 0.6),
        presidio.IpRecognizer(supported_language="en"),
        # Presidio's card pattern plus ours: Mastercard's 2-series (2221-2720), JCB 2131,
        # and 12 to 19 digits (Maestro, long Visa); every match must pass Luhn.
        presidio.CreditCardRecognizer(
            supported_language="en",
            patterns=[
                *presidio.CreditCardRecognizer.PATTERNS,
                Pattern("FedshieldCardNumbers", _CARDS, 0.3),
            ],
        ),
        presidio.IbanRecognizer(supported_language="en"),
        presidio.UsSsnRecognizer(supported_language="en"),
        presidio.NhsRecognizer(supported_language="en"),
        presidio.UkNinoRecognizer(supported_language="en"),
        presidio.EsNifRecognizer(supported_language="en"),
        presidio.ItFiscalCodeRecognizer(supported_language="en"),
        presidio.AuTfnRecognizer(supported_language="en"),
        presidio.InAadhaarRecognizer(supported_language="en"),
        # Presidio's PESEL pattern has no word boundaries: it matched inside card numbers.
        presidio.PlPeselRecognizer(
            supported_language="en", patterns=[Pattern("FedshieldPesel", _PESEL, 0.4)]
        ),
        presidio.DateRecognizer(supported_language="en"),
        ours("DATE_TIME", "FedshieldWrittenDateRecognizer", _WRITTEN_DATES, 0.6),
        ours("AGE", "FedshieldAgeRecognizer", _AGES, 0.6),
    ]


def _nlp_engine(ner_model: str):
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    if not ner_model:
        return NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "no_op",
                "models": [{"lang_code": "en", "model_name": "no_op"}],
            }
        ).create_engine()
    import spacy.util

    # Presidio downloads a model it cannot find: refused here instead (offline, and only
    # a model the owner installed and trusts).
    if not (spacy.util.is_package(ner_model) or os.path.isdir(os.path.expanduser(ner_model))):
        raise ConfigError(
            f"desensitisation policy: ner-model = {ner_model!r} is neither an installed "
            "spaCy package nor a folder; install the model you trust (pip install ...) or "
            "name its folder, or remove ner-model and the PERSON/LOCATION types"
        )
    return NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": os.path.expanduser(ner_model)}],
        }
    ).create_engine()


class Desensitiser:
    """The owner's policy, ready to run: ``apply`` replaces, ``find`` only locates."""

    def __init__(self, policy: DesensitisePolicy, pseudonym_key: bytes | None = None) -> None:
        if policy.needs_key and not pseudonym_key:
            raise ConfigError("the policy's pseudonym operator needs the owner's pseudonym key")
        self.policy = policy
        self._key = pseudonym_key

    @cached_property
    def _analyzer(self):
        _pin_offline()
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

        engine = _nlp_engine(self.policy.ner_model)
        registry = RecognizerRegistry(supported_languages=["en"])
        for recognizer in _pattern_recognizers():
            if set(recognizer.supported_entities) & set(self.policy.entities):
                registry.add_recognizer(recognizer)
        if self.policy.ner_model:
            from presidio_analyzer.predefined_recognizers import SpacyRecognizer

            registry.add_recognizer(
                SpacyRecognizer(supported_language="en", supported_entities=list(NER_TYPES))
            )
        analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=engine,
            supported_languages=["en"],
            # Without a model there are no lemmas, so context words never change a score:
            # the enhancer's pass (7% of the time) is skipped. With a model it runs.
            context_aware_enhancer=None if self.policy.ner_model else _no_context_enhancer(),
        )
        analyzer.analyze(text="warm-up 2024-01-31 a@example.org", language="en")
        return analyzer

    @cached_property
    def recognizers(self) -> tuple[str, ...]:
        """The recognizers that run, by name, as the audit log records them."""
        return tuple(sorted(r.name for r in self._analyzer.registry.recognizers))

    @cached_property
    def versions(self) -> dict[str, str]:
        """What the result depends on besides the policy and the key: the libraries, our
        own recognizers and windows (a fix to one must rebuild every cache), the model."""
        ours = json.dumps(
            [
                _CANDIDATE.pattern,
                _WINDOW_TOKENS,
                _INVISIBLE.pattern,
                _URLS,
                _WRITTEN_DATES,
                _AGES,
                _CARDS,
                _PESEL,
                _PHONE_MIN_DIGITS,
            ]
        )
        return {
            **library_versions(),
            "fedshield-recognizers": hashlib.sha256(ours.encode()).hexdigest()[:16],
            **(
                {"ner-model": _model_identity(self.policy.ner_model)}
                if self.policy.ner_model
                else {}
            ),
        }

    @cached_property
    def digest(self) -> str:
        return policy_digest(self.policy, self._key, self.versions)

    def describe(self) -> dict:
        """The policy in force, for the owner's audit log: types, operators, recognizers,
        library versions and the pseudonym key's public id; never a key or a value."""
        return {
            **self.policy.as_dict(),
            "recognizers": list(self.recognizers),
            "versions": self.versions,
            "digest": self.digest,
        }

    def find(self, text: str) -> list[Found]:
        """The identifiers in ``text``, overlaps resolved (longest, then highest score)."""
        plain, offsets = _normalised(text)
        if self.policy.ner_model:  # a model reads whole sentences
            results = self._analyze(plain, 0)
        else:
            results = [
                r for start, end in _windows(plain) for r in self._analyze(plain[start:end], start)
            ]
        if offsets is not None:  # back to the text's own characters, invisible ones included
            results = [(offsets[a], offsets[b - 1] + 1, score, e) for a, b, score, e in results]
        return _without_overlaps(results)

    def _analyze(self, text: str, offset: int) -> list[tuple[int, int, float, str]]:
        entities = list(self.policy.entities)
        if len(_DIGIT.findall(text)) < _PHONE_MIN_DIGITS and "PHONE_NUMBER" in entities:
            entities.remove("PHONE_NUMBER")
        found = self._analyzer.analyze(
            text=text,
            language="en",
            entities=entities,
            score_threshold=self.policy.score_threshold,
        )
        return [
            (r.start + offset, r.end + offset, r.score, r.entity_type)
            for r in found
            if r.entity_type != "PHONE_NUMBER"
            or len(_DIGIT.findall(text, r.start, r.end)) >= _PHONE_MIN_DIGITS
        ]

    def apply_one(self, text: str, counts: Counter | None = None) -> str:
        pieces, last = [], 0
        for found in self.find(text):
            value = text[found.start : found.end]
            pieces += [
                text[last : found.start],
                replacement(self.policy, self._key, found.entity, value),
            ]
            last = found.end
            if counts is not None:
                counts[found.entity] += 1
        return "".join(pieces) + text[last:]

    def apply(self, texts: list[str]) -> tuple[list[str], Counter]:
        """Each text desensitised, and how many identifiers of each type were replaced."""
        counts: Counter = Counter()
        return [self.apply_one(text, counts) for text in texts], counts


def _windows(text: str) -> list[tuple[int, int]]:
    """Stretches of ``text`` around its candidate characters, _WINDOW_TOKENS whole tokens
    either side, merged; their edges are whitespace, so \b reads as in the whole text."""
    if _CANDIDATE.search(text) is None:
        return []
    spans_of_tokens = [m.span() for m in _TOKEN.finditer(text)]
    starts = [start for start, _ in spans_of_tokens]
    last = len(spans_of_tokens) - 1
    windows: list[tuple[int, int]] = []
    seen_token = -1
    for match in _CANDIDATE.finditer(text):
        token = bisect.bisect_right(starts, match.start()) - 1
        if token == seen_token:
            continue  # another candidate in the same token: the same window
        seen_token = token
        end_token = bisect.bisect_left(starts, match.end()) - 1
        start = spans_of_tokens[max(0, token - _WINDOW_TOKENS)][0]
        end = spans_of_tokens[min(last, end_token + _WINDOW_TOKENS)][1]
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(end, windows[-1][1]))
        else:
            windows.append((start, end))
    return windows


def _normalised(text: str) -> tuple[str, list[int] | None]:
    """``text`` as the recognizers should read it (NFKC: fullwidth and other compatibility
    forms to their plain forms; invisible characters dropped), with each character's
    offset in ``text``; (text, None) when it is already so (the common, fast case)."""
    if unicodedata.is_normalized("NFKC", text) and _INVISIBLE.search(text) is None:
        return text, None
    pieces, offsets = [], []
    for offset, char in enumerate(text):
        if _INVISIBLE.match(char):
            continue
        plain = unicodedata.normalize("NFKC", char)
        pieces.append(plain)
        offsets.extend([offset] * len(plain))
    offsets.append(len(text))
    return "".join(pieces), offsets


# Types that many numbers satisfy: on the same span, a type with its own checksum and
# format (an Aadhaar, NHS or tax number) is the better name than a Luhn-valid "card" or
# a "phone number" (one in ten 12-digit numbers passes Luhn).
_GENERIC_TYPES = {"PHONE_NUMBER": 0, "CREDIT_CARD": 1}


def _without_overlaps(results: list[tuple[int, int, float, str]]) -> list[Found]:
    """Non-overlapping spans: the longest wins (an e-mail over the URL inside it; a card
    number over the phone number its first digits make), then the more specific type,
    then the higher score."""
    kept: list[tuple[int, int, float, str]] = []
    ranked = sorted(
        set(results),
        key=lambda r: (-(r[1] - r[0]), _GENERIC_TYPES.get(r[3], 2) * -1, -r[2], r[0], r[3]),
    )
    for result in ranked:
        if all(result[1] <= k[0] or result[0] >= k[1] for k in kept):
            kept.append(result)
    return [Found(entity, start, end) for start, end, _, entity in sorted(kept)]


def desensitiser_for(
    enabled: bool, policy_path: str, pseudonym_key: bytes | None
) -> Desensitiser | None:
    """The owner's desensitiser from its settings (None: the owner turned it off); one per
    policy and key in a process, so that its recognizers are built once, not each round."""
    if not enabled:
        return None
    policy = DesensitisePolicy.from_file(policy_path) if policy_path else DesensitisePolicy()
    key = (policy, policy.source, pseudonym_key)
    if key not in _BUILT:
        _BUILT[key] = Desensitiser(policy, pseudonym_key)
    return _BUILT[key]


_BUILT: dict[tuple, Desensitiser] = {}
