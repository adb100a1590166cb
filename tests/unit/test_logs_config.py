"""zitops.logbook.logs: JSON lines, tiers, runtime levels, access log, redaction, rotation."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from zitops.config import config_from_mapping, config_to_dict
from zitops.errors import ConfigError
from zitops.logbook import log_levels, log_processors, logs
from zitops.profile import LogSettings, load_profile, profile_to_dict

_TOUCHED = ("zitops", "diffusers", "transformers", "torch", "uvicorn.error", "uvicorn.access",
            "apscheduler", "py.warnings", "other.lib", "zitops.test")


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Leave global logging exactly as found, for the other engineers' tests."""
    for key in logs._SERVICE_ENV:
        monkeypatch.delenv(key, raising=False)
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate, list(logging.getLogger(n).handlers))
             for n in _TOUCHED}
    saved_state = dict(logs._state)
    try:
        yield
    finally:
        for h in list(root.handlers):
            if getattr(h, "_zitops", False):
                root.removeHandler(h)
                h.close()
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for n, (level, propagate, handlers) in saved.items():
            lg = logging.getLogger(n)
            for h in list(lg.handlers):
                if getattr(h, "_zitops", False):
                    h.close()
            lg.setLevel(level)
            lg.propagate = propagate
            lg.handlers[:] = handlers
        logging.captureWarnings(False)
        log_levels.stop_following()
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        logs._state.clear()
        logs._state.update(saved_state)


def _lines(path: Path) -> list[dict[str, Any]]:
    for h in logging.getLogger().handlers + logging.getLogger("uvicorn.access").handlers:
        h.flush()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _events(path: Path) -> list[str]:
    return [line["event"] for line in _lines(path)]


