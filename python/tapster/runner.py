"""The `tapster` command (also `python -m tapster`), with waitress-serve's grammar:
`tapster [OPTS] MODULE:OBJECT`, `--name=value` for every option, `--no-name` for
booleans, repeatable `--listen`, `--call`, `--help`; the same exit codes.

On top of Waitress's: `-h`, `--version`, `MODULE` alone (its `application`, else its
`app`), the command-line-only options of the records' `cli` layer (`--log-level`,
`--config`, `--chdir`, `--pythonpath`, `--user`, `--group`, `--umask`), and errors
as one `Error: ...` line on stderr instead of the whole help or a traceback."""

from __future__ import annotations

import getopt
import logging
import os
import pkgutil
import signal
import sys
import types
from typing import IO, Any, Callable, NoReturn

from tapster import __version__, _tapster, serve, wants_supervisor
from tapster.adjustments import Adjustments
from tapster.options import (
    BY_NAME,
    COMMAND_LINE,
    SECTIONS,
    Option,
    as_trusted_proxies,
    aslist,
    aslist_cronly,
    aspathlist,
    asset,
    plain,
)
from tapster.process import flush_std_streams
from tapster.server import create_server

#: The command's log format on stderr (Gunicorn's shape).
LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"

#: The casts that take a list (a TOML array in a configuration file).
LIST_CASTS = frozenset((aslist, asset, aslist_cronly, aspathlist, as_trusted_proxies))

#: The options that say where to listen: given on the command line, they replace all
#: of those a configuration file gives.
LISTEN_OPTIONS = frozenset(("host", "port", "listen", "unix_socket"))

USAGE = """\
Usage: {name} [OPTIONS] MODULE:OBJECT

Serves the WSGI application MODULE:OBJECT (for example myproject.wsgi:application).
MODULE is a dotted module path, OBJECT a dotted attribute path inside it; MODULE
alone serves its application attribute, or else its app attribute.

General:
  -h, --help
      Show this information and exit.

  --version
      Show the version and exit.

  --call
      Call OBJECT to get the WSGI application (for application factories).
"""


class StartupError(Exception):
    """A reason not to start, shown as one `Error: ...` line; exit status 1."""


def _entry(option: Option) -> str:
    head = ", ".join(option.flags if option.boolean else (f + "=VALUE" for f in option.flags))
    text = plain(f"{option.help} Default: {option.shown_default}.")
    return f"  {head}\n      {text}"


def _option_help() -> str:
    """The command-line options, grouped by their records' sections."""
    parts = []
    for section, title in SECTIONS:
        entries = [_entry(option) for option in COMMAND_LINE if option.section == section]
        if entries:
            parts.append(f"{title}:\n" + "\n\n".join(entries))
    return "\n\n".join(parts)


def show_help(stream: IO[str], name: str, error: str | None = None) -> None:
    if error is not None:
        print(f"Error: {error}\n", file=stream)
    print(USAGE.format(name=name) + "\n" + _option_help(), file=stream)
    stream.flush()


def usage_error(name: str, message: str) -> int:
    """One line saying what is wrong, one saying where help is; exit status 1."""
    print(f"Error: {message}\nTry '{name} --help' for more information.", file=sys.stderr)
    return 1


def show_exception(stream: IO[str]) -> None:
    """Waitress's account of an exception raised by importing the application."""
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


# --- the configuration file and the values ------------------------------------------------


def _check_value(option: Option, value: Any, where: str) -> None:
    """Runs `value` through its record's cast; a failure is a StartupError naming
    `where` the value came from."""
    if isinstance(value, bool) and not option.boolean:
        raise StartupError(f"{where}: {option.name} takes a value, not a boolean")
    if option.cast is int and isinstance(value, float):
        raise StartupError(f"{where}: {option.name} must be an integer, not {value!r}")
    try:
        option.cast(value)
    except (ValueError, TypeError) as exc:
        raise StartupError(f"{where}: {exc}") from None


