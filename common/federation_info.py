"""What the operator publishes to data owners before and during a federation, and where.

Public by design, with no owner's data in it: the federation's class list, model and
run settings (``federation.json``), and one notice per removed owner (why it was
removed), which the owner's ``client start`` shows. The operator's ``server start`` and
``server remove-owner`` write these files in the server's state folder; the Fleet
gateway (server/fleet_gateway.py) serves them read-only over the federation's TLS on
``FEDERATION_PATH`` and ``NOTICE_PATH_PREFIX + notice_id(fingerprint)``; the owner's
``client start`` reads them trusting the federation's CA (client/published.py).

A notice is addressed by a hash of the owner's node-key fingerprint, so its URL carries
only characters a path may hold; whoever knows an owner's public key can read the
notice, so a reason should say nothing the operator would not tell that owner in public.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path

from fedshield.common.durable import write_bytes_atomic

FEDERATION_FORMAT = "fedshield-federation/1"
NOTICE_FORMAT = "fedshield-notice/1"

FEDERATION_PATH = "/fedshield/v1/federation"
NOTICE_PATH_PREFIX = "/fedshield/v1/notice/"

FEDERATION_FILE = "federation.json"  # in the server's state folder
NOTICES_DIR = "notices"  # in the server's state folder: NOTICE_ID.json

NOTICE_ID = re.compile(r"^[0-9a-f]{64}$")


def notice_id(fingerprint: str) -> str:
    """The notice's name for a node key ("SHA256:..." as ``fedshield pki node`` prints it)."""
    return hashlib.sha256(fingerprint.strip().encode("utf-8")).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_federation_info(state_dir: Path, info: dict) -> Path:
    """``info``: at least "classes" (list of names, the federation's order) and "model"."""
    path = Path(state_dir) / FEDERATION_FILE
    body = {"format": FEDERATION_FORMAT, "updated": _now(), **info}
    write_bytes_atomic(path, json.dumps(body, indent=2).encode("utf-8"), mode=0o644)
    return path


def write_notice(state_dir: Path, fingerprint: str, action: str, reason: str) -> Path:
    """Record that the owner with this node key was ``action`` ("removed") and why."""
    directory = Path(state_dir) / NOTICES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{notice_id(fingerprint)}.json"
    body = {
        "format": NOTICE_FORMAT,
        "fingerprint": fingerprint,
        "action": action,
        "reason": reason,
        "time": _now(),
    }
    write_bytes_atomic(path, json.dumps(body, indent=2).encode("utf-8"), mode=0o644)
    return path
