"""Server-Sent Events read from an HTTP response's lines (``text/event-stream``), without a dependency: the
light client follows a task's ``GET /api/v1/tasks/{id}/events`` with httpx's streaming alone.

Parsing follows the HTML standard's rules: ``field: value`` lines, one leading space dropped from the value,
``data`` lines joined with newlines, comment lines (``:``) skipped, an event dispatched at a blank line (one
without data is not), ``id`` remembered across events (what a reconnect sends as ``Last-Event-ID``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def events(lines: Iterable[str], on_line: Callable[[], object] | None = None) -> Iterator[Event]:
    """The events of a stream given line by line (without their line ends); ``on_line()`` is called for
    every line read, comments (heartbeats) included, so a reader can check its own deadline."""
    name, data, last_id, retry = "", list[str](), None, None
    for line in lines:
        if on_line is not None:
            on_line()
        if not line:
            if data:
                yield Event(name or "message", "\n".join(data), last_id, retry)
            name, data, retry = "", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            last_id = value
        elif field == "retry" and value.isdigit():
            retry = int(value)
