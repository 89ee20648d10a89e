"""``python -m s3seg`` is the ``s3seg`` command."""

from s3seg.cli import main

main()
