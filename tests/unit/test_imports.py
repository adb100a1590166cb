"""Import hygiene, each check in a fresh interpreter (pip-tools style).

The light commands never pull in the GPU stack, and every zitops module
imports on its own, so no import cycle hides behind import order.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import zitops

HEAVY = ("torch", "diffusers", "pynvml", "transformers")
PROBE = """
import json, sys
from zitops.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)
"""


def fresh(code: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter."""
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize(
    "argv",
    [("--help",), ("profiles",), ("profiles", "show", "lowvram"), ("deploy", "--out", "{out}")],
    ids=["help", "profiles", "profiles-show", "deploy"],
)
def test_light_commands_do_not_import_the_gpu_stack(tmp_path: Path, argv: tuple[str, ...]) -> None:
    args = [a.format(out=tmp_path / "deploy") for a in argv]
    proc = fresh(PROBE.format(heavy=HEAVY), *args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


def all_modules() -> list[str]:
    """Every module of the zitops package, found on disk."""
    names = ["zitops"]
    for info in pkgutil.walk_packages(zitops.__path__, "zitops."):
        names.append(info.name)
    return sorted(names)


# One fresh interpreter preloads the third-party stack (torch alone takes
# seconds), then forks one child per zitops module: each child starts with
# no zitops module loaded, as a fresh interpreter would, for milliseconds.
FORK_EACH = """
import importlib, json, os, sys, traceback
for dep in ("pydantic", "yaml", "jinja2", "click", "structlog", "fastapi", "uvicorn", "httpx",
            "numpy", "PIL", "torch", "diffusers", "transformers"):
    try:
        importlib.import_module(dep)
    except ImportError:
        pass
assert not [m for m in sys.modules if m == "zitops" or m.startswith("zitops.")]
failures = {}
for name in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as pipe:
        message = pipe.read()
    if os.waitpid(pid, 0)[1] != 0:
        failures[name] = message
print(json.dumps(failures))
"""


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    modules = all_modules()
    assert "zitops.deployment.deploy" in modules and "zitops.commands.deploy" in modules
    proc = fresh(FORK_EACH, *modules, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}
