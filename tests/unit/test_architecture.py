"""The house rules, checked on the source: no import circles, no oversized files, owners imported one way.

The circle finder is the reviewer's (``before-stop``): every ``import`` and
``from ... import`` of a zitops module, ``TYPE_CHECKING`` ones included,
is an edge, and any strongly connected group of two or more modules fails.
That each module also imports on its own in a fresh interpreter is
``tests/unit/test_imports.py`` (pip-tools' ``test_circular_imports.py``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import zitops

PACKAGE = Path(zitops.__file__).resolve().parent
MAX_LINES = 450
"""The hard limit for any zitops/**/*.py (aim for 400: STYLE.md)."""

BEING_SPLIT: frozenset[str] = frozenset()
"""Over the limit today and being split on other branches (issue 18); delete each entry once it lands."""


def module_files() -> dict[str, Path]:
    """Every zitops module by dotted name."""
    root = PACKAGE.parent
    return {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
            for f in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the zitops modules it imports (absolute imports; ``from m import name`` counts ``m.name`` too)."""
    mods = module_files()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[mod].update(n for n in names if n in mods and n != mod)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_package() -> None:
    graph = import_graph()
    assert "zitops.agent.pool" in graph["zitops.agent.dispatcher"]  # the graph sees real imports
    assert circles(graph) == []


def test_no_file_over_the_line_limit() -> None:
    sizes = {str(f.relative_to(PACKAGE.parent)): len(f.read_text("utf-8").splitlines())
             for f in module_files().values()}
    assert {f: n for f, n in sizes.items() if n > MAX_LINES and f not in BEING_SPLIT} == {}


def test_policies_and_strategies_do_not_import_their_owners() -> None:
    graph = import_graph()
    agent = {m for m in graph if m.startswith("zitops.agent.")}
    # The watchdog is pure policy: observations in, actions out.
    assert graph["zitops.agent.watchdog"] & agent == set()
    for strategy in ("zitops.agent.overlap", "zitops.agent.standby"):
        assert not graph[strategy] & {"zitops.agent.pool", "zitops.agent.dispatcher"}, strategy
    # The pool owns processes and knows nothing of jobs' order or the store.
    assert not graph["zitops.agent.pool"] & {"zitops.agent.dispatcher", "zitops.agent.jobs", "zitops.agent.store"}
    # The dispatcher holds the store's interface, not the SQLite module.
    assert "zitops.agent.jobs" not in graph["zitops.agent.dispatcher"]
