"""Imported first by ``s3seg.engine``: the base install is the light client (no torch), so a missing
local-inference dependency is one line naming the extra, not an ImportError traceback."""

from importlib.util import find_spec

from s3seg.errors import DependencyError

for _name in ("torch", "torchvision", "transformers"):
    if find_spec(_name) is None:
        raise DependencyError(
            f"local inference needs {_name}, which is not installed",
            hint="pip install 's3seg[local]' (install a CPU-only or CUDA torch build first: see pytorch.org), "
            "or segment on a server with --server URL or --api URL",
        )
