"""A data owner's side of a real federation: a SuperNode next to the owner's data.

``fedshield client start``, in this order:

1. ``check_inputs``: the address, numbers, CA file, node key and data path, before any
   heavy import (a typo answers in about a second);
2. ``check_local``: the data file, delta against N, the ledger and the budget left. Local
   problems fail here, at once, never after a wait;
3. ``connect``: wait for the SuperLink (a TLS probe trusting only the federation's CA,
   retried with backoff under ``RetryPolicy``, each attempt printed), then read the class
   list the operator publishes (common/federation_info.py) and compare it with the
   owner's labels: labels the federation lacks refuse the start, since every round would
   be refused. Nothing about the owner's data is sent: a bare GET;
4. ``record_node_start`` (the node's identity, the TLS peer, the wait, the class list),
   then ``run_supernode``: ``flower-supernode`` with TLS and node authentication plus
   fedshield's warm executor, until a stop signal, the SuperLink's departure, the
   operator's removal of this node, or a failure; ``record_node_stop`` says which.

Exit codes of ``client start`` beyond the errors' own (common/errors.py):
``EXIT_SUPERLINK_UNREACHABLE`` (69, gave up reaching the SuperLink, at start or later),
``EXIT_REMOVED`` (77, the operator removed this node), 128 + the signal for a stop on
SIGINT (130) or SIGTERM (143), and flower-supernode's own status when it failed.

The ClientApp that Flower starts for each message reads the owner's settings from the
node config built here, never from the server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedshield.client.supernode_launcher import supernode_program
from fedshield.common.audit_events import Event
from fedshield.common.audit_log import AuditLog
from fedshield.common.config import CLASS_NAME, MAX_CLASSES, OwnerConfig, split_class_names
from fedshield.common.errors import ConfigError, DataError, FedshieldError
from fedshield.common.federation_info import (
    FEDERATION_FORMAT,
    FEDERATION_PATH,
    NOTICE_FORMAT,
    NOTICE_PATH_PREFIX,
    notice_id,
)
from fedshield.common.pki import (
    certificate_sha256,
    check_private_key_file,
    node_key_fingerprint,
    probe_tls_endpoint,
)
from fedshield.common.processes import die_with_parent, flower_env
from fedshield.common.untrusted import printable

if TYPE_CHECKING:  # torch-free at import: the CLI checks its inputs before loading these
    from fedshield.common.data import TextDataset

EXIT_SUPERLINK_UNREACHABLE = 69  # sysexits EX_UNAVAILABLE
EXIT_REMOVED = 77  # sysexits EX_NOPERM: the federation no longer admits this node
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL: Flower's own forced exit waits 5 s
RETRY_FIRST_DELAY_S = 1.0
RETRY_MAX_DELAY_S = 20.0  # flower-supernode's cap (flwr.common.constant.MAX_RETRY_DELAY)
PUBLISHED_MAX_BYTES = 1 << 20  # federation.json and notices are small; the server is untrusted
PUBLISHED_TIMEOUT_S = 10.0

# flower-supernode's failure lines, and what the data owner can do about each.
KNOWN_FAILURES = (
    (
        "Failed to activate SuperNode",
        "the SuperLink does not know this node's key: send {pub} "
        "(fingerprint {fingerprint}) to the operator to register",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired",
        "the SuperLink's certificate has expired: ask the operator to renew it",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the SuperLink's certificate is not signed by {ca}: check --ca with the operator",
    ),
    (
        "Server disconnected without sending a response",
        "the SuperLink speaks TLS; do not use --insecure",
    ),
    (
        "Unable to parse the private key file",
        "{key} is not an OpenSSH private key; make one with `fedshield pki node`",
    ),
)


class SuperLinkUnreachable(FedshieldError):
    """The SuperLink did not answer within the owner's retry limits."""

    exit_code = EXIT_SUPERLINK_UNREACHABLE


