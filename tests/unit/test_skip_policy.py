"""The skip policy of tests/conftest.py: an unexpected skip fails the run, at collection too (issue 27)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


@pytest.mark.parametrize("body", [
    'import pytest\nnope = pytest.importorskip("zitops_no_such_module")\n\ndef test_x():\n    pass\n',
    'import pytest\n\ndef test_x():\n    pytest.skip("a tool is missing")\n',
])
def test_an_unexpected_skip_fails_the_run(pytester: pytest.Pytester, body: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The copied conftest imports the suite's support modules (tests.*): the repo root on the path,
    # as the suite itself has it from its rootdir (CI sets no PYTHONPATH).
    monkeypatch.setenv("PYTHONPATH", str(CONFTEST.parents[1]))
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_probe=body, test_other="def test_y():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*unexpected skips*"])
