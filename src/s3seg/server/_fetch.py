"""Fetching an image from an http(s) URL for the server, without becoming a proxy into private networks.

Only http and https; every host (and every redirect hop, re-checked) must resolve to public addresses
unless private ones are explicitly allowed; a time limit for the whole fetch and a size limit enforced
while streaming. Known limit: the address is checked at resolution time, and the HTTP client resolves
again when it connects (a DNS-rebinding window); deployments that must exclude it should also firewall
egress from the server.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import httpx

from s3seg.errors import URLFetchFailed, URLNotAllowed

_MAX_REDIRECTS = 3


def check_url(url: str, *, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise URLNotAllowed(f"image_url must be http or https, not {parts.scheme or 'empty'!r}")
    if not parts.hostname:
        raise URLNotAllowed("image_url has no host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except socket.gaierror as e:
        raise URLFetchFailed(f"cannot resolve {parts.hostname}: {e.strerror}") from e
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise URLNotAllowed(
                f"image_url host {parts.hostname} resolves to a non-public address ({address})",
                hint="upload the image instead, or start the server with --allow-private-urls",
            )


def fetch(url: str, *, max_bytes: int, timeout_s: float, allow_private: bool) -> bytes:
    """The body of ``url`` (following up to 3 redirects, each checked) as bytes."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(follow_redirects=False, timeout=timeout_s) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            check_url(url, allow_private=allow_private)
            try:
                with client.stream("GET", url, headers={"Accept": "image/*"}) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
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
