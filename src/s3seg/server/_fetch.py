"""Fetching an image from an http(s) URL for the server, without becoming a proxy into private networks.

Only http and https. Every host (and every redirect hop) is resolved once, here; unless private addresses
are explicitly allowed, every address it resolves to must be public; and the connection goes to the
address that was checked — the URL's host is kept only as the ``Host`` header and the TLS server name (SNI,
and the name the certificate must match). The HTTP client never resolves the name again, so a DNS answer
that changes between the check and the connection (DNS rebinding) cannot reach a private address. A time
limit for the whole fetch and a size limit enforced while streaming.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from contextlib import closing
from urllib.parse import urljoin, urlsplit

import httpx

from s3seg.errors import URLFetchFailed, URLNotAllowed

_MAX_REDIRECTS = 3
_MAX_ADDRESSES = 3  # tried in turn when a connection fails (an IPv6 address first on a host without IPv6)


def check_url(url: str, *, allow_private: bool) -> list[str]:
    """The addresses to connect to for ``url``, in the resolver's order: its host resolved once, every
    address checked (unless ``allow_private``); :class:`URLNotAllowed` or :class:`URLFetchFailed` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise URLNotAllowed(f"image_url must be http or https, not {parts.scheme or 'empty'!r}")
    if not parts.hostname:
        raise URLNotAllowed("image_url has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except ValueError as e:  # a port out of range
        raise URLNotAllowed(f"image_url has an invalid port: {e}") from e
    except socket.gaierror as e:
        raise URLFetchFailed(f"cannot resolve {parts.hostname}: {e.strerror}") from e
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise URLFetchFailed(f"cannot resolve {parts.hostname}: no address")
    for address in addresses if not allow_private else ():
        if not address.is_global:
            raise URLNotAllowed(
                f"image_url host {parts.hostname} resolves to a non-public address ({address})",
                hint="upload the image instead, or start the server with --allow-private-urls",
            )
    return list(dict.fromkeys(str(address) for address in addresses))[:_MAX_ADDRESSES]


def _pinned(url: str, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """``url`` with ``address`` for its host, and the ``Host`` header and TLS server name of the original."""
    try:
        original = httpx.URL(url)
        name = original.raw_host.decode("ascii")  # IDNA-encoded, as DNS and TLS know it
        host = f"[{name}]" if ":" in name else name
        port = "" if original.port is None else f":{original.port}"  # (httpx drops a scheme's default port)
        return original.copy_with(host=address), {"Host": host + port, "Accept": "image/*"}, {"sni_hostname": name}
    except (httpx.InvalidURL, UnicodeError) as e:
        raise URLNotAllowed(f"image_url is not a valid URL: {e}") from e


def _send(client: httpx.Client, url: str, addresses: list[str]) -> httpx.Response:
    """The streamed answer to GET ``url`` from the first of ``addresses`` that takes the connection."""
    for address in addresses:
        target, headers, extensions = _pinned(url, address)
        request = client.build_request("GET", target, headers=headers, extensions=extensions)
        try:
            return client.send(request, stream=True)
        except httpx.ConnectError:
            if address == addresses[-1]:
                raise
    raise AssertionError("check_url answers at least one address")


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    allow_private: bool,
    transport: httpx.BaseTransport | None = None,
) -> bytes:
    """The body of ``url`` (following up to 3 redirects, each checked and pinned) as bytes."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(follow_redirects=False, timeout=timeout_s, transport=transport) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            addresses = check_url(url, allow_private=allow_private)
            try:
                with closing(_send(client, url, addresses)) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])  # relative to the name, not the address
                        continue
                    if response.status_code != 200:
                        raise URLFetchFailed(f"fetching image_url failed: HTTP {response.status_code}")
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > max_bytes:
                        raise URLFetchFailed(f"image_url body is {declared} bytes (limit {max_bytes})")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise URLFetchFailed(f"image_url body exceeds {max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise URLFetchFailed(f"fetching image_url took longer than {timeout_s:g} s")
                    return bytes(body)
            except httpx.TimeoutException as e:
                raise URLFetchFailed(f"fetching image_url took longer than {timeout_s:g} s") from e
            except httpx.HTTPError as e:
                raise URLFetchFailed(f"fetching image_url failed: {type(e).__name__}") from e
    raise URLFetchFailed(f"image_url redirected more than {_MAX_REDIRECTS} times")
