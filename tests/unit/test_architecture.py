"""The house rules, checked on the source: no import circles, no oversized files, no crowded folders,
rooms that import one way, owners imported one way.

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

MAX_MODULES = 25
"""The most modules (``*.py``, ``__init__`` included) one folder may hold (STYLE.md 14: rooms by concern)."""

LAYERS: dict[str, frozenset[str]] = {
    # the agent, from the edge inward; zitops.agent.server, the composition root, may import every room
    "zitops.agent.http": frozenset({"zitops.agent.dispatch", "zitops.agent.storage", "zitops.agent.ops",
                                    "zitops.agent.contract", "zitops.agent.progress"}),
    "zitops.agent.dispatch": frozenset({"zitops.agent.workers", "zitops.agent.storage", "zitops.agent.ops",
                                        "zitops.agent.contract", "zitops.agent.progress"}),
    "zitops.agent.workers": frozenset({"zitops.agent.ops"}),
    "zitops.agent.storage": frozenset({"zitops.agent.ops", "zitops.agent.contract"}),
    "zitops.agent.ops": frozenset({"zitops.agent.contract"}),
    "zitops.agent.contract": frozenset({"zitops.agent.progress"}),
    "zitops.agent.progress": frozenset(),
    "zitops.agent.server": frozenset({"zitops.agent.http", "zitops.agent.dispatch", "zitops.agent.workers",
                                      "zitops.agent.storage", "zitops.agent.ops", "zitops.agent.contract",
                                      "zitops.agent.progress"}),
    # the engine: its rooms never reach up to the assemblers, features may use precision
    "zitops.engine.features": frozenset({"zitops.engine.precision", "zitops.engine.core"}),
    "zitops.engine.precision": frozenset({"zitops.engine.core"}),
    "zitops.engine.core": frozenset(),
    "zitops.engine.assembly": frozenset({"zitops.engine.features", "zitops.engine.precision", "zitops.engine.core"}),
    # the top level's groups: deploy uses the preflight, never the reverse; logs are below both
    "zitops.deployment": frozenset({"zitops.preflight", "zitops.logbook"}),
    "zitops.preflight": frozenset({"zitops.logbook"}),
    "zitops.logbook": frozenset(),
}
"""Room -> the rooms of its own house (the agent, the engine, the top level) it may import. An import
between two rooms of one house that is not listed fails; imports across houses and of modules in no
room (config, errors, profile ...) are not governed here."""

ENGINE_ASSEMBLERS = frozenset({"diffusers_engine", "factory", "full", "faulty", "leak"})
"""The engine's top-level modules that assemble the pipeline or an engine (room ``zitops.engine.assembly``);
every other module at the engine's top level is its core vocabulary (room ``zitops.engine.core``)."""


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


def room_of(module: str) -> str | None:
    """The room of ``module`` in :data:`LAYERS` (the longest match), or None if it is in none."""
    parts = module.split(".")
    if parts[:2] == ["zitops", "engine"] and len(parts) == 3:
        return "zitops.engine.assembly" if parts[2] in ENGINE_ASSEMBLERS else "zitops.engine.core"
    rooms = [r for r in LAYERS if module == r or module.startswith(r + ".")]
    return max(rooms, key=len) if rooms else None


