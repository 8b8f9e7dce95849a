"""The layering of src/, read from the `use` lines and paths of every Rust file:
arrows point down. `http/` imports nothing else of the crate, `server/` nothing of
`wsgi/`, `config.rs` nothing of `server/` or `wsgi/`, and no file reaches itself
through the files it imports (no circles, direct or through others)."""

from __future__ import annotations

import os
import re

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
USE = re.compile(r"\buse\s+([^;]+);")
PATH = re.compile(r"\b(crate|super)::(\w+(?:::\w+)*)")
TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod \w+\s*\{")


def rust_files() -> dict[str, str]:
    """Path relative to src/ -> the text outside comments and test modules."""
    files = {}
    for root, _, names in os.walk(SRC):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    text = re.sub(r"//.*", "", f.read())
                cut = TESTS.search(text)
                files[os.path.relpath(path, SRC)] = text[: cut.start()] if cut else text
    return files


def module_of(rel: str) -> tuple[str, ...]:
    parts = rel[: -len(".rs")].split(os.sep)
    return tuple(parts[:-1] if parts[-1] in ("mod", "lib") else parts)


def expand(spec: str) -> list[list[str]]:
    """`a::{b, c::{d}}` -> [[a, b], [a, c]] (one level deep is enough for a file)."""
    spec = " ".join(spec.split())
    if "{" not in spec:
        return [[s for s in spec.split(" as ")[0].split("::") if s]]
    head = [s for s in spec[: spec.index("{")].split("::") if s]
    inner, depth, item, items = spec[spec.index("{") + 1 : spec.rindex("}")], 0, "", []
    for ch in inner + ",":
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(item.strip())
            item = ""
        else:
            item += ch
    return [head + [s for s in it.split("{")[0].split(" as ")[0].split("::") if s] for it in items if it]


def imports() -> dict[str, set[str]]:
    files = rust_files()
    modules = {module_of(rel): rel for rel in files}
    graph: dict[str, set[str]] = {}
    for rel, text in files.items():
        here = list(module_of(rel))
        paths = [p for m in USE.finditer(text) for p in expand(m.group(1))]
        paths += [[m.group(1)] + m.group(2).split("::") for m in PATH.finditer(text)]
        targets = set()
        for path in paths:
            if not path:
                continue
            if path[0] == "crate":
                full = path[1:]
            elif path[0] == "super":
                base, rest = here[:-1], path[1:]
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
                full = base + rest
            elif path[0] == "self" or tuple(here + [path[0]]) in modules:
                full = here + (path[1:] if path[0] == "self" else path)
            else:
                continue  # another crate
            for k in range(len(full), -1, -1):
                target = modules.get(tuple(full[:k]))
                if target is not None:
                    if target != rel:
                        targets.add(target)
                    break
        graph[rel] = targets
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def test_the_reader_sees_the_imports() -> None:
    graph = imports()
    assert "server/responder.rs" in graph["server/connection.rs"]
    assert "http/request.rs" in graph["http/error.rs"] or "http/version.rs" in graph["http/error.rs"]
    assert "wsgi/pool.rs" in graph["wsgi/exchange.rs"]


def test_no_file_reaches_itself() -> None:
    graph = imports()
    circles = {f: sorted(t for t in graph[f] if f in reachable(graph, t) or t == f) for f in graph if f in reachable(graph, f)}
    assert not circles, circles


def test_arrows_point_down() -> None:
    graph = imports()
    wrong = []
    for f, targets in graph.items():
        for t in targets:
            if f.startswith("http" + os.sep) and not t.startswith("http" + os.sep):
                wrong.append((f, t))
            if f.startswith("server" + os.sep) and t.startswith("wsgi" + os.sep):
                wrong.append((f, t))
            if f == "config.rs" and t.split(os.sep)[0] in ("server", "wsgi"):
                wrong.append((f, t))
    assert not wrong, wrong
