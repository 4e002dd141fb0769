"""Which recognizers find identifiers, and how they run offline: Presidio's, with ours
where its defaults misfire on ordinary prose or miss common forms.

Guarantee: ``pattern_recognizers`` and ``nlp_engine`` build nothing that reaches the
network (tldextract pinned to its bundled public-suffix list by ``pin_offline``; no spaCy
model unless the owner names one it installed, never downloaded). Ours, each with its
reason: web addresses (Presidio's bare-domain pattern reads an ellipsis, "film...it's",
as one: 347 in 1,500 IMDB reviews), written-out dates and ages (Presidio has none), card
numbers (its pattern misses the Mastercard 2-series and 12-19 digits), PESEL at word
boundaries (its pattern matched inside card numbers). ``OUR_PATTERNS`` is part of every
policy digest, so a fix here rebuilds every cache.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

from fedshield.common.errors import ConfigError

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


OUR_PATTERNS = (_URLS, _WRITTEN_DATES, _AGES, _CARDS, _PESEL)


def pin_offline() -> None:
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


def no_context_enhancer():
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer

    class NoContext(ContextAwareEnhancer):
        def __init__(self) -> None:
            super().__init__(0.0, 0.0, 0, 0)

        def enhance_using_context(
            self, text, raw_results, nlp_artifacts, recognizers, context=None
        ):
            return raw_results

    return NoContext()


def model_identity(ner_model: str) -> str:
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


def pattern_recognizers():
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


def nlp_engine(ner_model: str):
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
