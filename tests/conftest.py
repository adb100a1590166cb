"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_support import tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The session's one tiny Z-Image pipeline on disk (built on first use, removed at exit)."""
    return tiny_model_dir()