class StoppedBySignal(FedshieldError):
    """SIGINT or SIGTERM arrived while the node waited for the SuperLink."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass(frozen=True)
class RetryPolicy:
    """When the owner's node gives up reaching the SuperLink, before and after it joined.

    The semantics are flower-supernode's own (flwr 1.42, ``RetryInvoker`` in
    ``fleet_http_connection.py``), which gets the same two numbers: after a failed
    attempt the node tries again, at most ``max_retries`` times (``max_retries + 1``
    attempts in all), and not once ``max_wait_time_s`` seconds have passed since the
    first failed attempt's start; 0 lifts either limit (fedshield then passes no flag:
    Flower's default, retry for ever). Waits double from 1 s up to 20 s, as Flower's
    (which adds random jitter to each).
    """

    max_retries: int = 0
    max_wait_time_s: float = 0.0

    def gives_up(self, attempts: int, elapsed_s: float) -> bool:
        """After ``attempts`` failed attempts, the last started ``elapsed_s`` after the first."""
        return (self.max_retries > 0 and attempts >= self.max_retries + 1) or (
            self.max_wait_time_s > 0 and elapsed_s >= self.max_wait_time_s
        )

    def delay_s(self, attempts: int, elapsed_s: float) -> float:
        delay = min(RETRY_FIRST_DELAY_S * 2 ** (attempts - 1), RETRY_MAX_DELAY_S)
        if self.max_wait_time_s > 0:  # the last attempt starts at the limit, not after it
            delay = max(0.0, min(delay, self.max_wait_time_s - elapsed_s))
        return delay

    def describe(self) -> str:
        limits = [f"--max-retries {self.max_retries}"] if self.max_retries else []
        if self.max_wait_time_s:
            limits.append(f"--max-wait-time {self.max_wait_time_s:g} s")
        return ", ".join(limits) or "no limit"


@dataclass(frozen=True)
class SuperNodeSettings:
    superlink: str
    ca: Path | None
    auth_key: Path | None
    owner: OwnerConfig
    port: int = 9094
    insecure: bool = False
    max_retries: int = 0
    max_wait_time_s: float = 0.0

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.max_wait_time_s)

    def public_url(self, path: str) -> str:
        """A file the operator publishes beside the Fleet API (common/federation_info.py)."""
        return f"{'http' if self.insecure else 'https'}://{self.superlink}{path}"


@dataclass(frozen=True)
class LocalChecks:
    """What the owner's own machine says, before any connection."""

    dataset: TextDataset
    epsilon_spent: float
    node_key_fingerprint: str


@dataclass(frozen=True)
class FederationInfo:
    """The federation's published settings; ``classes`` None: not published (404)."""

    url: str
    classes: tuple[str, ...] | None
    model: str = ""
    problem: str = ""  # why the list could not be read, when it could not


@dataclass(frozen=True)
class Readiness:
    dataset: TextDataset
    epsilon_spent: float
    node_key_fingerprint: str
    transport: dict
    federation: FederationInfo | None = None
    superlink_wait: dict = field(default_factory=dict)


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--superlink {address!r}: expected HOST:PORT, e.g. fl.example.org:9092 "
            "(the address the operator gave you)"
        )
    return host.strip("[]"), int(port)


def check_inputs(settings: SuperNodeSettings) -> None:
    """Everything that needs no heavy import: typos answer in about a second."""
    _split_address(settings.superlink)
    if not 0 < settings.port < 65536:
        raise ConfigError(f"--port {settings.port}: must be a TCP port, 1-65535")
    if settings.max_retries < 0:
        raise ConfigError(f"--max-retries {settings.max_retries}: must be >= 0 (0 = no limit)")
    if settings.max_wait_time_s < 0:
        raise ConfigError(
            f"--max-wait-time {settings.max_wait_time_s:g}: must be >= 0 seconds (0 = no limit)"
        )
    if not settings.insecure:
        if settings.ca is None or not settings.ca.is_file():
            raise ConfigError(
                f"--ca {settings.ca}: the federation's CA certificate file (ca.crt) is required; "
                "check the path"
            )
        try:
            certificate_sha256(settings.ca)
        except ValueError as exc:
            raise ConfigError(
                f"--ca {settings.ca}: not a PEM certificate ({exc}); pass the federation's "
                "ca.crt from the operator"
            ) from exc
        if settings.auth_key is None:
            raise ConfigError(
                "--auth-key is required: the node's private key from `fedshield pki node NAME`"
            )
        check_private_key_file(settings.auth_key)
        node_key_fingerprint(settings.auth_key)
    data = Path(settings.owner.data_path).expanduser()
    # A bare word may be a built-in data set, which load_dataset knows; a path must exist.
    if (data.suffix or os.sep in settings.owner.data_path) and not data.exists():
        raise DataError(f"{data}: no such file; check the path passed to --data")
    if data.is_dir():
        raise DataError(f"{data}: is a directory; pass the data file itself")


