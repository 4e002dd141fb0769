"""What the untrusted operator publishes beside the Fleet API, read by the owner's node.

Guarantee: the federation's class list (federation.json) and a removal notice are read
with a bare GET over the federation's TLS trusting only ``--ca``: no query, no body,
nothing about the owner's data; no proxy, no redirect; answers capped at
``PUBLISHED_MAX_BYTES`` and the whole exchange at ``PUBLISHED_TIMEOUT_S`` (+5 s), so a
server that drips bytes cannot hold the owner. Whatever comes back is checked against
the published format (common/federation_info.py) and shown only as printable text; a
problem is one FedshieldError, or for the class list a problem line, never fatal.
"""

from __future__ import annotations

import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedshield.common.errors import FedshieldError
from fedshield.common.federation_info import (
    FEDERATION_FORMAT,
    FEDERATION_PATH,
    NOTICE_FORMAT,
    NOTICE_PATH_PREFIX,
    notice_id,
)
from fedshield.common.json_text import json_object
from fedshield.common.plan import CLASS_NAME, MAX_CLASSES
from fedshield.common.untrusted import printable

if TYPE_CHECKING:
    from fedshield.client.node_settings import SuperNodeSettings

PUBLISHED_MAX_BYTES = 1 << 20  # federation.json and notices are small; the server is untrusted
PUBLISHED_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class FederationInfo:
    """The federation's published settings; ``classes`` None: not published (404)."""

    url: str
    classes: tuple[str, ...] | None
    model: str = ""
    problem: str = ""  # why the list could not be read, when it could not


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib's signature
        return None  # a published file is served where it is named, nowhere else


def get_published(settings: SuperNodeSettings, path: str) -> dict | None:
    """GET a JSON file the operator publishes (common/federation_info.py) over the
    federation's TLS, trusting only ``--ca``; None if the server answers 404.

    A bare GET: no query, no body, nothing about the owner's data. No proxy and no
    redirect, as for the Fleet connection itself. Answers are capped in size, the whole
    exchange in time (a server that drips bytes cannot hold the owner), and whatever
    goes wrong (a malformed answer included) is one FedshieldError whose text has no
    control characters.
    """
    outcome: list = []

    def fetch() -> None:
        try:
            outcome.append(_get_published(settings, path))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append(exc)

    worker = threading.Thread(target=fetch, daemon=True, name="fedshield-published")
    worker.start()
    worker.join(PUBLISHED_TIMEOUT_S + 5)
    url = settings.public_url(path)
    if not outcome:
        raise FedshieldError(f"{url}: no complete answer within {PUBLISHED_TIMEOUT_S + 5:.0f} s")
    result = outcome[0]
    if isinstance(result, FedshieldError):
        raise FedshieldError(printable(result, 400)) from result
    if isinstance(result, BaseException):
        raise FedshieldError(
            printable(f"{url}: unreadable answer ({type(result).__name__}: {result})", 400)
        ) from result
    return result


def _get_published(settings: SuperNodeSettings, path: str) -> dict | None:
    url = settings.public_url(path)
    handlers: list = [urllib.request.ProxyHandler({}), _NoRedirect()]
    if not settings.insecure:
        context = ssl.create_default_context(cafile=str(settings.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "fedshield-client"}
    )
    try:
        with opener.open(request, timeout=PUBLISHED_TIMEOUT_S) as answer:
            body = answer.read(PUBLISHED_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise FedshieldError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise FedshieldError(f"{url}: {reason}") from exc
    if len(body) > PUBLISHED_MAX_BYTES:
        raise FedshieldError(f"{url}: answer larger than {PUBLISHED_MAX_BYTES} bytes")
    return json_object(body, url)


def fetch_federation_info(settings: SuperNodeSettings) -> FederationInfo:
    """The class list the operator publishes; never fatal (each round checks again)."""
    url = settings.public_url(FEDERATION_PATH)
    try:
        published = get_published(settings, FEDERATION_PATH)
    except FedshieldError as exc:
        return FederationInfo(url, None, problem=str(exc))
    if published is None:
        return FederationInfo(url, None, problem="class list not published yet")
    classes = published.get("classes")
    if published.get("format") != FEDERATION_FORMAT:
        return FederationInfo(
            url,
            None,
            problem=f"unknown format {printable(published.get('format'), 60)!r} (expected "
            f"{FEDERATION_FORMAT}); the server may run another fedshield version",
        )
    if (
        not isinstance(classes, list)
        or not 2 <= len(classes) <= MAX_CLASSES
        or not all(isinstance(c, str) and CLASS_NAME.fullmatch(c.strip()) for c in classes)
    ):
        return FederationInfo(
            url,
            None,
            problem=f"its 'classes' is not a list of 2 to {MAX_CLASSES} class names (letters, "
            "digits, spaces and ._-+&/ only, 1-100 characters each)",
        )
    return FederationInfo(
        url,
        tuple(c.strip() for c in classes),
        model=printable(published.get("model", ""), 80),
    )


def fetch_removal_notice(
    settings: SuperNodeSettings, fingerprint: str, not_before: str = ""
) -> dict | None:
    """The operator's notice for this node key (``server remove-owner``), if any.

    ``not_before`` (ISO time, UTC): a notice written earlier is stale (the key was
    registered again since) and ignored.
    """
    if settings.insecure:
        return None  # no node key, so no notice addressed to this node
    try:
        notice = get_published(settings, NOTICE_PATH_PREFIX + notice_id(fingerprint))
    except FedshieldError:
        return None  # the server is gone too: the caller tells that apart
    if (
        notice is None
        or notice.get("format") != NOTICE_FORMAT
        or notice.get("fingerprint") != fingerprint
        or str(notice.get("time", "")) < not_before
    ):
        return None
    return {
        "action": printable(notice.get("action", "removed"), 40),
        "time": printable(notice.get("time", "an unknown time"), 40),
        "reason": printable(notice.get("reason", "") or "no reason given", 500),
    }
