"""``s3seg serve``: the SAM3 inference server. Imports torch (through the engine): import it lazily."""

from s3seg.server._app import API_KEY_HEADER, create_app

__all__ = ["API_KEY_HEADER", "create_app"]
