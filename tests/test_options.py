"""The one table of option records (tapster/options.py) and what is derived from it:
the engine's options, the Adjustments defaults and casts, `tapster --help`, the
command line and PasteDeploy's strings. (The README's table: test_docs.py.)"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable

import pytest

import tapster
from tapster import _tapster, runner, server
from tapster.adjustments import Adjustments, _Marker
from tapster.options import BY_NAME, COMMAND_LINE, OPTIONS, Option, asoctal, plain
from tapster.server import create_server


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def default_text(option: Option) -> str | None:
    """The default as a string (what PasteDeploy or the command line would carry),
    read from the README/--help rendering; None where there is no such string."""
    text = plain(option.shown_default)
    return None if option.default in (None, "") or text == "none" else text


# --- the records -------------------------------------------------------------------------


def test_names_are_unique_and_in_waitress_order_first() -> None:
    names = [option.name for option in OPTIONS]
    assert len(names) == len(set(names)) == len(BY_NAME)
    assert names[:2] == ["host", "port"] and names.index("server_name") < names.index("io_threads")


def test_the_engine_options_are_the_records_that_say_engine() -> None:
    assert {option.name for option in OPTIONS if option.engine} == set(_tapster.ENGINE_OPTIONS)


def test_every_layer_is_known_and_help_is_a_sentence() -> None:
    with pytest.raises(ValueError, match="unknown layer"):
        Option("x", int, 0, "nowhere", "X.")
    for option in OPTIONS:
        assert option.help.endswith("."), option.name
        assert "|" not in option.help, option.name


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.default is not None and o.cast is not asoctal], ids=lambda o: o.name)
def test_every_default_passes_its_own_cast(option: Option) -> None:
    assert option.cast(option.default) == option.default


@pytest.mark.parametrize("option", [o for o in OPTIONS if default_text(o) is not None], ids=lambda o: o.name)
def test_the_shown_default_casts_back_to_the_default(option: Option) -> None:
    text = default_text(option)
    assert option.cast(text) == option.default
    if not isinstance(option.default, (list, set)) and not option.boolean and option.cast is not asoctal:
        assert option.cast(str(option.default)) == option.default


def test_listen_defaults_to_host_and_port() -> None:
    assert BY_NAME["listen"].default == [f"{BY_NAME['host'].default}:{BY_NAME['port'].default}"]


def test_adjustments_defaults_are_the_records() -> None:
    for option in OPTIONS:
        assert getattr(Adjustments, option.name) == option.default, option.name
    assert isinstance(Adjustments.host, _Marker) and isinstance(Adjustments.port, _Marker)
    assert Adjustments.socket_options


def test_the_defaults_pass_the_engine() -> None:
    server.engine_config(Adjustments(listen="127.0.0.1:0"))


# --- values are checked once, by the engine, before anything is bound ----------------------

PROXY = {"trusted_proxy": "10.0.0.1", "trusted_proxy_headers": "x-forwarded-for"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threads": 0}, "threads must be a positive integer"),
        ({"threads": "20000"}, "threads must be at most 10000"),
        ({"header_timeout": "0"}, "header_timeout must be a positive number of seconds"),
        ({**PROXY, "trusted_proxy_count": "0"}, "trusted_proxy_count must be at least 1"),
        ({**PROXY, "trusted_proxy": "10.0.0.1 proxy.example"}, "trusted_proxy entry \"proxy.example\" is not an IP address"),
        ({"ident": "a\nb"}, "ident must not contain control characters"),
    ],
)
def test_a_bad_value_is_a_value_error_before_any_socket_is_bound(
    options: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound: list[Any] = []
    monkeypatch.setattr(server, "_bind_tcp", lambda *args: bound.append(args))
    with pytest.raises(ValueError, match=message):
        create_server(app, listen="127.0.0.1:0", **options)
    assert bound == []
    path = tmp_path / "never.sock"
    with pytest.raises(ValueError, match=message):
        create_server(app, unix_socket=str(path), **options)
    assert not os.path.exists(path)


# --- the command line ----------------------------------------------------------------------


def test_help_lists_every_command_line_option_with_its_help_text() -> None:
    out = io.StringIO()
    runner.show_help(out, "tapster")
    text = out.getvalue()
    for option in COMMAND_LINE:
        head = ", ".join(option.flags if option.boolean else (f + "=VALUE" for f in option.flags))
        entry = f"  {head}\n      {plain(option.help)} Default: {plain(option.shown_default)}.\n"
        assert entry in text, option.name
    assert "--sockets" not in text
    assert [o.name for o in OPTIONS if not o.command_line] == ["sockets"]


def test_the_command_line_takes_every_option_as_a_string() -> None:
    argv = []
    for option in COMMAND_LINE:
        argv.append(option.flags[-1] if option.boolean else f"{option.flags[0]}=1")
    kw, args = Adjustments.parse_args(argv + ["app:app"])
    assert args == ["app:app"]
    expected = {o.name: ("false" if o.boolean else "1") for o in COMMAND_LINE}
    assert kw == {"help": False, "call": False, **expected}


# --- PasteDeploy: strings go through the same casts ------------------------------------------


def test_paste_strings_go_through_the_casts() -> None:
    strings = {o.name: default_text(o) for o in OPTIONS if o.engine and default_text(o) is not None}
    expected = {name: BY_NAME[name].default for name in strings}
    given = {
        "threads": ("3", 3),
        "expose_tracebacks": ("yes", True),
        "clear_untrusted_proxy_headers": ("off", False),
        "header_timeout": ("2.5", 2.5),
        "url_prefix": ("/mount/", "/mount"),
        "ident": ("", None),
        "trusted_proxy": ("127.0.0.1\n10.0.0.0/8", "127.0.0.1\n10.0.0.0/8"),
        "trusted_proxy_count": ("2", 2),
        "trusted_proxy_headers": ("X-Forwarded-For\nx-forwarded-proto", {"x-forwarded-for", "x-forwarded-proto"}),
    }
    for name, (text, value) in given.items():
        strings[name] = text
        expected[name] = value
    created: list[Any] = []

    def factory(application: Any, **kw: Any) -> Any:
        assert all(isinstance(value, str) for value in kw.values())
        srv = create_server(application, **kw)
        srv.close()  # run() returns at once
        created.append(srv)
        return srv

    assert tapster.serve_paste(app, {}, _server=factory, _quiet=True, listen="127.0.0.1:0", **strings) == 0
    adj = created[0].adj
    assert {name: getattr(adj, name) for name in expected} == expected
