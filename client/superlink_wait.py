"""Waiting for the federation's SuperLink before the owner's node starts.

Guarantee: the SuperLink is probed with TLS trusting only the federation's CA (or, with
``--insecure``, a bare TCP connection) and nothing else is sent; attempts follow the
owner's ``RetryPolicy`` (client/node_settings.py), each failed one reported with its
number, the error and the next wait; a certificate or TLS protocol error, which waiting
does not mend, fails at once; a stop signal ends the wait within 0.1 s.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fedshield.client.node_settings import split_address
from fedshield.common.errors import FedshieldError, StoppedBySignal, SuperLinkUnreachable
from fedshield.common.pki import certificate_sha256, probe_tls_endpoint

if TYPE_CHECKING:
    from fedshield.client.node_settings import SuperNodeSettings
    from fedshield.client.stop_signals import StopSignals


def _retryable(exc: OSError) -> bool:
    """Worth waiting for: refused, reset, timed out, unreachable, a name not resolving
    (yet), a TLS handshake cut short by a server that is starting. Not: a certificate
    or TLS protocol error, which waiting does not mend (Flower gives up on those too)."""
    if isinstance(exc, ssl.SSLError):
        return isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
    return True


def _probe_once(settings: SuperNodeSettings) -> dict:
    if settings.insecure:
        host, port = split_address(settings.superlink)
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


def superlink_answers(settings: SuperNodeSettings) -> bool:
    try:
        _probe_once(settings)
    except OSError:
        return False
    return True
