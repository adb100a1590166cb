"""The skip policy of tests/conftest.py: an unexpected skip fails the run, at collection too (issue 27)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


AT_COLLECTION = 'import pytest\nnope = pytest.importorskip("zitops_no_such_module")\n\ndef test_x():\n    pass\n'
IN_A_TEST = 'import pytest\n\ndef test_x():\n    pytest.skip("a tool is missing")\n'
SERIAL, XDIST = ("-p", "no:xdist"), ("-n", "2")


@pytest.mark.parametrize(("body", "mode"), [(AT_COLLECTION, SERIAL), (IN_A_TEST, SERIAL), (AT_COLLECTION, XDIST)],
                         ids=["collection", "test", "collection-xdist"])
def test_an_unexpected_skip_fails_the_run(pytester: pytest.Pytester, body: str, mode: tuple[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # CI runs the suite under xdist, where a worker's collection skip reaches the controller's hook.
    # The copied conftest imports the suite's support modules (tests.*): the repo root on the path,
    # as the suite itself has it from its rootdir (CI sets no PYTHONPATH).
    monkeypatch.setenv("PYTHONPATH", str(CONFTEST.parents[1]))
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_probe=body, test_other="def test_y():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *mode)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*unexpected skips*"])
