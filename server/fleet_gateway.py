"""Guarantee: on the federation's public port, only Flower's Fleet API reaches the SuperLink.

Why: in Flower 1.42 the open-source SuperLink serves its Fleet, Control and Runtime APIs
on one HTTP ``--host/--port``, and Control API authentication is an Enterprise (OIDC)
feature, a no-op here. Whoever reaches that port can ``flwr run`` an app of its own on
every owner's SuperNode, register node keys and list the operator's runs; a firewall rule
cannot tell these apart because they share the port. So ``fedshield server start`` binds
the SuperLink to 127.0.0.1 (the operator's ``flwr`` CLI and the ServerApp process the
SuperLink starts use it there) and runs this gateway on the public ``--host/--port``:

- TLS with the federation's server certificate (the same ``server.pem``/``server.key``):
  owners, who pin the federation's CA, see no difference;
- it forwards exactly the Fleet calls a SuperNode makes (``FLEET_PATHS``, kept with
  Flower's other internals in common/flower_compat.py) as POST, ``/health`` as GET/HEAD; the two
  self-registration calls only when node authentication is off (``--insecure``), since a
  SuperLink with node authentication refuses them anyway;
- it passes on Flower's own headers (``flwr-*``: the signed timestamp, public key and
  signature of SuperNode authentication, the runtime version) and the content headers,
  nothing else: the SuperLink still authenticates every node itself;
- it serves, read-only and itself, the two things the operator publishes to owners
  (common/federation_info.py): GET/HEAD ``FEDERATION_PATH`` answers the state folder's
  ``federation.json``, and GET ``NOTICE_PATH_PREFIX + ID`` answers ``notices/ID.json``
  only when ID is a notice id (64 lowercase hex); the only file names it ever opens are
  those two, built from constants and the validated id (no user text reaches a path),
  and an absent file is a 404;
- it answers 403 to every other Flower API path (``/v1/control/...``,
  ``/v1/runtime/...``) and 404 to anything else, matching paths exactly (no prefixes, so
  ``/v1/fleet/../control/...`` is refused), and appends each refusal (time, method, path,
  peer, status) to a JSON Lines log that ``server start`` counts and the audit references;
- it re-encrypts to the SuperLink on loopback, verifying the SuperLink's certificate
  against the federation's CA (TLS end to end: another local process cannot pose as
  the SuperLink);
- with node authentication on, a push-messages call (an owner's reply; a few KB, the
  update itself travels in push-object) is read whole, up to its cap, and forwarded only
  if every message in it comes from the node whose key signed the call
  (server/fleet_sender.py: Flower's SuperLink does not check this); a refusal is logged
  with the authenticated and the claimed node;
- every other request and response body streams through (model updates of megabytes),
  never buffered whole.

Built on uvicorn, Starlette and httpx, the HTTP stack Flower itself uses for the SuperLink
and the SuperNode (so HTTP parsing and TLS stay in maintained code, and no new
dependency); the hand-written part is the allow-list and the header filter below, kept
to one screen so that it can be audited, instead of asking every operator to install and
configure a general reverse proxy correctly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from fedshield.common.federation_info import (
    FEDERATION_FILE,
    FEDERATION_PATH,
    NOTICE_ID,
    NOTICE_PATH_PREFIX,
    NOTICES_DIR,
)
from fedshield.common.flower_compat import (
    FLEET_PATHS,
    PUSH_MESSAGES_PATH,
    SELF_REGISTRATION_PATHS,
    fleet_node_auth,
)
from fedshield.server.fleet_sender import (
    RegisteredNodes,
    SenderRefused,
    authenticated_key,
    check_push_senders,
)

HEALTH_PATH = "/health"
FORWARDED_REQUEST_HEADERS = frozenset(
    {"content-type", "content-length", "accept", "accept-encoding"}
)
FORWARDED_RESPONSE_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})
FLOWER_HEADER_PREFIX = "flwr-"
UPSTREAM_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
# Bodies are streamed, but Flower parses a whole body before it checks node
# authentication: without a cap a stranger's huge POST fills the SuperLink's memory.
# Model updates travel in push-object (MiniLM: about 7 MB per layer); push-messages
# carries a reply's metadata and object ids only, and is read whole to check its senders.
MAX_BODY_BYTES = {"/v1/fleet/push-object": 256 << 20, PUSH_MESSAGES_PATH: 4 << 20}
DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_CONCURRENT_CONNECTIONS = 512
MAX_LOGGED_PATH_CHARS = 300
# The published files are small JSON documents the operator writes; a cap keeps a
# mistaken huge file from being read into memory per request.
MAX_PUBLISHED_BYTES = 1 << 20

log = logging.getLogger("fedshield.gateway")


@dataclass(frozen=True)
class GatewaySettings:
    host: str
    port: int
    upstream_port: int
    refused_log: Path
    pki_dir: Path | None  # None: plaintext on both hops (--insecure, debugging only)
    state_dir: Path | None = None  # the published files' folder; None: nothing published

    @property
    def allowed(self) -> frozenset[tuple[str, str]]:
        paths = FLEET_PATHS if self.pki_dir else FLEET_PATHS | SELF_REGISTRATION_PATHS
        return frozenset(
            {("POST", path) for path in paths} | {("GET", HEALTH_PATH), ("HEAD", HEALTH_PATH)}
        )


def _forwarded(pairs, allowed: frozenset[str]) -> list[tuple[str, str]]:
    """Flower's own ``flwr-*`` headers and the ``allowed`` ones; no hop-by-hop header."""
    return [
        (name.lower(), value)
        for name, value in pairs
        if name.lower() in allowed or name.lower().startswith(FLOWER_HEADER_PREFIX)
    ]


