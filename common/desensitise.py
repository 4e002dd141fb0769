"""Desensitisation at the owner: identifiers found and replaced before anything reads text.

Guarantee: ``Desensitiser.apply`` returns each text with every identifier its policy
names (``common/desensitise_policy.py``) replaced by the policy's operator, and counts
per entity type; it runs offline (Presidio's pattern and checksum recognizers, the
libphonenumber metadata and tldextract's bundled public-suffix list; no spaCy model
unless the owner names one it installed) and never prints or logs a found value. It runs
where the owner's text is read (the owner's round, ``fedshield simulate``, ``data
check``, ``predict``, ``evaluate``), so training and use see the same text. The counts
are the owner's: they go to its own audit log, never into a reply.

Which recognizers run is ``common/recognizers.py`` (Presidio's and ours). This module
decides what text they read (NFKC, invisible characters dropped, windows around
candidate characters) and which overlapping span wins. Replacement is ours
(``desensitise_policy.replacement``): Presidio's ``hash`` salts each value at random, so
it cannot give a keyed, stable pseudonym.
"""

from __future__ import annotations

import bisect
import hashlib
import json
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
from fedshield.common.recognizers import (
    OUR_PATTERNS,
    library_versions,
    model_identity,
    nlp_engine,
    no_context_enhancer,
    pattern_recognizers,
    pin_offline,
)

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

# A phone number has at least this many digits: fewer are years ("In 1692") that
# libphonenumber reads as valid pager numbers, and a window with fewer skips the costly
# phone matcher (8 regions) altogether.
_PHONE_MIN_DIGITS = 7
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class Found:
    """One identifier: its type and where it is. The value itself is never kept."""

    entity: str
    start: int
    end: int


class Desensitiser:
    """The owner's policy, ready to run: ``apply`` replaces, ``find`` only locates."""

    def __init__(self, policy: DesensitisePolicy, pseudonym_key: bytes | None = None) -> None:
        if policy.needs_key and not pseudonym_key:
            raise ConfigError("the policy's pseudonym operator needs the owner's pseudonym key")
        self.policy = policy
        self._key = pseudonym_key

    @cached_property
    def _analyzer(self):
        pin_offline()
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

        engine = nlp_engine(self.policy.ner_model)
        registry = RecognizerRegistry(supported_languages=["en"])
        for recognizer in pattern_recognizers():
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
            context_aware_enhancer=None if self.policy.ner_model else no_context_enhancer(),
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
                _PHONE_MIN_DIGITS,
                OUR_PATTERNS,
            ]
        )
        return {
            **library_versions(),
            "fedshield-recognizers": hashlib.sha256(ours.encode()).hexdigest()[:16],
            **(
                {"ner-model": model_identity(self.policy.ner_model)}
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
