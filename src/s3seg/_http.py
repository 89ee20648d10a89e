"""The one HTTP helper of s3seg's clients: the GPU server, the public API, Supabase Auth and a gateway's workers.

A request that cannot connect or does not answer in time is one :class:`ServerError` with a hint; busy
answers (429, 503) are waited out after their ``Retry-After`` as the :class:`Waits` allow; an s3seg
envelope's ``data`` is returned and an error answer raised as the error of its code (one table,
:func:`s3seg.errors.error_from_response`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from s3seg.errors import ServerError, error_from_response
from s3seg.images import LoadedImage
from s3seg.types import SegmentationResult, SegmentRequest, from_coco

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Waits:
    """Which answers are waited out, how many times (``None``: while the time limit allows) and for how long
    at most each time."""

    statuses: tuple[int, ...] = ()
    retries: int | None = 0
    max_wait_s: float = 10.0


@dataclass(frozen=True)
class Hints:
    """What to tell the user when the server does not answer in time, and when it cannot be reached."""

    timeout: str
    unreachable: str


class HTTP:
    """Requests to one server (``where`` names it in messages, e.g. "the s3seg server at URL")."""

    def __init__(
        self,
        url: str,
        *,
        where: str,
        hints: Hints,
        timeout_s: float,
        headers: Callable[[], Mapping[str, str]] | None = None,
        waits: Waits = Waits(),
        http: httpx.Client | None = None,
        read_timeout_s: float | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.where = where
        self.hints = hints
        self.timeout_s = timeout_s
        self.waits = waits
        self._headers = headers or dict
        self._own = http is None
        self._http = http or httpx.Client(
            timeout=read_timeout_s or timeout_s, transport=httpx.HTTPTransport(retries=3)
        )  # retries connection failures

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> HTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """httpx's failures to connect or to read in time, as one :class:`ServerError` with a hint."""
        try:
            yield
        except httpx.TimeoutException as e:
            raise ServerError(f"{self.where} did not answer in time", hint=self.hints.timeout) from e
        except httpx.HTTPError as e:
            raise ServerError(f"cannot reach {self.where} ({type(e).__name__})", hint=self.hints.unreachable) from e

    def send(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One answer (any status), after waiting out busy answers as the :class:`Waits` allow."""
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            with self.errors():
                response = self._http.request(
                    method, self.url + path, headers={**self._headers(), **(headers or {})}, **kwargs
                )
            waits = self.waits
            if response.status_code not in waits.statuses or (waits.retries is not None and attempt >= waits.retries):
                return response
            wait = min(_retry_after(response), waits.max_wait_s)
            if time.monotonic() + wait > deadline:
                return response
            time.sleep(wait)
            attempt += 1

    @contextlib.contextmanager
    def stream(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """A streamed answer (read it with ``iter_lines``); an error answer is raised as :meth:`data` does.
        Not retried (a body may be a file read once)."""
        url, sent = self.url + path, {**self._headers(), **(headers or {})}
        with self.errors(), self._http.stream(method, url, headers=sent, **kwargs) as r:
            if r.status_code != 200:
                r.read()
                self.data(r)
            yield r

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The ``data`` of an s3seg envelope answer (its error raised otherwise)."""
        return self.data(self.send(method, path, **kwargs))

    def data(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("ok") is True:
            return body.get("data")
        details = body.get("error", {}) if isinstance(body, dict) else {}
        code = str(details.get("code", "HTTP_ERROR"))
        message = str(details.get("message") or f"HTTP {response.status_code}")
        raise error_from_response(response.status_code, code, message, details.get("hint"), where=self.where)


def predict(
    http: HTTP, image: LoadedImage, request: SegmentRequest, *, all_options: bool = False
) -> SegmentationResult:
    """One image through an ``s3seg serve`` server's ``POST /api/v1/predict`` (multipart).

    Only the options the user chose are sent, so the server's own defaults (its ``S3SEG_THRESHOLD``, ...)
    apply to the rest; ``all_options``: send every option (a gateway, whose settings are the defaults)."""
    options = request.options.to_dict() if all_options else request.chosen_options()
    fields: dict[str, Any] = {"prompts": list(request.prompts), "boxes": [str(b) for b in request.boxes]}
    fields.update({k: repr(v) for k, v in options.items() if v is not None})
    files = {"image": (image.name or "image.png", image.file_bytes(), "application/octet-stream")}
    [result] = from_coco(http.call("POST", "/api/v1/predict", data=fields, files=files))
    return dataclasses.replace(result, image=image.name)


def in_flight(call: Callable[[T], R], items: Sequence[T], most: int = 4) -> list[R]:
    """``call`` on every item, up to ``most`` requests in flight together (so that a server can batch
    them); the answers keep the items' order."""
    if len(items) == 1:
        return [call(items[0])]
    with ThreadPoolExecutor(min(len(items), most)) as pool:
        return list(pool.map(call, items))


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0