class BodyTooLarge(Exception):
    """A request body passed its path's cap while streaming."""


async def _capped(stream, limit: int):
    """Pass ``stream`` through, stopping it once more than ``limit`` bytes have come."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        yield chunk


class FleetGateway:
    """ASGI app: forward allowed Fleet calls to the SuperLink on loopback, refuse the rest."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.allowed = settings.allowed
        if settings.pki_dir:
            verify: ssl.SSLContext | bool = ssl.create_default_context(
                cafile=str(settings.pki_dir / "ca.crt")
            )
            scheme = "https"
        else:
            verify, scheme = False, "http"
        self.upstream = httpx.AsyncClient(
            base_url=f"{scheme}://127.0.0.1:{settings.upstream_port}",
            verify=verify,
            timeout=UPSTREAM_TIMEOUT,
            trust_env=False,  # never through a proxy named in the environment
            follow_redirects=False,
        )
        settings.refused_log.parent.mkdir(parents=True, exist_ok=True)
        self.refused = 0
        # Only authenticated nodes have a sender to check (--insecure: self-registered).
        self.checks_senders = settings.pki_dir is not None
        if self.checks_senders:
            fleet_node_auth()  # a moved flwr fails here, at start, not at the first reply
        self.registered = RegisteredNodes(settings.state_dir)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await self.upstream.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return  # uvicorn runs with ws="none": no other protocol reaches here
        request = Request(scope, receive)
        if published := self._published_file(request):
            response = self.publish(published)
        elif (request.method, request.url.path) not in self.allowed:
            response = self.refuse(request)
        elif reason := self._malformed(request):
            response = self.refuse(request, status=reason)
        elif self.checks_senders and request.url.path == PUSH_MESSAGES_PATH:
            response = await self.forward_checked_push(request)
        else:
            response = await self.forward(request)
        await response(scope, receive, send)

    def _published_file(self, request: Request) -> Path | None:
        """The state folder's file a published path names, or None for any other request.

        The file name is a constant or the validated 64-hex notice id: nothing else of the
        request reaches the file system."""
        path, state = request.url.path, self.settings.state_dir
        if state is None:
            return None
        if path == FEDERATION_PATH and request.method in ("GET", "HEAD"):
            return state / FEDERATION_FILE
        if path.startswith(NOTICE_PATH_PREFIX) and request.method == "GET":
            notice = path[len(NOTICE_PATH_PREFIX) :]
            if NOTICE_ID.fullmatch(notice):
                return state / NOTICES_DIR / f"{notice}.json"
        return None

    def publish(self, path: Path) -> Response:
        """The published JSON file, or 404 when the operator has not written it."""
        try:
            with open(path, "rb") as handle:
                body = handle.read(MAX_PUBLISHED_BYTES + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return PlainTextResponse("not published", status_code=404)
        except OSError as exc:
            log.warning("cannot read %s: %r", path, exc)
            return PlainTextResponse("not available", status_code=503)
        if len(body) > MAX_PUBLISHED_BYTES:
            log.warning("%s is over %d bytes; not served", path, MAX_PUBLISHED_BYTES)
            return PlainTextResponse("not available", status_code=503)
        return Response(body, media_type="application/json", headers={"cache-control": "no-store"})

    @staticmethod
    def _malformed(request: Request) -> int | None:
        """400 for an ambiguous body length, 413 for a declared length over the cap."""
        headers = request.headers
        if "transfer-encoding" in headers and "content-length" in headers:
            return 400  # the request smuggling shape: refuse rather than guess
        limit = MAX_BODY_BYTES.get(request.url.path, DEFAULT_MAX_BODY_BYTES)
        declared = headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            return 413
        return None

    async def forward_checked_push(self, request: Request) -> Response:
        """Read the push-messages body (capped), check its senders, then forward it."""
        try:
            body = b"".join(
                [
                    chunk
                    async for chunk in _capped(request.stream(), MAX_BODY_BYTES[PUSH_MESSAGES_PATH])
                ]
            )
        except BodyTooLarge:
            return self.refuse(request, status=413)
        try:
            fingerprint = authenticated_key(request.headers)
            check_push_senders(body, fingerprint, self.registered.node_id(fingerprint))
        except SenderRefused as refused:
            return self.refuse(request, refused.status, str(refused), refused.details)
        return await self.forward(request, body)

    async def forward(self, request: Request, body: bytes | None = None) -> Response:
        if body is None and request.method == "POST":
            content = _capped(
                request.stream(), MAX_BODY_BYTES.get(request.url.path, DEFAULT_MAX_BODY_BYTES)
            )
        else:
            content = body
        outgoing = self.upstream.build_request(
            request.method,
            request.url.path,  # exactly one of the allowed paths; the query string is dropped
            headers=_forwarded(request.headers.items(), FORWARDED_REQUEST_HEADERS),
            content=content,
        )
        try:
            upstream = await self.upstream.send(outgoing, stream=True)
        except BodyTooLarge:
            return self.refuse(request, status=413)
        except Exception as exc:  # any upstream failure is a 502, never a traceback
            log.warning("SuperLink unreachable for %s: %r", request.url.path, exc)
            return PlainTextResponse("SuperLink unavailable", status_code=502)
        response = StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            background=BackgroundTask(upstream.aclose),
        )
        response.raw_headers += [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in _forwarded(
                upstream.headers.multi_items(), FORWARDED_RESPONSE_HEADERS
            )
        ]
        return response

    def refuse(
        self,
        request: Request,
        status: int | None = None,
        reason: str | None = None,
        details: dict | None = None,
    ) -> Response:
        """Log the refusal (with ``reason`` and ``details`` when given) and answer it."""
        path = request.url.path
        status = status or (403 if path.startswith("/v1/") else 404)
        peer = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": request.method[:16],
            "path": path[:MAX_LOGGED_PATH_CHARS],
            "peer": peer,
            "status": status,
            **({"reason": reason[:MAX_LOGGED_PATH_CHARS]} if reason else {}),
            **(details or {}),
        }
        line = (json.dumps(entry, ensure_ascii=True) + "\n").encode()
        fd = os.open(self.settings.refused_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        self.refused += 1
        if reason:
            return PlainTextResponse(f"refused: {reason}", status_code=status)
        said = {
            400: "refused: a request with both Content-Length and Transfer-Encoding",
            413: "refused: the body is larger than this Fleet call allows",
        }.get(
            status, "refused: this port serves Flower's Fleet API to data owners' SuperNodes only"
        )
        return PlainTextResponse(said, status_code=status)


def serve(settings: GatewaySettings) -> None:
    tls = {}
    if settings.pki_dir:
        tls = {
            "ssl_certfile": str(settings.pki_dir / "server.pem"),
            "ssl_keyfile": str(settings.pki_dir / "server.key"),
        }
    config = uvicorn.Config(
        FleetGateway(settings),
        host=settings.host,
        port=settings.port,
        http="h11",
        ws="none",
        lifespan="on",
        proxy_headers=False,  # the peer logged is the TCP peer, not a header a stranger sets
        # Bounded work per stranger: connections at once, idle keep-alive, header size.
        # (uvicorn has no header-read timeout: a per-address connection limit in the
        # firewall is the operator's part, deploy/README.md.)
        limit_concurrency=MAX_CONCURRENT_CONNECTIONS,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,
        server_header=False,
        access_log=False,
        log_level="warning",
        **tls,
    )
    print(
        f"fedshield fleet gateway on {settings.host}:{settings.port} "
        f"({'TLS' if settings.pki_dir else 'PLAINTEXT'}) -> SuperLink 127.0.0.1:{settings.upstream_port}; "
        f"forwarding {', '.join(sorted({path for _, path in settings.allowed}))}; "
        f"publishing {FEDERATION_PATH} and {NOTICE_PATH_PREFIX}<id> from "
        f"{settings.state_dir or 'nowhere'}; "
        f"refusals logged to {settings.refused_log}",
        flush=True,
    )
    uvicorn.Server(config).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fedshield's Fleet-only gateway (see module doc)")
    parser.add_argument("--host", required=True, help="public address to listen on")
    parser.add_argument("--port", type=int, required=True, help="public port (owners dial it)")
    parser.add_argument(
        "--upstream-port", type=int, required=True, help="SuperLink's loopback port"
    )
    parser.add_argument("--refused-log", type=Path, required=True)
    parser.add_argument("--pki", type=Path, help="folder with ca.crt, server.pem, server.key")
    parser.add_argument("--insecure", action="store_true", help="plaintext on both hops")
    parser.add_argument(
        "--state",
        type=Path,
        help="the server's state folder, whose federation.json and notices/ it publishes",
    )
    args = parser.parse_args(argv)
    if (args.pki is None) != args.insecure:
        parser.error("give exactly one of --pki and --insecure")
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING)
    serve(
        GatewaySettings(
            host=args.host,
            port=args.port,
            upstream_port=args.upstream_port,
            refused_log=args.refused_log,
            pki_dir=None if args.insecure else args.pki,
            state_dir=args.state,
        )
    )


if __name__ == "__main__":
    main()
