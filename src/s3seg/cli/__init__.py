"""The ``s3seg`` command. Commands are thin: parse → call the SDK → render; one handler turns errors into
a message, a hint and an exit code."""

from __future__ import annotations

import sys
from typing import Any

import typer

from s3seg.cli._batch import batch_command
from s3seg.cli._convert import convert_command
from s3seg.cli._login import login_command, logout_command, whoami_command
from s3seg.cli._records import config_command, results_command, tasks_command, upload_command
from s3seg.cli._segment import segment_command
from s3seg.cli._serve import serve_command


class _HelpFlag:
    """Commands whose ``--help`` row shows no ``<bool>``: a flag takes no value (see ``_options``)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Command(_HelpFlag, typer.core.TyperCommand):
    pass


class _Group(_HelpFlag, typer.core.TyperGroup):
    pass


app = typer.Typer(
    name="s3seg",
    cls=_Group,
    help='Segment every instance of a concept in images with Meta\'s SAM3: s3seg segment photo.jpg "dog"',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
for _name, _command, _needs_args in (
    ("segment", segment_command, True),
    ("serve", serve_command, False),
    ("batch", batch_command, True),
    ("upload", upload_command, True),
    ("tasks", tasks_command, False),
    ("results", results_command, False),
    ("config", config_command, False),
    ("convert", convert_command, True),
    ("login", login_command, False),
    ("logout", logout_command, False),
    ("whoami", whoami_command, False),
):
    app.command(_name, cls=_Command, no_args_is_help=_needs_args)(_command)


def _version_callback(value: bool) -> None:
    if value:
        from s3seg import __version__

        typer.echo(f"s3seg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, metavar="", help="Print the version and exit."
    ),
) -> None:
    """s3seg: SAM3 text-prompted segmentation from the terminal, Python, or a GPU server."""


def main() -> None:
    """Console entry point: typer reports usage errors itself; s3seg's errors become one line + an exit code."""
    from s3seg.errors import S3SegError

    try:
        app()
    except S3SegError as e:
        if _debug():
            raise
        _fail(e.message, e.cli_hint or e.hint, e.exit_code)  # the hint phrased for flags
    except KeyboardInterrupt:
        _fail("interrupted", None, 130)
    except Exception as e:
        if _debug():
            raise
        _fail(f"unexpected error: {type(e).__name__}: {e}", "rerun with S3SEG_DEBUG=1 for the traceback", 1)


def _debug() -> bool:
    from s3seg.config import debug_enabled  # only when failing: `s3seg --help` stays light

    return debug_enabled()


def _fail(message: str, hint: str | None, code: int) -> None:
    from s3seg.cli._console import tell

    # messages carry user data and extras' names ('s3seg[server]'): plain text, never Rich markup
    tell(("error:", "bold red"), " ", message)
    if hint:
        tell(("hint:", "dim"), " ", hint)
    sys.exit(code)