def check_local(settings: SuperNodeSettings) -> LocalChecks:
    """The data, delta and the ledger: everything a data owner should see fail here,
    before waiting for or talking to the federation."""
    from fedshield.client.ledger import PrivacyLedger
    from fedshield.common.data import load_dataset
    from fedshield.common.privacy import check_delta

    owner = settings.owner
    fingerprint = (
        "none (insecure mode: no node authentication)"
        if settings.insecure
        else node_key_fingerprint(settings.auth_key)
    )
    dataset = load_dataset(
        owner.data_path, owner.text_column, owner.label_column, split_class_names(owner.classes)
    )
    check_delta(owner.delta, len(dataset))
    spent = PrivacyLedger(owner.ledger_dir).epsilon(owner.delta)
    return LocalChecks(dataset, spent, fingerprint)


class StopSignals:
    """SIGINT and SIGTERM recorded instead of raised, so that the node stops its children
    before it exits; loops poll ``received`` or wait with ``sleep``.

    Installed explicitly for both: a client started in the background of a
    non-interactive shell inherits SIGINT as ignored, and Python then installs no
    handler of its own, so Ctrl-C or ``kill -INT`` would do nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, _frame) -> None:
        self.received = self.received or signum

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if a stop signal arrives; True if one did."""
        deadline = time.monotonic() + seconds
        while self.received is None and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""