def test_json_line_has_required_fields_and_context(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json", process="agent")
    with logs.job_context(job_id="job-1", worker_id="w0", request_id="req-9"):
        logs.get_logger("zitops.test").info("job_started", steps=8)
    logs.get_logger("zitops.test").info("outside")
    lines = _lines(tmp_path / "zitops.log")
    assert [ln["event"] for ln in lines] == ["job_started", "outside"]
    first = lines[0]
    assert first["level"] == "info"
    assert first["logger"] == "zitops.test"
    assert first["process"] == "agent"
    assert isinstance(first["pid"], int)
    assert first["steps"] == 8
    assert (first["job_id"], first["worker_id"], first["request_id"]) == ("job-1", "w0", "req-9")
    assert first["timestamp"].endswith("Z")
    offset = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00")).utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert "job_id" not in lines[1], "context must not leak out of job_context"


def test_default_tiers_filter_per_logger(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    logging.getLogger("diffusers.pipelines").warning("diffusers_warning")
    logging.getLogger("diffusers.pipelines").error("diffusers_error")
    logging.getLogger("torch").warning("torch_warning")
    logging.getLogger("other.lib").info("other_info")
    logging.getLogger("other.lib").warning("other_warning")
    logs.get_logger("zitops.agent").debug("zitops_debug")
    logs.get_logger("zitops.agent").info("zitops_info")
    assert _events(tmp_path / "zitops.log") == ["diffusers_error", "other_warning", "zitops_info"]
    levels = logs.get_levels()
    assert levels["root"] == "WARNING" and levels["diffusers"] == "ERROR" and levels["zitops"] == "INFO"


def test_set_levels_changes_tiers_at_runtime(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    log = logs.get_logger("zitops.agent")
    log.debug("before")
    effective = logs.set_levels({"zitops": "debug", "diffusers": "WARNING"})
    assert effective["zitops"] == "DEBUG" and effective["diffusers"] == "WARNING"
    log.debug("after")
    logging.getLogger("diffusers").warning("diffusers_after")
    assert _events(tmp_path / "zitops.log") == ["after", "diffusers_after"]


@pytest.mark.parametrize(
    ("levels", "needle"),
    [({"zitops": "LOUD"}, "LOUD"), ({"bad name!": "INFO"}, "bad name!"), ({"zitops": 3}, "3")],
)
def test_set_levels_rejects_bad_input_atomically(tmp_path: Path, levels: dict[str, Any], needle: str) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    with pytest.raises(ConfigError) as err:
        logs.set_levels({"torch": "DEBUG", **levels})
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert logs.get_levels()["torch"] == "ERROR", "a rejected change must apply nothing"


def test_configure_twice_does_not_duplicate_lines(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_zitops", False)]
    assert len(ours) == 2  # stderr + file
    logs.get_logger().warning("once")
    assert _events(tmp_path / "zitops.log") == ["once"]


def test_access_log_is_separate_and_structured(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/jobs?token=s3cret", "1.1", 200
    )
    access = _lines(tmp_path / "access.log")
    assert len(access) == 1
    assert access[0]["method"] == "GET" and access[0]["status"] == 200
    assert "s3cret" not in json.dumps(access[0])
    assert _lines(tmp_path / "zitops.log") == []


def test_access_log_can_be_turned_off(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(access_log=False), log_dir=tmp_path, fmt="json")
    access = logging.getLogger("uvicorn.access")
    assert not access.hasHandlers(), "uvicorn skips access formatting only when there is no handler"
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/", "1.1", 200)
    assert not (tmp_path / "access.log").exists()
    assert _lines(tmp_path / "zitops.log") == []


def test_secrets_are_redacted(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    logs.get_logger("zitops.api").warning(
        "auth_failed Bearer abc.def-123",
        token="tok-1",
        headers={"Authorization": "Bearer tok-2", "accept": "image/png"},
        api_key="tok-3",
        url="http://x/?access_token=tok-4&a=1",
    )
    logging.getLogger("uvicorn.error").error("header was Bearer tok-5")
    text = (tmp_path / "zitops.log").read_text("utf-8")
    for secret in ("abc.def-123", "tok-1", "tok-2", "tok-3", "tok-4", "tok-5"):
        assert secret not in text
    assert "image/png" in text and "a=1" in text


@pytest.mark.parametrize("text", ["BEARER tok-6", "x bEaReR tok-6 y", "token=tok-6", "a=1&password=tok-6",
                                  "job 0f3a succeeded", "/v1/images/generations", ""])
def test_redact_text_skips_only_text_no_pattern_can_match(text: str) -> None:
    """The fast path (no "=", no "bearer" in any case) gives exactly what the patterns alone give."""
    slow = text
    for pattern, repl in log_processors._SECRET_TEXT:
        slow = pattern.sub(repl, slow)
    assert log_processors.redact_text(text) == slow and "tok-6" not in slow


def test_exceptions_are_rendered_as_a_field(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logs.get_logger("zitops.worker").exception("generate_failed")
    (line,) = _lines(tmp_path / "zitops.log")
    assert line["level"] == "error"
    assert "Traceback" in line["exception"] and "RuntimeError: kaput" in line["exception"]


def test_service_mode_silences_warnings_and_progress_env(tmp_path: Path) -> None:
    import os

    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json", service_mode=True)
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("quiet please", UserWarning, stacklevel=1)
        logs.set_levels({"py.warnings": "WARNING"})
        warnings.warn("now audible", UserWarning, stacklevel=1)
    events = " ".join(_events(tmp_path / "zitops.log"))
    assert "quiet please" not in events and "now audible" in events


def test_console_format_is_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging(LogSettings(), log_dir=None, fmt="console", service_mode=False)
    logs.get_logger("zitops.cli").info("hello_console", job_id="j1")
    err = capsys.readouterr().err
    assert "hello_console" in err and "j1" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.strip().splitlines()[-1])


def test_auto_format_is_json_when_stderr_is_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    assert not sys.stderr.isatty()
    logs.configure_logging(LogSettings(), log_dir=None, fmt="auto", service_mode=False)
    logs.get_logger("zitops.cli").warning("auto_json")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "auto_json"


def test_service_mode_with_file_keeps_stderr_to_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json", service_mode=True)
    logs.get_logger().info("file_only")
    logs.get_logger().error("both")
    err = capsys.readouterr().err
    assert "both" in err and "file_only" not in err
    assert _events(tmp_path / "zitops.log") == ["file_only", "both"]


def test_worker_writes_its_own_file(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json", process="worker-3")
    logs.get_logger("zitops.worker").info("ready")
    (line,) = _lines(tmp_path / "worker-3.log")
    assert line["process"] == "worker-3"
    assert not (tmp_path / "zitops.log").exists()


def test_a_file_handler_formats_each_line_once_and_still_rolls_over(tmp_path: Path) -> None:
    calls: list[str] = []

    class Counting(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            calls.append(record.getMessage())
            return super().format(record)

    handler = logs.FormatOnceHandler(tmp_path / "x.log", maxBytes=120, backupCount=1, encoding="utf-8")
    handler.setFormatter(Counting("%(message)s"))
    log = logging.getLogger("zitops.test.format_once")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        for n in range(4):
            log.info("line %d %s", n, "x" * 40)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert calls == [f"line {n} {'x' * 40}" for n in range(4)]  # once each, not twice (shouldRollover + emit)
    assert (tmp_path / "x.log.1").exists()
    assert (tmp_path / "x.log").read_text("utf-8").splitlines() == [f"line {n} {'x' * 40}" for n in (2, 3)]


def test_rotation_keeps_only_the_configured_backups(tmp_path: Path) -> None:
    logs.configure_logging(LogSettings(max_bytes=4096, backups=2), log_dir=tmp_path, fmt="json")
    log = logs.get_logger("zitops.bulk")
    for i in range(400):
        log.warning("filler", i=i, pad="x" * 40)
    names = sorted(p.name for p in logs.log_files(tmp_path))
    assert names == ["zitops.log", "zitops.log.1", "zitops.log.2"]
    assert all(p.stat().st_size <= 4096 + 300 for p in logs.log_files(tmp_path))


def test_library_handlers_are_adopted(tmp_path: Path) -> None:
    lib = logging.getLogger("diffusers")
    own = logging.StreamHandler(sys.stdout)
    lib.addHandler(own)
    lib.propagate = False
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    assert own not in lib.handlers and lib.propagate
    lib.setLevel(logging.WARNING)  # what a library's own import does
    logs.adopt_library_loggers()
    assert lib.level == logging.ERROR


def test_reload_levels_resets_to_the_config(tmp_path: Path) -> None:
    profile = profile_to_dict(load_profile("designer"))
    profile["logging"]["levels"] = {"root": "WARNING", "zitops": "WARNING", "diffusers": "ERROR"}
    cfg = config_from_mapping({"profile": profile, "paths": {k: str(tmp_path / k) for k in
                                                             ("state_dir", "log_dir", "output_dir", "cache_dir")}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)), "utf-8")
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json")
    logs.set_levels({"other.lib": "DEBUG"})
    levels = logs.reload_levels(path)
    assert levels["zitops"] == "WARNING"
    assert "other.lib" not in levels and logging.getLogger("other.lib").level == logging.NOTSET
    assert "torch" not in levels


def _until(predicate: Any, what: str, timeout: float = 10.0) -> Any:
    """Poll ``predicate`` until truthy; fail naming ``what`` after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _follower() -> threading.Thread:
    watcher = logs._state["watcher"]
    assert watcher is not None, "a worker with a log directory follows the tiers file"
    thread: threading.Thread = watcher[0]
    return thread


def test_agent_publishes_tiers_and_a_worker_follows_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_levels, "WATCH_INTERVAL_S", 0.05)
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json", process="agent")
    logs.set_levels({"diffusers": "INFO"})
    published = json.loads((tmp_path / logs.LEVELS_FILE).read_text("utf-8"))["levels"]
    assert published["diffusers"] == "INFO" and published["root"] == "WARNING"

    # The same interpreter now plays a worker that follows the agent's file.
    logs.configure_logging(LogSettings(), log_dir=tmp_path, fmt="json", process="worker-0")
    _until(lambda: logs.get_levels().get("diffusers") == "INFO", "a starting worker to take the agent's tiers")
    path = tmp_path / logs.LEVELS_FILE
    # WARNING, not ERROR: the follower's own complaint below is a zitops warning.
    path.write_text(json.dumps({"levels": {**published, "zitops": "WARNING"}}), "utf-8")
    _until(lambda: logs.get_levels().get("zitops") == "WARNING", "the worker to follow a changed file")

    # A bad file changes nothing; the follower says so in the worker's own log, which is the
    # event that proves it read the file (and did not just miss it).
    worker_log = tmp_path / "worker-0.log"
    path.write_text('{"levels": {"zitops": "LOUD"}}', "utf-8")
    (rejected,) = _until(lambda: [r for r in _lines(worker_log) if "not applied" in r["event"]],
                         "the follower to reject the bad file")
    assert rejected["level"] == "warning" and "LOUD" in rejected["event"] and rejected["process"] == "worker-0"
    assert logs.get_levels()["zitops"] == "WARNING"

    # Reconfiguring stops the follower: once its thread has ended, nothing applies the file any more.
    follower = _follower()
    logs.configure_logging(LogSettings(), log_dir=None, fmt="json", process="worker-0")
    follower.join(10)
    assert not follower.is_alive() and logs._state["watcher"] is None
    assert not [t for t in threading.enumerate() if t.name == follower.name]
    path.write_text(json.dumps({"levels": {"zitops": "DEBUG"}}), "utf-8")
    assert logs.get_levels()["zitops"] == "INFO"


def test_bad_format_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="auto, json or console"):
        logs.configure_logging(LogSettings(), log_dir=None, fmt="xml")  # type: ignore[arg-type]
