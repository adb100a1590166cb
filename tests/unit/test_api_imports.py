"""The HTTP layer and the client commands never import torch, diffusers or pynvml."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["zitops.agent.http.app", "zitops.commands.client"])
def test_api_modules_stay_torch_free(module: str) -> None:
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'diffusers', 'transformers', 'pynvml') "
            "if m in sys.modules]; print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} imported {done.stdout.strip()}"
