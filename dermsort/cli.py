"""The ``dermsort`` command: one click group whose heavy subcommands are imported only when used.

``dermsort sort`` never pays for torch; a subcommand whose extra is not installed says which
``pip install "dermsort[...]"`` brings it, in one line.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from dermsort import __version__

#: name -> (module:attribute, extra that provides it)
COMMANDS = {
    "sort": ("dermsort.runtime.cli:sort", ""),
    "watch": ("dermsort.runtime.cli:watch", ""),
    "info": ("dermsort.runtime.cli:info", ""),
    "report": ("dermsort.runtime.cli:report", ""),
    "validate": ("dermsort.runtime.cli:validate", ""),
    "sign": ("dermsort.runtime.sign_cli:sign", ""),
    "keygen": ("dermsort.runtime.sign_cli:keygen", ""),
    "train": ("dermsort.train.cli:train", "train"),
    "evaluate": ("dermsort.train.cli:evaluate", "train"),
    "fit-gate": ("dermsort.train.cli:fit_gate", "train"),
    "export": ("dermsort.export.cli:export", "export"),
    "export-engines": ("dermsort.export.cli:export_engines", "tensorrt"),
    "bench": ("dermsort.bench.cli:bench", "bench"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, extra = COMMANDS[name]
        module_name, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            advice = f'pip install "dermsort[{extra}]"' if extra else "pip install --force-reinstall dermsort"

            @click.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                           help=f"(needs {advice})")
            def unavailable() -> None:
                raise click.ClickException(f"`dermsort {name}` needs {missing}, which is not installed: {advice}")

            return unavailable


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dermsort")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Sort dermoscopy images into benign/ and review/ at a measured sensitivity, offline."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    from dermsort.runtime.errors import DermsortError

    try:
        cli.main(args=argv, prog_name="dermsort", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("dermsort: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except DermsortError as exc:
        click.echo(f"dermsort: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("dermsort: interrupted", err=True)
        return 130
    except OSError as exc:
        # disk full, permission denied, ... outside the places that already explain themselves
        click.echo(f"dermsort: error: {exc.strerror or exc} ({exc.filename or ''})".rstrip(" ()"), err=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
