"""Fixtures shared by every test directory, and the suite's skip policy.

A skip is a failure unless it is listed here with its reason.

A test that skips because a tool or package is missing proves nothing, and
CI would stay green on a machine that silently lacks an install step. Each
allowed skip names where it may happen and why; anything else fails the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine_support import tiny_model_dir


@dataclass(frozen=True)
class AllowedSkip:
    """Skips of tests under ``where`` whose reason matches ``reason`` are expected."""

    where: str
    reason: str
    why: str


ALLOWED_SKIPS = (
    AllowedSkip("tests/gpu/", r"CUDA", "the GPU lane runs on a GPU host only (docs/gpu-lane/)"),
    AllowedSkip("tests/adversarial/test_full_disk.py", r"mount a tmpfs",
                "a really full filesystem needs a tmpfs mount, which needs root (CI runs as root)"),
)

_unexpected: list[str] = []


def _allowed(nodeid: str, reason: str) -> bool:
    return any(nodeid.startswith(a.where) and re.search(a.reason, reason) for a in ALLOWED_SKIPS)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skip that the list does not allow."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not _allowed(report.nodeid, reason):
        _unexpected.append(f"{report.nodeid}: {reason}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module skipped whole at collection (a module-level ``pytest.importorskip``) counts like a test's skip."""
    if not report.skipped:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not _allowed(report.nodeid, reason):
        _unexpected.append(f"{report.nodeid}: {reason} (the whole module, at collection)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Turn an unexpected skip into a failed run."""
    if _unexpected and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which skips failed the run and how to allow one."""
    if _unexpected:
        terminalreporter.section("unexpected skips (install what is missing, or list it in tests/conftest.py)")
        for line in _unexpected:
            terminalreporter.line(line)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The session's one tiny Z-Image pipeline on disk (built on first use, removed at exit)."""
    return tiny_model_dir()


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Each test leaves os.environ as it found it.

    Product code run in-process sets variables for the processes it spawns
    (``configure_logging(service_mode=True)`` sets TQDM_DISABLE, the engine sets
    the offline and compile-cache ones); left behind, they reach every later
    test's subprocesses in that pytest process. Seen when test files began to
    share worker processes (pytest-xdist): a pty test's progress bar vanished.
    """
    before = dict(os.environ)
    yield
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)
