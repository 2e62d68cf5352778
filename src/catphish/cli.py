"""The ``catphish`` command line: thin typer groups over the library API.

Known bad input (:class:`CatphishError`) prints one red line and exits 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys

import click
import typer
from rich.text import Text

from catphish import __version__
from catphish.errors import CatphishError
from catphish.runtime import configure_logging, console, settings

app = typer.Typer(
    name="catphish",
    help="Privacy-preserving multi-site brain-tumour MRI learning: site latent diffusion models shipped once to a hub, "
    "synthetic cohorts, federated and centralized baselines, statistics and reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"catphish {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    device: str = typer.Option("auto", help="Compute device: auto (CUDA when present), cpu or cuda."),
    seed: int = typer.Option(0, help="Seed for every random choice; recorded in run.json."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bars."),
    log_file: str | None = typer.Option(None, help="Also write a plain-text log to this file."),
    debug: bool = typer.Option(False, help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Global options apply to every command."""
    settings.device, settings.seed, settings.quiet, settings.debug = device, seed, quiet, debug
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise CatphishError(f"--device must be auto, cpu or cuda, got '{device}'")
    settings.log_file = log_file
    configure_logging(quiet=quiet, log_file=log_file, debug=debug)


def _register_groups() -> None:
    # Imported here so `catphish --help` stays fast and each group owns its own module.
    from catphish.commands import register

    register(app)


_register_groups()


def run() -> None:
    """Console-script entry point with catphish's error policy."""
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=sys.argv[1:], prog_name="catphish", standalone_mode=False)
    except CatphishError as exc:
        if settings.debug:
            console.print_exception()
        console.print(Text.assemble(("error: ", "bold red"), (one_line(str(exc)), "red")), soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: checkpoints written so far are kept; rerun with --resume[/yellow]")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)


def one_line(message: str) -> str:
    """An error message on one line: some library texts quoted in messages (YAML parser errors, …) span several."""
    return " ".join(message.split())