def interrupt_on_sigint() -> None:
    """Until ``StopSignals`` takes over: Ctrl-C interrupts the local checks even when the
    client inherited SIGINT as ignored (see ``StopSignals``)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _retryable(exc: OSError) -> bool:
    """Worth waiting for: refused, reset, timed out, unreachable, a name not resolving
    (yet), a TLS handshake cut short by a server that is starting. Not: a certificate
    or TLS protocol error, which waiting does not mend (Flower gives up on those too)."""
    if isinstance(exc, ssl.SSLError):
        return isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
    return True


def _probe_once(settings: SuperNodeSettings) -> dict:
    if settings.insecure:
        host, port = _split_address(settings.superlink)
        with socket.create_connection((host, port), timeout=5.0):
            return {"mode": "INSECURE plaintext (--insecure)", "superlink": settings.superlink}
    probe = probe_tls_endpoint(settings.superlink, settings.ca)
    return {
        **probe,
        "superlink": settings.superlink,
        "ca-sha256": certificate_sha256(settings.ca),
    }


def wait_for_superlink(
    settings: SuperNodeSettings,
    stops: StopSignals,
    on_line: Callable[[str], None] = print,
    *,
    single_attempt: bool = False,
) -> tuple[dict, dict]:
    """Probe the SuperLink until it answers, under ``settings.retry``; each failed
    attempt is printed with its number, the error and the next wait.

    Returns the transport evidence (TLS version, peer certificate) and the wait
    (attempts, seconds). ``single_attempt``: one try (``--check-only`` answers now).
    """
    policy = settings.retry
    start = time.monotonic()
    attempts = 0
    while True:
        attempt_start = time.monotonic() - start
        attempts += 1
        try:
            transport = _probe_once(settings)
        except OSError as exc:
            if not _retryable(exc):
                raise FedshieldError(
                    f"cannot reach {settings.superlink} over TLS trusting {settings.ca}: {exc}; "
                    "check the address, the operator's firewall, and that --ca is the "
                    "federation's CA"
                ) from exc
            waited = time.monotonic() - start
            if single_attempt or policy.gives_up(attempts, attempt_start):
                limit = "--check-only tries once" if single_attempt else policy.describe()
                raise SuperLinkUnreachable(
                    f"gave up reaching the SuperLink at {settings.superlink} after {attempts} "
                    f"attempt(s) in {waited:.1f} s ({limit}); last error: {exc}. Check that the "
                    "operator's `fedshield server start` is running, that the address and port "
                    "are the ones the operator gave you, and that no firewall blocks them; "
                    "to wait longer raise --max-retries / --max-wait-time (0 = no limit)"
                ) from exc
            delay = policy.delay_s(attempts, waited)
            of = f" of {policy.max_retries + 1}" if policy.max_retries else ""
            on_line(
                f"fedshield: SuperLink {settings.superlink} not reachable yet (attempt "
                f"{attempts}{of}, {waited:.0f} s): {exc}; next attempt in {delay:.0f} s"
            )
            if stops.sleep(delay):
                raise StoppedBySignal(
                    f"stopped by {stops.name} while waiting for the SuperLink at "
                    f"{settings.superlink} ({attempts} attempt(s), {waited:.0f} s)",
                    stops.received,
                ) from exc
            continue
        waited = time.monotonic() - start
        if attempts > 1:
            on_line(
                f"fedshield: SuperLink {settings.superlink} answered after {attempts} attempts "
                f"({waited:.0f} s)"
            )
        return transport, {"attempts": attempts, "waited-s": round(waited, 1)}


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
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FedshieldError(f"{url}: not JSON ({type(exc).__name__})") from exc
    if not isinstance(value, dict):
        raise FedshieldError(f"{url}: not a JSON object")
    return value


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


@dataclass(frozen=True)
class ClassCheck:
    """The owner's labels against the federation's published class list."""

    federation: tuple[str, ...]
    unknown_labels: dict[str, int]  # the owner's labels the federation lacks: records
    without_records: tuple[str, ...]  # federation classes the owner has no record of
    declared: tuple[str, ...] | None  # the owner's --classes, if set

    @property
    def declared_differs(self) -> bool:
        return self.declared is not None and self.declared != self.federation

    @property
    def refused(self) -> bool:
        """Every round would be refused: the owner's data or --classes cannot take part."""
        return bool(self.unknown_labels) or self.declared_differs


def compare_classes(dataset: TextDataset, info: FederationInfo, declared: str) -> ClassCheck:
    counts = {name: n for name, n in dataset.class_counts().items() if n > 0}
    federation = info.classes or ()
    return ClassCheck(
        federation=federation,
        unknown_labels={name: n for name, n in counts.items() if name not in federation},
        without_records=tuple(c for c in federation if c not in counts),
        declared=split_class_names(declared),
    )


def class_report(info: FederationInfo, check: ClassCheck | None) -> list[str]:
    """What ``client start`` prints about the federation's classes."""
    if check is None:
        return [f"federation classes: not checked: {info.problem} ({info.url})"]
    shown = ", ".join(printable(c, 60) for c in check.federation[:50])
    more = f", ... ({len(check.federation)} classes)" if len(check.federation) > 50 else ""
    lines = [
        f"federation classes ({len(check.federation)}, published by the operator at "
        f"{info.url}): {shown}{more}" + (f"; model {info.model}" if info.model else "")
    ]
    if check.unknown_labels:
        labels = ", ".join(f"{k} ({v} records)" for k, v in check.unknown_labels.items())
        lines.append(f"PROBLEM: labels in your data that the federation lacks: {labels}")
    if check.declared_differs:
        lines.append(
            f"PROBLEM: your --classes {','.join(check.declared)} differ from the federation's "
            "list (names and order must match)"
        )
    if check.without_records:
        names = ", ".join(printable(c, 60) for c in check.without_records[:20])
        lines.append(
            f"note: federation classes you have no records of: {names} (fine: you train on "
            "the classes you have)"
        )
    if not check.refused:
        lines.append("your labels are all among the federation's classes")
    return lines


