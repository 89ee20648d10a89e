"""``s3seg serve``: the SAM3 inference server and the public API. Imports torch (through the engine):
import it lazily."""

from s3seg.server._app import API_KEY_HEADER, create_app
from s3seg.server._gateway import WorkerPool

__all__ = ["API_KEY_HEADER", "WorkerPool", "create_app"]
