"""The settings of an owner's deployed node, checked before any heavy import.

Guarantee: ``check_inputs`` refuses a malformed address, port, retry limit, CA file,
node key or data path in about a second, before torch, Opacus or Flower is imported and
before anything is sent; every refusal names the value and the fix. ``RetryPolicy`` is
the one rule for when the node gives up reaching the SuperLink, and flower-supernode gets
the same two numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedshield.common.config import OwnerConfig
from fedshield.common.errors import ConfigError, DataError
from fedshield.common.owner_keys import check_private
from fedshield.common.pki import certificate_sha256, check_private_key_file, node_key_fingerprint

RETRY_FIRST_DELAY_S = 1.0
RETRY_MAX_DELAY_S = 20.0  # flower-supernode's cap (flwr.common.constant.MAX_RETRY_DELAY)


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


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--superlink {address!r}: expected HOST:PORT, e.g. fl.example.org:9092 "
            "(the address the operator gave you)"
        )
    return host.strip("[]"), int(port)


def check_inputs(settings: SuperNodeSettings) -> None:
    """Everything that needs no heavy import: typos answer in about a second."""
    split_address(settings.superlink)
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
    check_private_folders(settings)


def check_private_folders(settings: SuperNodeSettings) -> None:
    """The owner's ledger, audit, cache and key folders, where they exist, are the owner's
    alone: one that its group or others can read or enter is refused with the fix (the
    cache holds encodings of the owner's text, the key folder its keys; the ledger and
    log, its spending). Folders fedshield creates itself are made 0700."""
    owner = settings.owner
    for flag, folder in (
        ("--ledger-dir", owner.ledger_dir),
        ("--audit-dir", owner.audit_dir),
        ("--cache-dir", owner.cache_dir),
        ("--key-dir", owner.key_dir),
    ):
        if not folder:
            continue
        path = Path(folder).expanduser()
        if path.is_dir():
            check_private(path, flag)