def refuse_class_mismatch(settings: SuperNodeSettings, check: ClassCheck) -> None:
    """Refuse to join a federation whose every round this owner would refuse."""
    federation = ",".join(printable(c, 60) for c in check.federation)
    if check.unknown_labels:
        labels = ", ".join(check.unknown_labels)
        raise DataError(
            f"{settings.owner.data_path}: labels {labels} are not among the federation's classes "
            f"[{federation}], so every round would be refused; relabel or remove those rows, "
            "or ask the operator to add the class(es), then start again"
        )
    if check.declared_differs:
        raise ConfigError(
            f"--classes {','.join(check.declared)} differ from the federation's classes "
            f"[{federation}], so every plan would be refused; pass --classes "
            f"{shlex.quote(','.join(check.federation))} "
            "or leave --classes unset"
        )


def check_federation_classes(
    settings: SuperNodeSettings, readiness: Readiness, on_line: Callable[[str], None] = print
) -> None:
    """Print the federation's class list against the owner's labels; refuse to join when
    every round would be refused."""
    info = readiness.federation
    check = (
        compare_classes(readiness.dataset, info, settings.owner.classes) if info.classes else None
    )
    for line in class_report(info, check):
        on_line(line)
    if check is not None:
        refuse_class_mismatch(settings, check)


def connect(
    settings: SuperNodeSettings,
    local: LocalChecks,
    stops: StopSignals,
    on_line: Callable[[str], None] = print,
    *,
    single_attempt: bool = False,
) -> Readiness:
    """Wait for the SuperLink, then read the federation's class list (not yet checked:
    see ``compare_classes`` and ``refuse_class_mismatch``)."""
    transport, waited = wait_for_superlink(settings, stops, on_line, single_attempt=single_attempt)
    return Readiness(
        local.dataset,
        local.epsilon_spent,
        local.node_key_fingerprint,
        transport,
        fetch_federation_info(settings),
        waited,
    )


def node_config(settings: SuperNodeSettings, readiness: Readiness) -> dict:
    owner = settings.owner
    transport = (
        "INSECURE plaintext, no node authentication"
        if settings.insecure
        else f"tls {readiness.transport['tls-version']}; server-cert-sha256={readiness.transport['peer-certificate-sha256']}; "
        f"supernode-auth key {readiness.node_key_fingerprint}"
    )
    return {
        "data-path": str(Path(owner.data_path).resolve()),
        "text-column": owner.text_column,
        "label-column": owner.label_column,
        "epsilon-budget": owner.epsilon_budget,
        "delta": owner.delta,
        "ledger-dir": str(Path(owner.ledger_dir).expanduser().resolve()),
        "audit-dir": str(Path(owner.audit_dir).expanduser().resolve()),
        "cache-dir": str(Path(owner.cache_dir).expanduser().resolve()) if owner.cache_dir else "",
        # Default label from the node key (public), never from the data's fingerprint.
        "owner-id": owner.owner_id or _default_owner_id(readiness.node_key_fingerprint),
        "device": owner.device,
        "transport": transport,
        "allow-no-dp": owner.allow_no_dp,
        "allow-evaluate": owner.allow_evaluate,
        "evaluate-noise-multiplier": owner.evaluate_noise_multiplier,
        "run-epsilon-cap": owner.run_epsilon_cap,
        # Settled now, not per round: the owner's --classes, else the federation's
        # published list (the mismatch was shown on this console only). A round's class
        # check is then a comparison of settings, never a question about the records.
        "classes": owner.classes or _published_classes(readiness),
        "count-noise": owner.count_noise,
        "public-record-count": owner.public_record_count,
    }


