"""Consoles: results to stdout, progress and messages to stderr (so --json output stays clean)."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
