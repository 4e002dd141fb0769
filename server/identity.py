"""Who sent a reply: the node key the SuperLink authenticated, never a field of the reply.

Guarantee: the server names an owner by the SHA-256 fingerprint of the public key its
node authenticated with (as ``ssh-keygen -lf`` prints it, the same string the operator's
registry, ``server status`` and the owner's own audit log show), looked up by the node
id the reply's task was sent to. The key comes from the SuperLink itself (the Runtime
API's node list, which holds the key each node signs its Fleet calls with) or, where it
lists none, from the operator's registry (``owners.json``: the node id the SuperLink
gave each key at registration). A node with neither is ``node-<id>`` (simulation: no
keys). The label an owner declares in its reply (``owner.owner-id``) is only ever shown
beside that name, marked self-declared.

The operator's registry may also bound an owner's aggregation weight (``max-weight``,
records); without it ``DEFAULT_MAX_WEIGHT`` applies (server/validate.py uses both).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from fedshield.common.audit_events import Field

log = logging.getLogger("fedshield.server")

# Set by ``fedshield server start`` for the SuperLink, whose ServerApp process inherits
# it: the state folder whose owner registry names the nodes.
STATE_DIR_ENV = "FEDSHIELD_SERVER_STATE"
# The most an owner's self-reported record count weighs in an average unless the operator
# registered its size (``max-weight``): a larger honest owner is under-weighted, never
# excluded; a liar's 1e9 weighs no more than this.
DEFAULT_MAX_WEIGHT = 10_000
SELF_DECLARED = "self-declared"


def public_key_fingerprint(public_key: bytes) -> str:
    """``SHA256:...`` of a PEM (as Flower sends and stores it) or OpenSSH public key."""
    if public_key.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(public_key)
    else:
        key = serialization.load_ssh_public_key(public_key)
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    digest = hashlib.sha256(base64.b64decode(blob.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class OwnerIdentity:
    """One node as the server names it."""

    node_id: int
    name: str  # the key fingerprint, or node-<id> where no key is known
    fingerprint: str | None
    registered_as: str | None  # the registry's name for the key (its .pub file's stem)
    max_weight: int

    def describe(self) -> dict:
        """The owner as the server's audit entries name it."""
        return {
            Field.OWNER: self.name,
            Field.NODE_ID: self.node_id,
            Field.NODE_KEY_FINGERPRINT: self.fingerprint,
            Field.REGISTERED_AS: self.registered_as,
        }


class OwnerDirectory:
    """node id -> ``OwnerIdentity``, from the SuperLink's node keys and the registry."""

    def __init__(self, registry: Iterable[dict] = ()) -> None:
        self.registry = [o for o in registry if isinstance(o, dict) and o.get("fingerprint")]
        self._keys: dict[int, str] = {}  # node id -> fingerprint, from the SuperLink

    @classmethod
    def from_environment(cls) -> OwnerDirectory:
        """The registry of the state folder ``server start`` named, or none (simulation)."""
        state = os.environ.get(STATE_DIR_ENV, "").strip()
        if not state:
            return cls()
        from fedshield.server.owner_registry import load_owner_registry

        return cls(load_owner_registry(Path(state)))

    def learn_node_keys(self, nodes: Iterable) -> None:
        """Record each node's authenticated key (Flower ``NodeInfo``: node_id, public_key)."""
        for node in nodes:
            key = bytes(getattr(node, "public_key", b"") or b"")
            if not key.lstrip().startswith((b"-----BEGIN", b"ecdsa-", b"ssh-")):
                continue  # none, or Flower's simulation's random bytes: named node-<id>
            try:
                self._keys[int(node.node_id)] = public_key_fingerprint(key)
            except (ValueError, TypeError, IndexError, UnsupportedAlgorithm) as exc:
                log.warning("node %s: unreadable public key (%s)", node.node_id, exc)

    def refresh(self, grid) -> None:
        """Ask the grid for its nodes' keys; a grid without them (simulation) adds none."""
        try:
            self.learn_node_keys(grid.get_nodes())
        except Exception as exc:  # naming falls back to the registry, never to a reply
            log.warning("could not list the nodes' keys: %r", exc)

    def _registered(self, fingerprint: str | None, node_id: int) -> dict | None:
        for owner in self.registry:
            if fingerprint is not None and owner["fingerprint"] == fingerprint:
                return owner
        if fingerprint is None:
            for owner in self.registry:
                if owner.get("node-id") is not None and int(owner["node-id"]) == node_id:
                    return owner
        return None

    def identity(self, node_id: int) -> OwnerIdentity:
        node_id = int(node_id)
        fingerprint = self._keys.get(node_id)
        entry = self._registered(fingerprint, node_id)
        if fingerprint is None and entry is not None:
            fingerprint = entry["fingerprint"]
        cap = entry.get("max-weight") if entry else None
        return OwnerIdentity(
            node_id=node_id,
            name=fingerprint or f"node-{node_id}",
            fingerprint=fingerprint,
            registered_as=entry.get("name") if entry else None,
            max_weight=int(cap) if isinstance(cap, int) and cap >= 1 else DEFAULT_MAX_WEIGHT,
        )
