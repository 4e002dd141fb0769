"""Guarantee: the Fleet gateway forwards a push-messages call only when every message in
it comes from the node that signed the call.

Why: Flower 1.42's SuperLink takes a reply's sender (``metadata.src_node_id``) from the
message body and compares it with the node its task went to, two values the sender
supplies; its node authentication binds the signing key to the request's
``node.node_id``, never to the messages inside. An authenticated owner could therefore
push a reply for another owner's task (given that task's message id) and the SuperLink
would store it as the other owner's. Here, before the body reaches the SuperLink:

SuperNode authentication headers -> ECDSA signature over the timestamp, inside Flower's
window -> the key's fingerprint -> the node id the operator's registry (``owners.json``)
recorded for it, else the request's ``node.node_id`` (which the SuperLink itself binds
to that key) -> refuse unless ``node.node_id`` and every message's ``src_node_id`` are
that node. A key the operator removed is refused outright.

The Flower internals this reads, the header names and time window of
``flwr/superlink/routers/fleet/node_auth.py`` and the fields of ``PushMessagesRequest``,
come from common/flower_compat.py, which checks the installed flwr version.
"""

from __future__ import annotations

import binascii
import datetime as dt
import json
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedshield.common.flower_compat import fleet_node_auth, push_messages_senders
from fedshield.server.identity import public_key_fingerprint
from fedshield.server.owner_registry import OWNERS_FILE


class SenderRefused(Exception):
    """The call is refused; ``details`` go to the gateway's refusal log."""

    def __init__(self, reason: str, status: int = 403, **details: object) -> None:
        super().__init__(reason)
        self.status = status
        self.details = details


def authenticated_key(headers: Mapping[str, str], now: dt.datetime | None = None) -> str:
    """The fingerprint of the key that signed this call, checked as the SuperLink checks it."""
    auth = fleet_node_auth()
    try:
        public_key = b64decode(headers[auth.public_key_header], validate=True)
        signature = b64decode(headers[auth.signature_header], validate=True)
        timestamp = headers[auth.timestamp_header]
        signed_at = dt.datetime.fromisoformat(timestamp)
        age = ((now or dt.datetime.now(dt.UTC)) - signed_at).total_seconds()
        if not auth.min_age_s < age < auth.max_age_s:
            raise ValueError(f"timestamp {timestamp[:40]!r} outside the allowed window")
        key = serialization.load_pem_public_key(public_key)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("not an EC public key")
        key.verify(signature, timestamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        return public_key_fingerprint(public_key)
    except KeyError as exc:
        raise SenderRefused(f"no SuperNode authentication header {exc}", 401) from None
    except InvalidSignature:
        raise SenderRefused("the SuperNode authentication signature does not verify", 401) from None
    except (ValueError, TypeError, UnicodeError, binascii.Error) as exc:
        raise SenderRefused(f"bad SuperNode authentication: {exc}", 401) from None


@dataclass
class RegisteredNodes:
    """The operator's owner registry (``STATE/owners.json``), re-read when it changes."""

    state_dir: Path | None
    _stamp: tuple[int, int] | None = field(default=None, repr=False)
    _owners: list[dict] = field(default_factory=list, repr=False)

    def _load(self) -> list[dict]:
        if self.state_dir is None:
            return []
        path = self.state_dir / OWNERS_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return []
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                owners = json.loads(path.read_text())["owners"]
            except (OSError, ValueError, KeyError, TypeError):
                owners = None  # being rewritten, or broken: keep what was read last
            if isinstance(owners, list):
                self._owners, self._stamp = [o for o in owners if isinstance(o, dict)], stamp
        return self._owners

    def node_id(self, fingerprint: str) -> int | None:
        """The node id registered for ``fingerprint``, None if this folder never learnt it."""
        for owner in self._load():
            if owner.get("fingerprint") != fingerprint:
                continue
            if owner.get("removed"):
                raise SenderRefused(
                    "this node's key was removed from the federation", fingerprint=fingerprint
                )
            return None if owner.get("node-id") is None else int(owner["node-id"])
        return None


def check_push_senders(body: bytes, fingerprint: str, registered_node: int | None) -> int:
    """The node every message of a push-messages ``body`` must come from; refuses a
    body where the request's node or any message's sender is another node."""
    try:
        claimed, messages = push_messages_senders(body)
    except ValueError as exc:
        raise SenderRefused(str(exc), 400) from None
    node = registered_node if registered_node is not None else claimed
    if claimed != node:
        raise SenderRefused(
            f"the call names node {claimed}; its key is registered as node {node}",
            fingerprint=fingerprint,
            **{"authenticated-node-id": node, "request-node-id": claimed},
        )
    for sender, reply_to in messages:
        if sender != node:
            raise SenderRefused(
                f"node {node} pushed a reply claiming to come from node {sender}",
                fingerprint=fingerprint,
                **{
                    "authenticated-node-id": node,
                    "claimed-src-node-id": sender,
                    "reply-to-message-id": reply_to[:80],
                },
            )
    return node
