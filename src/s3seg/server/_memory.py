"""The server's memory budget: admission by the decoded size of the images and videos in flight.

The pixel limit bounds one image; this bounds their sum. Before an image is decoded, its cost (from the
header: :func:`s3seg.images.decode_cost`) is reserved from one budget (``S3SEG_MEMORY_BUDGET_MB``) and
given back when the request is done with the pixels. A video reserves its working set while it is tracked
(:func:`video_need`, from the frame size its header gives). A request that finds no room waits up to
``S3SEG_MEMORY_WAIT_S``, then is answered 503 ``BUSY`` (with ``Retry-After``); an image or a video that
could never fit is answered 413 at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress

from starlette.concurrency import run_in_threadpool

from s3seg.errors import Busy, ImageTooLargeError, PayloadTooLarge, VideoTooLarge
from s3seg.images import decode_cost

_MB = 1024 * 1024
# Decoded frames a video holds while it is tracked: the tracker's hold-back (SAM3's hotstart_delay, 15
# frames kept until their tracks are confirmed), plus the frame being decoded, the one in the model and the
# one being answered.
VIDEO_HELD_FRAMES = 15 + 3


def video_need(width: int, height: int, max_objects: int, *, name: str, capacity: int) -> int:
    """The bytes a ``width``×``height`` video holds while it is tracked: its held frames (RGB, 3 bytes a pixel,
    :data:`VIDEO_HELD_FRAMES` of them) and one frame-size mask (1 byte a pixel) for each of ``max_objects``
    tracks. :class:`VideoTooLarge` when that is over ``capacity`` (the whole budget)."""
    pixels = width * height
    need = pixels * 3 * VIDEO_HELD_FRAMES + pixels * max_objects
    if need > capacity:
        raise VideoTooLarge(
            f"{name}: {width}×{height} frames with up to {max_objects} tracks need about {need / _MB:.0f} MB "
            f"while tracked; this server's memory budget is {capacity / _MB:.0f} MB",
            hint="downscale the video, ask for fewer max_objects, or raise S3SEG_MEMORY_BUDGET_MB on the server",
        )
    return need


class MemoryBudget:
    """Bytes reserved by the images being decoded or held for the model and by the videos being tracked, at
    most ``capacity`` in all. Used from the event loop only."""

    def __init__(self, capacity: int, *, wait_s: float) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.used = 0
        self._freed = asyncio.Event()  # set (and replaced) whenever bytes are given back

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
        release = await self.reserve(need, self.wait_s if wait_s is None else wait_s)
        try:
            yield
        finally:
            release()

    async def reserve(self, need: int, wait_s: float | None = None) -> Callable[[], None]:
        """Reserve ``need`` bytes (at most ``capacity``), waiting up to ``wait_s`` (default: the budget's own
        wait) for room, else :class:`Busy`; returns the release (idempotent, to call on the event loop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.wait_s if wait_s is None else wait_s)
        while self.used + need > self.capacity:
            left = deadline - loop.time()
            if left <= 0 or need > self.capacity:
                raise Busy(
                    f"the server's memory budget is in use ({self.used / _MB:.0f} of {self.capacity / _MB:.0f} MB "
                    f"by the images and videos in flight; this request needs {need / _MB:.0f} MB)",
                    hint="retry in a moment",
                )
            with suppress(asyncio.TimeoutError):  # (then the loop refuses it; not the builtin before 3.11)
                await asyncio.wait_for(self._freed.wait(), left)
        self.used += need
        given_back = False

        def release() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self.used -= need
                freed, self._freed = self._freed, asyncio.Event()
                freed.set()  # every waiter looks again

        return release
