"""SSRF and DNS rebinding: an ``image_url`` is resolved once, every address checked, and the connection goes
to the checked address (the name kept as ``Host`` and TLS server name); redirects are checked hop by hop.

The names (``*.test``, which no real DNS answers) are answered by a stand-in for ``socket.getaddrinfo`` —
for every caller in the process, the HTTP client included, so a second resolution would be seen — and every
outgoing TCP connection is recorded at ``socket.create_connection``, where the HTTP client connects; one to
anything but loopback is refused there, so nothing leaves this machine. Where a test needs a public
address to be reached, the answer is checked at the transport (httpx ``MockTransport``) instead."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from s3seg.errors import URLFetchFailed, URLNotAllowed
from s3seg.server._fetch import fetch

PUBLIC = "93.184.216.34"  # a public address: the tests never connect to it
LIMITS: dict[str, Any] = {"max_bytes": 1 << 20, "timeout_s": 5}


class _Host(BaseHTTPRequestHandler):
    """A loopback web server that records each request's path and Host header."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Host", "")))
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"image")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def host() -> Iterator[int]:
    _Host.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Host)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, list[str]], list[str]]:
    """``answers[name]``: the answers of successive look-ups (the last one repeats), each one address or
    several separated by spaces; ``asked``: the names looked up, in order."""
    answers: dict[str, list[str]] = {}
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(name: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = name.decode() if isinstance(name, bytes) else name
        if name not in answers:
            return real(name, port, *args, **kwargs)
        asked.append(name)
        queue = answers[name]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, int(port), 0, 0))
            if ":" in address
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))
            for address in answer.split()
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, asked


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the process opens, as (host, port) given; only loopback ones are made."""
    made: list[tuple[str, int]] = []
    real = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        made.append(address)
        targets = {info[4][0] for info in socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)}
        if not all(ipaddress.ip_address(t).is_loopback for t in targets):
            raise ConnectionRefusedError("this test sends nothing off the machine")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return made


def test_rebinding_connects_to_the_checked_address(
    host: int, dns: tuple[dict[str, list[str]], list[str]], connections: list[tuple[str, int]]
) -> None:
    """The name answers a public address to the check and loopback afterwards: the fetch connects to the
    public address it checked (refused here, as nothing may leave the machine), never to loopback."""
    answers, asked = dns
    answers["rebind.test"] = [PUBLIC, "127.0.0.1"]
    with pytest.raises(URLFetchFailed):
        fetch(f"http://rebind.test:{host}/image.png", allow_private=False, **LIMITS)
    assert connections == [(PUBLIC, host)]
    assert asked == ["rebind.test"]  # resolved once: the HTTP client did not ask again
    assert _Host.seen == []


def test_the_name_is_kept_as_host(
    host: int, dns: tuple[dict[str, list[str]], list[str]], connections: list[tuple[str, int]]
) -> None:
    """A real fetch on loopback (private addresses allowed): the connection goes to the address the name
    resolved to, and the server sees the name in Host."""
    answers, asked = dns
    answers["pinned.test"] = ["127.0.0.1"]
    assert fetch(f"http://pinned.test:{host}/image.png", allow_private=True, **LIMITS) == b"image"
    assert connections == [("127.0.0.1", host)]
    assert asked == ["pinned.test"]
    assert _Host.seen == [("/image.png", f"pinned.test:{host}")]


def test_the_next_checked_address_when_one_does_not_connect(
    host: int, dns: tuple[dict[str, list[str]], list[str]], connections: list[tuple[str, int]]
) -> None:
    """A name with several addresses (IPv6 first on a machine without IPv6, say): the next checked address
    is tried when one refuses the connection — the resolved ones only, the name is not looked up again."""
    answers, asked = dns
    answers["two.test"] = ["127.0.0.2 127.0.0.1"]  # nothing listens on 127.0.0.2
    assert fetch(f"http://two.test:{host}/image.png", allow_private=True, **LIMITS) == b"image"
    assert connections == [("127.0.0.2", host), ("127.0.0.1", host)]
    assert asked == ["two.test"]
    answers["mixed.test"] = [f"{PUBLIC} 10.0.0.7"]  # one private address is enough to refuse the name
    with pytest.raises(URLNotAllowed):
        fetch(f"http://mixed.test:{host}/image.png", allow_private=False, **LIMITS)
    assert len(connections) == 2


def test_a_name_that_resolves_to_loopback_is_refused(
    host: int, dns: tuple[dict[str, list[str]], list[str]], connections: list[tuple[str, int]]
) -> None:
    answers, _ = dns
    answers["loop.test"] = ["127.0.0.1"]
    answers["loop6.test"] = ["::1"]
    for name in ("loop.test", "loop6.test"):
        with pytest.raises(URLNotAllowed):
            fetch(f"http://{name}:{host}/image.png", allow_private=False, **LIMITS)
    assert connections == []
    assert _Host.seen == []


def test_https_keeps_the_name_for_tls_and_redirects_are_checked_per_hop(
    dns: tuple[dict[str, list[str]], list[str]],
) -> None:
    """At the transport: each hop goes to its own checked address with the name as Host and as TLS server
    name (SNI, and what the certificate must match); a hop to a private address is refused before it is
    requested."""
    answers, asked = dns
    answers.update({"public.test": [PUBLIC], "cdn.test": ["93.184.216.35"], "private.test": ["10.0.0.7"]})
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/first":
            return httpx.Response(302, headers={"Location": "https://cdn.test/image.png"})
        if request.url.path == "/inside":
            return httpx.Response(302, headers={"Location": "http://private.test/admin"})
        return httpx.Response(200, content=b"image")

    transport = httpx.MockTransport(answer)
    assert fetch("https://public.test/first", allow_private=False, transport=transport, **LIMITS) == b"image"
    assert [(str(r.url), r.headers["Host"], r.extensions["sni_hostname"]) for r in requests] == [
        (f"https://{PUBLIC}/first", "public.test", "public.test"),
        ("https://93.184.216.35/image.png", "cdn.test", "cdn.test"),
    ]
    requests.clear()
    with pytest.raises(URLNotAllowed):
        fetch("https://public.test/inside", allow_private=False, transport=transport, **LIMITS)
    assert [str(r.url) for r in requests] == [f"https://{PUBLIC}/inside"]
    assert asked[-1] == "private.test"