def load_config(path: str) -> dict[str, Any]:
    """The options of a TOML file: the records' names (serve()'s keyword arguments and
    the command line's own), values of their natural TOML types or strings."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise StartupError(
                f"--config={path}: reading TOML needs Python 3.11 or later, or the tomli package"
            ) from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise StartupError(f"--config={path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StartupError(f"{path}: not valid TOML: {exc}") from None
    for name, value in data.items():
        option = BY_NAME.get(name)
        if option is None or not option.command_line or name == "config":
            raise StartupError(f"{path}: unknown option {name!r}")
        if isinstance(value, list):
            if option.cast not in LIST_CASTS or not all(isinstance(i, (str, int)) for i in value):
                raise StartupError(f"{path}: option {name} takes one value, not an array")
            value = [str(item) for item in value]
            data[name] = value
        elif not isinstance(value, (str, int, float, bool)):
            raise StartupError(
                f"{path}: option {name} must be a string, number, boolean or array of strings"
            )
        _check_value(option, value, f"{path}: option {name}")
    return data


def options_from(kw: dict[str, Any]) -> dict[str, Any]:
    """The options: the configuration file's (when `--config` is given) overridden by
    the command line's, every value checked by its record's cast."""
    for key, value in kw.items():
        option = BY_NAME[key]
        _check_value(option, value, f"{option.flags[0]}={value}")
    if kw.get("config") is None:
        return kw
    values = load_config(kw["config"])
    if LISTEN_OPTIONS & kw.keys():
        values = {k: v for k, v in values.items() if k not in LISTEN_OPTIONS}
    values.update(kw)
    return values


# --- the process: logging, placement, privileges --------------------------------------------


def setup_logging(level_name: str) -> None:
    """The `tapster` logger at `level_name`, on stderr in LOG_FORMAT. The root logger
    gets the handler (so the application's records look the same) and stays at
    WARNING unless the level asked for is more severe."""
    level = getattr(logging, level_name.upper())
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("tapster").setLevel(level)


def place(chdir: str | None, pythonpath: list[str]) -> None:
    """`--chdir`, then `--pythonpath` in front of sys.path, then the (new) working
    directory at the end of it, as waitress-serve does."""
    if chdir is not None:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise StartupError(f"--chdir={chdir}: {exc.strerror or exc}") from None
    sys.path[:0] = [os.path.abspath(path) for path in pythonpath]
    sys.path.append(os.getcwd())


class Privileges:
    """`--user`, `--group` and `--umask`: looked up (and refused) before anything is
    bound, applied once the sockets are."""

    def __init__(self, user: str | None, group: str | None, umask: int | None) -> None:
        self.umask = umask
        self.uid: int | None = None
        self.gid: int | None = None
        self.username: str | None = None
        if user is not None:
            import pwd

            try:
                entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            except KeyError:
                if not user.isdigit():
                    raise StartupError(f"--user={user}: no such user") from None
                if group is None:
                    # Without a passwd entry there is no group to take: keeping root's
                    # would leave the process in group 0.
                    raise StartupError(
                        f"--user={user}: no passwd entry for this uid, so give --group too"
                    ) from None
                self.uid = int(user)
            else:
                self.uid, self.gid, self.username = entry.pw_uid, entry.pw_gid, entry.pw_name
            if self.uid != os.geteuid() and os.geteuid() != 0:
                raise StartupError(
                    f"--user={user}: only root can switch to another user "
                    f"(running as uid {os.geteuid()})"
                )
        if group is not None:
            import grp

            try:
                self.gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
            except KeyError:
                if not group.isdigit():
                    raise StartupError(f"--group={group}: no such group") from None
                self.gid = int(group)
            if self.gid != os.getegid() and os.geteuid() != 0:
                raise StartupError(
                    f"--group={group}: only root can switch to another group "
                    f"(running as uid {os.geteuid()})"
                )

    def apply_umask(self) -> None:
        """The umask, before the application is imported (it creates the files)."""
        if self.umask is not None:
            os.umask(self.umask)

    def apply(self, unix_socket: str | None) -> None:
        """Once the sockets are bound: the Unix socket handed to the new owner, then the
        group (and supplementary groups), then the user."""
        if unix_socket is not None and (self.uid is not None or self.gid is not None):
            os.chown(unix_socket, -1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid)
        if os.geteuid() == 0 and self.gid is not None:
            if self.username is not None:
                os.initgroups(self.username, self.gid)
            else:
                os.setgroups([self.gid])
        if self.gid is not None and self.gid != os.getegid():
            os.setgid(self.gid)
        if self.uid is not None and self.uid != os.geteuid():
            os.setuid(self.uid)
        if self.uid is not None or self.gid is not None:
            logging.getLogger("tapster").info(
                "Running as uid %d, gid %d", os.getuid(), os.getgid()
            )


# --- the application ------------------------------------------------------------------------


def load_app(spec: str, call: bool) -> Any:
    """The WSGI application `spec` names (MODULE:OBJECT, MODULE.OBJECT, or MODULE for
    its `application`, or else its `app`), called first with `call`."""
    try:
        obj = pkgutil.resolve_name(spec)
    except (ImportError, ValueError, AttributeError) as exc:
        print(f"Error: {exc}\n", file=sys.stderr)
        show_exception(sys.stderr)
        raise StartupError("") from None
    if isinstance(obj, types.ModuleType):
        for attr in ("application", "app"):
            if hasattr(obj, attr):
                obj, spec = getattr(obj, attr), f"{spec}:{attr}"
                break
        else:
            raise StartupError(
                f"module {spec!r} has no 'application' or 'app' object: "
                f"name the application, as in {spec}:OBJECT"
            )
    if call:
        if not callable(obj):
            raise StartupError(f"{spec} is not callable ({type(obj).__name__}), so --call cannot call it")
        obj = obj()
        spec = f"{spec}()"
    if not callable(obj):
        raise StartupError(
            f"{spec} is not a WSGI application: a {type(obj).__name__} is not callable"
        )
    return obj


# --- the command ------------------------------------------------------------------------------


def run(argv: list[str] | None = None, _serve: Callable[..., Any] = serve) -> int:
    """Command-line entry point; returns the exit status."""
    argv = sys.argv if argv is None else argv
    name = os.path.basename(argv[0]) or "tapster"
    if name in ("__main__.py", "-m"):
        name = "tapster"
    try:
        kw, args = Adjustments.parse_args(argv[1:])
    except getopt.GetoptError as exc:
        return usage_error(name, str(exc))

    if kw.pop("help"):
        show_help(sys.stdout, name)
        return 0
    if kw.pop("version", False):
        print(f"tapster {__version__}")
        sys.stdout.flush()
        return 0
    if len(args) != 1:
        return usage_error(name, "Specify one application only")
    call = kw.pop("call")

    try:
        kw = options_from(kw)
        # The command's own options (the records' `cli` layer) are not serve()'s.
        cli = {o.name: o.default for o in COMMAND_LINE if not o.keyword}
        for key in cli:
            if kw.get(key) is not None:
                cli[key] = BY_NAME[key].cast(kw.pop(key))
            kw.pop(key, None)
        setup_logging(cli["log_level"])
        privileges = Privileges(cli["user"], cli["group"], cli["umask"])
        privileges.apply_umask()
        place(cli["chdir"], cli["pythonpath"])
        if wants_supervisor(kw):
            return serve_supervised(kw, args[0], call, privileges)
        app = load_app(args[0], call)

        def server_factory(application: Any, **options: Any) -> Any:
            """create_server(), its refusals as StartupErrors, then the privileges."""
            try:
                server = create_server(application, **options)
            except (ValueError, OSError) as exc:
                raise StartupError(str(exc)) from None
            try:
                privileges.apply(server.adj.unix_socket)
            except OSError as exc:
                server.close()
                raise StartupError(f"could not switch user or group: {exc}") from None
            return server

        _serve(app, _server=server_factory, **kw)
    except StartupError as exc:
        if str(exc):
            print(f"Error: {exc}", file=sys.stderr)
        return 1
    if _tapster.stats()["abandoned_threads"]:
        exit_without_finalizing(0)
    return 0


def serve_supervised(kw: dict[str, Any], spec: str, call: bool, privileges: Privileges) -> int:
    """Worker processes: the supervisor binds and drops privileges; the workers (or,
    with `--preload`, the supervisor) import the application."""
    from tapster.supervisor import BOOT_FAILED, serve_workers  # only with workers

    def load() -> Any:
        try:
            return load_app(spec, call)
        except StartupError as exc:
            if str(exc):
                print(f"Error: {exc}", file=sys.stderr)
            raise SystemExit(BOOT_FAILED) from None

    def after_bind(adj: Adjustments) -> None:
        try:
            privileges.apply(adj.unix_socket)
        except OSError as exc:
            raise StartupError(f"could not switch user or group: {exc}") from None

    try:
        return serve_workers(kw, None, load, after_bind)
    except (ValueError, OSError) as exc:
        raise StartupError(str(exc)) from None
    except SystemExit as exc:  # --preload: the import failed
        return 1 if exc.code else 0


def exit_without_finalizing(status: int) -> NoReturn:
    """Ends the process at once, after flushing the logs and standard streams.

    Used when a shutdown gave up on threads still inside the application: they cannot
    be stopped, and finalizing the interpreter under them is what makes a process
    abort at exit. Exit handlers (`atexit`) do not run, as under a supervisor's kill.
    """
    logging.shutdown()
    flush_std_streams()
    os._exit(status)


def main() -> None:
    """`python -m tapster` and the console script: exit with run()'s status. A reader
    that goes away early (`tapster --help | head -3`) is not an error. SIGUSR1 (reopen
    the access log) is ignored until the server handles it: logrotate sending it while
    the application is being imported must not end the process."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        status = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 0
    sys.exit(status)


__all__ = ["LOG_FORMAT", "StartupError", "load_app", "load_config", "main", "run", "show_help"]
