"""The server's memory budget: admission by the decoded size of the images in flight.

The pixel limit bounds one image; this bounds their sum. Before an image is decoded, its cost (from the
header: :func:`s3seg.images.decode_cost`) is reserved from one budget (``S3SEG_MEMORY_BUDGET_MB``) and
given back when the request is done with the pixels. A request that finds no room waits up to
``S3SEG_MEMORY_WAIT_S``, then is answered 503 ``BUSY`` (with ``Retry-After``); images that could never fit
are answered 413 at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from starlette.concurrency import run_in_threadpool

from s3seg.errors import Busy, ImageTooLargeError, PayloadTooLarge
from s3seg.images import decode_cost

_MB = 1024 * 1024


class MemoryBudget:
    """Bytes reserved by the images being decoded or held for the model, at most ``capacity`` in all."""

    def __init__(self, capacity: int, *, wait_s: float) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.used = 0
        self._room = asyncio.Condition()

    @asynccontextmanager
    async def hold(
        self, images: Sequence[bytes], *, max_pixels: int, wait_s: float | None = None, check_only: bool = False
    ) -> AsyncIterator[None]:
        """Reserve the decoding cost of ``images`` (encoded) for the ``async with`` block, all at once
        (``check_only``: the cost of :func:`s3seg.images.check_image`, not of ``load_image``).

        Raises:
            ImageError: an image is not one, or is over ``max_pixels`` (read from its header).
            ImageTooLargeError / PayloadTooLarge: one image / the request needs more than the whole budget.
            Busy: no room within ``wait_s`` (default: the budget's own wait).
        """
        costs = await run_in_threadpool(
            lambda: [decode_cost(data, max_pixels=max_pixels, check_only=check_only) for data in images]
        )
        need = sum(costs)
        if need > self.capacity:
            budget = f"this server's memory budget is {self.capacity / _MB:.0f} MB"
            if len(costs) == 1:
                raise ImageTooLargeError(
                    f"the image needs about {need / _MB:.0f} MB to decode; {budget}",
                    hint="send a smaller image, or raise S3SEG_MEMORY_BUDGET_MB on the server",
                )
            raise PayloadTooLarge(
                f"the {len(costs)} images need about {need / _MB:.0f} MB to decode together; {budget}",
                hint="split the batch",
            )
        await self._reserve(need, self.wait_s if wait_s is None else wait_s)
        try:
            yield
        finally:
            async with self._room:
                self.used -= need
                self._room.notify_all()

    async def _reserve(self, need: int, wait_s: float) -> None:
        def room() -> bool:
            return self.used + need <= self.capacity

        async with self._room:
            try:
                if not room():
                    await asyncio.wait_for(self._room.wait_for(room), wait_s)
            except TimeoutError:
                raise Busy(
                    f"the server's memory budget is in use ({self.used / _MB:.0f} of {self.capacity / _MB:.0f} MB "
                    f"decoding images; this request needs {need / _MB:.0f} MB)",
                    hint="retry in a moment",
                ) from None
            self.used += need
