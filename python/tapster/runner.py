"""The `tapster` command (also `python -m tapster`), with waitress-serve's grammar:
`tapster [OPTS] MODULE:OBJECT`, `--name=value` for every option, `--no-name` for
booleans, repeatable `--listen`, `--call`, `--help`; same messages and exit codes."""

from __future__ import annotations

import getopt
import logging
import os
import pkgutil
import sys
from typing import IO, Any, Callable, NoReturn

from tapster import _tapster, serve
from tapster.adjustments import Adjustments
from tapster.options import COMMAND_LINE, plain

USAGE = """\
Usage:

    {name} [OPTS] MODULE:OBJECT

Serves the WSGI application MODULE:OBJECT (for example myproject.wsgi:application).
MODULE is a dotted module path, OBJECT a dotted attribute path inside it.

Options:

  --help
      Show this information.

  --call
      Call OBJECT to get the WSGI application (for application factories).
"""


def _option_help() -> str:
    """One entry per command-line option, from its record."""
    entries = []
    for option in COMMAND_LINE:
        head = ", ".join(option.flags) if option.boolean else option.flags[0] + "=VALUE"
        text = plain(f"{option.help} Default: {option.shown_default}.")
        entries.append(f"  {head}\n      {text}")
    return "\n\n".join(entries)


def show_help(stream: IO[str], name: str, error: str | None = None) -> None:
    if error is not None:
        print(f"Error: {error}\n", file=stream)
    print(USAGE.format(name=name) + "\n" + _option_help(), file=stream)


def show_exception(stream: IO[str]) -> None:
    exc_type, exc_value = sys.exc_info()[:2]
    args = getattr(exc_value, "args", ())
    print(
        f"There was an exception ({exc_type.__name__ if exc_type else 'Exception'}) "
        "importing your module.\n",
        file=stream,
    )
    if args:
        print("It had these arguments: ", file=stream)
        for index, arg in enumerate(args, 1):
            print(f"{index}. {arg}", file=stream)
    else:
        print("It had no arguments.", file=stream)


def run(argv: list[str] | None = None, _serve: Callable[..., Any] = serve) -> int:
    """Command-line entry point; returns the exit status."""
    argv = sys.argv if argv is None else argv
    name = os.path.basename(argv[0]) or "tapster"
    if name in ("__main__.py", "-m"):
        name = "tapster"
    try:
        kw, args = Adjustments.parse_args(argv[1:])
    except getopt.GetoptError as exc:
        show_help(sys.stderr, name, str(exc))
        return 1

    if kw["help"]:
        show_help(sys.stdout, name)
        return 0
    if len(args) != 1:
        show_help(sys.stderr, name, "Specify one application only")
        return 1

    logger = logging.getLogger("tapster")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)

    sys.path.append(os.getcwd())
    try:
        app = pkgutil.resolve_name(args[0])
    except (ImportError, ValueError, AttributeError):
        show_help(sys.stderr, name)
        show_exception(sys.stderr)
        return 1

    if kw.pop("call"):
        app = app()
    del kw["help"]
    _serve(app, **kw)
    if _tapster.stats()["abandoned_threads"]:
        exit_without_finalizing(0)
    return 0


def exit_without_finalizing(status: int) -> NoReturn:
    """Ends the process at once, after flushing the logs and standard streams.

    Used when a shutdown gave up on threads still inside the application: they cannot
    be stopped, and finalizing the interpreter under them is what makes a process
    abort at exit. Exit handlers (`atexit`) do not run, as under a supervisor's kill.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def main() -> None:
    """`python -m tapster` and the console script: exit with run()'s status."""
    sys.exit(run())