def house_of(room: str) -> str:
    """The agent, the engine or the top level."""
    return next((h for h in ("zitops.agent", "zitops.engine") if room.startswith(h + ".")), "zitops")


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Each import from one room into another that :data:`LAYERS` does not allow."""
    bad = []
    for module, imported in graph.items():
        here = room_of(module)
        if here is None:
            continue
        for other in imported:
            there = room_of(other)
            if (there is not None and there != here and house_of(there) == house_of(here)
                    and there not in LAYERS[here]):
                bad.append((module, other))
    return sorted(bad)


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_package() -> None:
    graph = import_graph()
    assert "zitops.agent.workers.pool" in graph["zitops.agent.dispatch.dispatcher"]  # the graph sees real imports
    assert circles(graph) == []


def test_no_file_over_the_line_limit() -> None:
    sizes = {str(f.relative_to(PACKAGE.parent)): len(f.read_text("utf-8").splitlines())
             for f in module_files().values()}
    assert {f: n for f, n in sizes.items() if n > MAX_LINES and f not in BEING_SPLIT} == {}


def test_policies_and_strategies_do_not_import_their_owners() -> None:
    graph = import_graph()
    agent = {m for m in graph if m.startswith("zitops.agent.")}
    # The watchdog is pure policy: observations in, actions out.
    assert graph["zitops.agent.workers.watchdog"] & agent == set()
    for strategy in ("zitops.agent.workers.overlap", "zitops.agent.workers.standby"):
        assert not graph[strategy] & {"zitops.agent.workers.pool", "zitops.agent.dispatch.dispatcher"}, strategy
    # The pool owns processes and knows nothing of jobs' order or the store.
    assert not graph["zitops.agent.workers.pool"] & {"zitops.agent.dispatch.dispatcher", "zitops.agent.storage.jobs", "zitops.agent.storage.store"}
    # The dispatcher holds the store's interface, not the SQLite module.
    assert "zitops.agent.storage.jobs" not in graph["zitops.agent.dispatch.dispatcher"]


def test_no_folder_holds_more_than_25_modules() -> None:
    folders: dict[str, int] = {}
    for path in module_files().values():
        key = str(path.parent.relative_to(PACKAGE.parent))
        folders[key] = folders.get(key, 0) + 1
    assert folders["zitops/agent/http"] > 10  # the count sees the rooms
    assert {f: n for f, n in folders.items() if n > MAX_MODULES} == {}


def test_every_room_says_what_lives_there_and_what_it_may_import() -> None:
    mods = module_files()
    for room in LAYERS:
        path = mods.get(room)
        if path is None or path.name != "__init__.py":
            continue  # a module room (contract, server) or an engine group, not a package
        doc = ast.get_docstring(ast.parse(path.read_text("utf-8"))) or ""
        assert len(doc) > 80 and "may import" in doc.lower(), f"{path}: say what lives here and what it may import"


def test_the_layer_check_fails_on_an_import_against_the_order() -> None:
    graph = {m: set(ns) for m, ns in import_graph().items()}
    assert layer_violations(graph) == []
    graph["zitops.agent.storage.store"].add("zitops.agent.dispatch.dispatcher")  # the store reaching up to the jobs
    graph["zitops.agent.workers.pool"].add("zitops.agent.http.app")
    graph["zitops.engine.precision.fp8"].add("zitops.engine.diffusers_engine")
    graph["zitops.preflight.doctor"].add("zitops.deployment.deploy")
    assert layer_violations(graph) == [("zitops.agent.storage.store", "zitops.agent.dispatch.dispatcher"),
                                       ("zitops.agent.workers.pool", "zitops.agent.http.app"),
                                       ("zitops.engine.precision.fp8", "zitops.engine.diffusers_engine"),
                                       ("zitops.preflight.doctor", "zitops.deployment.deploy")]


def test_imports_point_one_way_between_rooms() -> None:
    graph = import_graph()
    assert layer_violations(graph) == []
    agent = {m for m in graph if m.startswith("zitops.agent")}
    # Nothing in the agent imports its edge but the composition root.
    assert {m for m in agent if graph[m] & {x for x in agent if x.startswith("zitops.agent.http.")}
            and not m.startswith("zitops.agent.http")} == {"zitops.agent.server"}
    # The logs and the preflight sit below the agent and the CLI.
    for room in ("zitops.logbook", "zitops.preflight", "zitops.deployment"):
        for module in (m for m in graph if m.startswith(room + ".")):
            assert not {x for x in graph[module] if x.startswith(("zitops.agent", "zitops.commands", "zitops.cli"))}, module
