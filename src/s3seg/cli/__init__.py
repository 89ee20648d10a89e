"""The ``s3seg`` command. Commands are thin: parse → call the SDK → render; one handler turns errors into
a message, a hint and an exit code."""

from __future__ import annotations

import sys

import typer

from s3seg.cli._batch import batch_command
from s3seg.cli._convert import convert_command
from s3seg.cli._login import login_command, logout_command, whoami_command
from s3seg.cli._records import config_command, results_command, tasks_command, upload_command
from s3seg.cli._segment import segment_command
from s3seg.cli._serve import serve_command

app = typer.Typer(
    name="s3seg",
    help='Segment every instance of a concept in images with Meta\'s SAM3: s3seg segment photo.jpg "dog"',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("segment", no_args_is_help=True)(segment_command)
app.command("serve")(serve_command)
app.command("batch", no_args_is_help=True)(batch_command)
app.command("upload", no_args_is_help=True)(upload_command)
app.command("tasks")(tasks_command)
app.command("results")(results_command)
app.command("config")(config_command)
app.command("convert", no_args_is_help=True)(convert_command)
app.command("login")(login_command)
app.command("logout")(logout_command)
app.command("whoami")(whoami_command)


def _version_callback(value: bool) -> None:
    if value:
        from s3seg import __version__

        typer.echo(f"s3seg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
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