def _published_classes(readiness: Readiness) -> str:
    federation = readiness.federation
    return ",".join(federation.classes) if federation and federation.classes else ""


def _default_owner_id(node_key_fingerprint: str) -> str:
    digest = node_key_fingerprint.removeprefix("SHA256:")
    return f"owner-{digest[:8]}" if not digest.startswith("none") else "owner"


def _node_config_argument(values: dict) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):  # TOML spells booleans in lower case
            text = "true" if value else "false"
        else:
            text = f"'{value}'" if isinstance(value, str) else repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def supernode_command(settings: SuperNodeSettings, config: dict, secret_file: Path) -> list[str]:
    """flower-supernode with process isolation: fedshield's warm executor runs the apps."""
    args = [
        *supernode_program(),
        "--superlink",
        settings.superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.port),
        "--node-config",
        _node_config_argument(config),
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(secret_file),
    ]
    # RetryPolicy: 0 lifts a limit, which for Flower is the flag's absence.
    if settings.max_retries:
        args += ["--max-retries", str(settings.max_retries)]
    if settings.max_wait_time_s:
        args += ["--max-wait-time", str(settings.max_wait_time_s)]
    if settings.insecure:
        return [*args, "--insecure"]
    return [
        *args,
        "--root-certificates",
        str(settings.ca),
        "--auth-supernode-private-key",
        str(settings.auth_key),
    ]


def _owner_audit(config: dict) -> AuditLog:
    return AuditLog(Path(config["audit-dir"]) / "audit.jsonl", actor=config["owner-id"])


def record_node_start(settings: SuperNodeSettings, readiness: Readiness, config: dict) -> None:
    audit = _owner_audit(config)
    if settings.insecure:
        audit.append(
            Event.INSECURE_MODE_WARNING,
            warning="no TLS and no node authentication: traffic is readable and forgeable",
        )
    federation = readiness.federation
    audit.append(
        Event.NODE_START,
        **{
            "superlink": settings.superlink,
            "node-key-fingerprint": readiness.node_key_fingerprint,
            "transport": readiness.transport,
            "superlink-wait": readiness.superlink_wait,
            "retry-policy": settings.retry.describe(),
            "federation-classes": (
                list(federation.classes)
                if federation and federation.classes
                else f"not checked: {federation.problem if federation else 'not read'}"
            ),
            "data-fingerprint": readiness.dataset.fingerprint,
            "records": len(readiness.dataset),
            "class-counts": readiness.dataset.class_counts(),
            "epsilon-budget": settings.owner.epsilon_budget,
            "epsilon-spent": readiness.epsilon_spent,
            "delta": settings.owner.delta,
        },
    )
    audit.checkpoint("node-start")


@dataclass(frozen=True)
class NodeStop:
    """Why the node stopped: ``reason`` is one of STOP_REASONS."""

    reason: str
    exit_code: int
    message: str
    details: dict = field(default_factory=dict)


STOP_SIGNAL, STOP_REMOVED, STOP_SUPERLINK_GONE, STOP_FAILED = (
    "signal",
    "removed",
    "superlink-gone",
    "failed",
)
STOP_REASONS = (STOP_SIGNAL, STOP_REMOVED, STOP_SUPERLINK_GONE, STOP_FAILED)


def record_node_stop(config: dict, stop: NodeStop) -> None:
    audit = _owner_audit(config)
    audit.append(
        Event.NODE_STOP,
        **{"reason": stop.reason, "exit-code": stop.exit_code, "message": stop.message},
        **stop.details,
    )
    audit.checkpoint("node-stop")


