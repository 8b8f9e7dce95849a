"""Reports the serving process: its uid, gid, groups, umask, working directory and the
front of sys.path, as JSON. The module has both `application` and `app`, so that
`tapster apps.whoami` shows which one the command chose."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Iterable


def _report(which: str) -> bytes:
    mask = os.umask(0)
    os.umask(mask)
    return json.dumps(
        {
            "which": which,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "groups": sorted(os.getgroups()),
            "umask": mask,
            "cwd": os.getcwd(),
            "sys_path": sys.path[:3],
        }
    ).encode()


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [_report("application")]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [_report("app")]
