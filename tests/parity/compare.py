"""Comparing what both servers did: their views after the harness exclusions and the
README normalisations (`compare`), the differences left (`diff`, `mismatches`), and
the failure message (`mismatch_report`); also the log lines both must (or must not)
have written (`log_problems`)."""

from __future__ import annotations

import re
import time
from typing import Any, Iterable

from .normalisations import ALWAYS, HEADER_CASE, Context, Normalisation
from .scripts import Outcome, Step, run_both
from .servers import ServerPair
from .views import View, parse_requests, view_of


def compare(
    pair: ServerPair,
    steps: list[Step],
    w_out: Outcome,
    t_out: Outcome,
    declared: Iterable[Normalisation] = (),
) -> tuple[View, View, list[str]]:
    """The two views after the harness exclusions, the always-on README normalisations
    and the scenario's declared ones (applied to the Waitress view)."""
    ctx = Context(pair, parse_requests(steps))
    w, t = view_of(w_out), view_of(t_out)
    for norm in [*declared, *(n for n in ALWAYS if n is not HEADER_CASE)]:
        if norm.apply is not None:
            norm.apply(w, ctx)
    HEADER_CASE.apply(w, ctx)  # type: ignore[misc]
    HEADER_CASE.apply(t, ctx)  # type: ignore[misc]
    return w, t, ctx.applied


def diff(w: Any, t: Any, path: str = "") -> list[str]:
    """Human-readable differences between two nested structures."""
    out: list[str] = []
    if isinstance(w, dict) and isinstance(t, dict):
        for key in sorted(set(w) | set(t), key=str):
            sub = f"{path}[{key!r}]"
            if key not in w:
                out.append(f"{sub}: waitress=<absent> tapster={t[key]!r}")
            elif key not in t:
                out.append(f"{sub}: waitress={w[key]!r} tapster=<absent>")
            else:
                out.extend(diff(w[key], t[key], sub))
    elif isinstance(w, list) and isinstance(t, list) and path.endswith("['headers']"):
        if w != t:
            wo = [h for h in w if h not in t]
            to = [h for h in t if h not in w]
            out.append(f"{path}: only waitress={wo!r} only tapster={to!r}")
    elif isinstance(w, list) and isinstance(t, list) and len(w) == len(t):
        for i, (a, b) in enumerate(zip(w, t)):
            out.extend(diff(a, b, f"{path}[{i}]"))
    elif w != t:
        wr, tr = repr(w), repr(t)
        if len(wr) > 600:
            wr = wr[:600] + "..."
        if len(tr) > 600:
            tr = tr[:600] + "..."
        out.append(f"{path}: waitress={wr} tapster={tr}")
    return out


def mismatches(
    pair: ServerPair,
    steps: list[Step],
    declared: Iterable[Normalisation] = (),
) -> tuple[list[str], list[str], Outcome, Outcome]:
    """Runs `steps` against both servers; returns the differences left after the
    normalisations, the normalisations that applied, and both raw outcomes."""
    w_out, t_out = run_both(pair, steps)
    w, t, applied = compare(pair, steps, w_out, t_out, declared)
    return diff(w.as_dict(), t.as_dict()), applied, w_out, t_out


def mismatch_report(pair: ServerPair, problems: list[str], applied: list[str]) -> str:
    return (
        f"parity mismatch [{pair.name}: {' '.join(pair.options)}]"
        + (f" (normalised: {', '.join(sorted(set(applied)))})" if applied else "")
        + "\n  "
        + "\n  ".join(problems)
    )


def log_problems(pair: ServerPair, present: Iterable[str], absent: Iterable[str]) -> list[str]:
    """Log lines (regexes) both servers must have written, or must not have."""
    out = []
    for pattern in present:
        for side in ("waitress", "tapster"):
            try:
                pair.wait_for_log(side, pattern, timeout=3)
            except AssertionError:
                out.append(f"log: {side} wrote no line matching {pattern!r}")
    absent = list(absent)
    if absent:
        time.sleep(0.2)
    for pattern in absent:
        for side in ("waitress", "tapster"):
            lines = [line for line in pair.log(side).splitlines() if re.search(pattern, line)]
            if lines:
                out.append(f"log: {side} wrote {lines[0]!r}, matching {pattern!r}")
    return out
