"""The compile-cache bundle helpers: a missing or foreign bundle never stops a worker from compiling."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from zitops.engine.precision.compile_cache import ARTIFACTS_NAME, artifacts_path, load_artifacts


def test_bundle_lives_in_the_engine_cache_dir(tmp_path: Path) -> None:
    assert artifacts_path(tmp_path) == tmp_path / ARTIFACTS_NAME


def test_a_missing_bundle_loads_nothing(tmp_path: Path) -> None:
    assert load_artifacts(tmp_path / ARTIFACTS_NAME) is None


def test_a_garbage_bundle_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("torch")
    bundle = tmp_path / ARTIFACTS_NAME
    bundle.write_bytes(b"not a torch cache bundle")
    with caplog.at_level(logging.WARNING, logger="zitops.engine"):
        assert load_artifacts(bundle) is None
    assert "not loaded" in caplog.text
