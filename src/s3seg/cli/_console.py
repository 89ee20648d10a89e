"""The CLI's one output layer: results to stdout, progress and messages to stderr (so --json output stays
clean).

Both consoles have Rich markup off: every string printed, put in a table cell or a status line is shown as
written, so user data (``bad[red].jpg``), prompts and extras' names (``'s3seg[server]'``) keep their
brackets. Style comes only from :func:`styled` parts, never from markup inside text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from rich.progress import Progress

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


def progress_bar(label: str, *texts: str, show: bool = True) -> Progress:
    """A progress bar on stderr: ``label`` (Rich's format, e.g. ``"{task.description}"``), the bar, done/total,
    the ``texts`` columns and the time left. It goes away when done, and is hidden when stderr is not a
    terminal or ``show`` is false."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(t) for t in texts),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not show or not err_console.is_terminal,
    )