def exit_at_once(code: int) -> None:
    """End ``client start`` once the node has stopped and its stop is recorded (fsynced).

    Why not a normal exit: the interpreter's teardown with torch and Opacus loaded took
    1-3 s more on the development machine, after the children were already gone; a
    stopped node should give the shell back at once. Nothing is left to flush but the
    standard streams.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def explain_failure(output: str, settings: SuperNodeSettings) -> str | None:
    for pattern, advice in KNOWN_FAILURES:
        if pattern in output:
            pub = f"{settings.auth_key}".removesuffix(".key") + ".pub" if settings.auth_key else "?"
            fingerprint = (
                node_key_fingerprint(settings.auth_key)
                if settings.auth_key and not settings.insecure
                else "?"
            )
            return f"{pattern}: " + advice.format(
                pub=pub, fingerprint=fingerprint, ca=settings.ca, key=settings.auth_key
            )
    return None


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


def _superlink_answers(settings: SuperNodeSettings) -> bool:
    try:
        _probe_once(settings)
    except OSError:
        return False
    return True


# flower-supernode 1.42's lines that say where it stands.
CONNECTED_LINE = "SuperNode ID:"
GAVE_UP_LINE = "Giving up reconnection after"


def _why_supernode_ended(
    settings: SuperNodeSettings,
    status: int | None,
    output: str,
    fingerprint: str,
    started: str = "",
) -> NodeStop:
    """Why flower-supernode ended (``status`` None: it gave up a call and hung, stopped by us).

    What flower-supernode 1.42 does, seen on 127.0.0.1: when the operator unregisters the
    node, the SuperLink answers its next heartbeat or poll with HTTP 401, it signals
    itself SIGINT and exits 0 ("SuperNode terminated gracefully."); when its key is not
    registered at start it exits 1 ("Failed to activate SuperNode"); when the SuperLink
    goes away after the node joined and its retries run out, it logs "Giving up
    reconnection after ..." and the error, then hangs (its Runtime API thread keeps the
    process alive), which is why the caller stops it on that line. The operator's notice,
    then whether the SuperLink still answers, tell these apart.
    """
    if status in (0, None) or "Failed to activate SuperNode" in output:
        # A node that joined in this session was removed after ``started``; one refused at
        # once may have been removed at any time before.
        joined = CONNECTED_LINE in output
        notice = fetch_removal_notice(settings, fingerprint, started if joined else "")
        if notice is not None:
            return NodeStop(
                STOP_REMOVED,
                EXIT_REMOVED,
                f"{notice['action']} by the operator at {notice['time']}: {notice['reason']}",
                {"operator-notice": notice},
            )
    if status in (0, None) and not _superlink_answers(settings):
        return NodeStop(
            STOP_SUPERLINK_GONE,
            EXIT_SUPERLINK_UNREACHABLE,
            f"the SuperLink at {settings.superlink} went away and the SuperNode gave up "
            f"reconnecting ({settings.retry.describe()}); start again when the operator's "
            "server is back, or raise --max-retries / --max-wait-time (0 = no limit)",
        )
    if status == 0:
        return NodeStop(
            STOP_REMOVED,
            EXIT_REMOVED,
            f"the SuperLink no longer accepts this node's key ({fingerprint}) and published no "
            "reason; ask the operator",
        )
    if status is None:
        last = next((ln for ln in reversed(output.splitlines()) if ln.strip()), "")
        return NodeStop(
            STOP_FAILED,
            1,
            f"flower-supernode gave up a call to the SuperLink, which still answers: "
            f"{last.strip()[-300:]}; start again",
        )
    advice = explain_failure(output, settings)
    return NodeStop(
        STOP_FAILED,
        status,
        advice or f"flower-supernode exited with status {status}; see its output above",
        {"supernode-status": status},
    )


def _stop_process_groups(children: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM each child's process group, SIGKILL what is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _groups_alive(children):
            time.sleep(0.05)
        if not _groups_alive(children):
            return


def _groups_alive(children: list[subprocess.Popen]) -> bool:
    return sum(_group_alive(c) for c in children) > 0  # every child polled: none left a zombie


def _group_alive(child: subprocess.Popen) -> bool:
    child.poll()  # reap the leader: a zombie would keep its group looking alive
    try:
        os.killpg(child.pid, 0)
    except ProcessLookupError:
        return False
    return _live_member(child.pid)


def _live_member(pgid: int) -> bool:
    """Whether a process of group ``pgid`` runs. ``killpg(pgid, 0)`` also succeeds while
    an orphaned member (a task the executor forked) waits, a zombie, for an init that
    reaps slowly; /proc tells them apart on Linux."""
    procfs = Path("/proc")
    if not (procfs / "self" / "stat").is_file():
        return True
    for stat in procfs.glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(group) == pgid and state != "Z":
            return True
    return False


def run_supernode(
    settings: SuperNodeSettings,
    config: dict,
    stops: StopSignals,
    fingerprint: str,
    on_line: Callable[[str], None] = print,
) -> NodeStop:
    """Run flower-supernode in the foreground, echoing its output, until it ends or a
    stop signal arrives; returns why it stopped.

    The SuperNode runs with process isolation next to fedshield's warm executor
    (client/executor.py), which it authenticates with a fresh random secret. Each runs in
    its own process group: when either exits, or we are stopped, both groups go
    (SIGTERM, then SIGKILL after ``STOP_GRACE_S``), including any task still running.
    """
    if stops.received is not None:
        return NodeStop(STOP_SIGNAL, 128 + stops.received, f"stopped by {stops.name}")
    # Same form as a notice's time (common/federation_info.py), so the two compare.
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    secret_dir = Path(tempfile.mkdtemp(prefix="fedshield-superexec-"))
    secret_file = secret_dir / "secret"
    secret_file.write_bytes(secrets.token_bytes(32))
    secret_file.chmod(0o600)
    children: list[subprocess.Popen] = []
    tail: list[str] = []
    connected, gave_up = threading.Event(), threading.Event()

    def pump(stream, watch: bool) -> None:
        for line in stream:
            on_line(line.rstrip("\n"))
            tail.append(line)
            del tail[:-40]
            if watch and CONNECTED_LINE in line:
                connected.set()
            # Before it joined, flower-supernode exits by itself when it gives up.
            if watch and connected.is_set() and GAVE_UP_LINE in line:
                gave_up.set()

    readers: list[threading.Thread] = []
    try:
        proc = subprocess.Popen(
            supernode_command(settings, config, secret_file),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=flower_env(),
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        children.append(proc)
        executor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedshield.client.executor",
                "--runtime-api-address",
                f"127.0.0.1:{settings.port}",
                "--superexec-auth-secret-file",
                str(secret_file),
                "--owner-settings",
                json.dumps(config),
                "--parent-pid",
                str(os.getpid()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Look for new tasks every 50 ms instead of Flower's default 1 s.
            env={
                **flower_env(),
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
                # The executor forks every task: ask NVML, not the CUDA driver, whether a GPU
                # exists, since a driver initialised before fork is unusable in the children.
                "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
            },
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        children.append(executor)
        readers = [
            threading.Thread(target=pump, args=(p.stdout, p is proc), daemon=True) for p in children
        ]
        for reader in readers:
            reader.start()
        while (
            stops.received is None
            and proc.poll() is None
            and executor.poll() is None
            and not gave_up.is_set()
        ):
            time.sleep(0.1)
        executor_status = executor.poll() if proc.poll() is None and not gave_up.is_set() else None
    finally:
        stopping_since = time.monotonic()
        _stop_process_groups(children, STOP_GRACE_S)
        stop_s = time.monotonic() - stopping_since
        for reader in readers:
            reader.join(timeout=2)
        shutil.rmtree(secret_dir, ignore_errors=True)
    if stops.received is not None:
        return NodeStop(
            STOP_SIGNAL,
            128 + stops.received,
            f"stopped by {stops.name}: the SuperNode and its executor are down (in {stop_s:.1f} s)",
            {"signal": stops.name},
        )
    if executor_status is not None:
        return NodeStop(
            STOP_FAILED,
            1,
            f"fedshield's executor exited with status {executor_status}; see its output "
            "above, then start again",
            {"executor-status": executor_status},
        )
    status = None if gave_up.is_set() else proc.returncode
    return _why_supernode_ended(settings, status, "".join(tail), fingerprint, started)
