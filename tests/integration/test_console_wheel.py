"""The wheel ships the console and every vendored asset, and the agent serves them from the unpacked wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "zitops" / "agent" / "static"


def test_wheel_ships_the_console_assets(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "zitops", "templates"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=240, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("zitops-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"zitops/agent/static/{p.relative_to(STATIC).as_posix()}" for p in STATIC.rglob("*") if p.is_file()}
    assert len(expected) > 10 and expected <= names, sorted(expected - names)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = ("import zitops.agent.http.console as c; from pathlib import Path; "
            f"assert Path(c.__file__).is_relative_to({str(unpacked)!r}), c.__file__; "
            "t = c._asset_table(c.STATIC_DIR); "
            "print(sorted(k for k in t if k.endswith(('.js', '.html')) or k == '/'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(unpacked)}, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for url in ("/", "/static/console.js", "/static/vendor/uplot/uPlot.iife.min.js",
                "/static/vendor/swagger-ui/swagger-ui-bundle.js", "/static/vendor/redoc/redoc.standalone.js"):
        assert repr(url) in proc.stdout, (url, proc.stdout)
