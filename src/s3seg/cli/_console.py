"""The CLI's one output layer: results to stdout, progress and messages to stderr (so --json output stays
clean).

Both consoles have Rich markup off: every string printed, put in a table cell or a status line is shown as
written, so user data (``bad[red].jpg``), prompts and extras' names (``'s3seg[server]'``) keep their
brackets. Style comes only from :func:`styled` parts, never from markup inside text.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)

Part = str | tuple[str, str]  # plain text, or (text, Rich style)


def styled(*parts: Part) -> Text:
    """One line from plain and (text, style) parts; no part is ever parsed as markup."""
    return Text.assemble(*parts)


def say(*parts: Part) -> None:
    """A line on stdout."""
    console.print(styled(*parts), soft_wrap=True)


def tell(*parts: Part) -> None:
    """A line on stderr (notes, skipped images, errors)."""
    err_console.print(styled(*parts), soft_wrap=True)
