"""Real libraries through zitops.logbook.logs, each in a fresh interpreter (logging is process-global).

diffusers/transformers install their own stderr handler on import, uvicorn has its
own access logger; these tests prove their records land in our files, at our
tiers, in our format, and nothing else reaches stderr.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True, text=True, timeout=100, env=env,
    )


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_worker_libraries_log_through_our_tiers(tmp_path: Path) -> None:
    script = """
        import logging, sys, warnings
        from pathlib import Path
        from zitops.logbook import logs
        from zitops.profile import LogSettings

        logs.configure_logging(LogSettings(), log_dir=Path(sys.argv[1]), fmt="json",
                               process="worker-0", service_mode=True)
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog
        dlog.get_logger("diffusers.models").warning("diffusers_warning_before_adopt")
        tlog.get_logger("transformers.models").error("transformers_error_before_adopt")
        # No explicit adopt_library_loggers(): the next zitops line adopts them.
        logs.get_logger("zitops.engine").debug("engine_loaded")
        dlog.get_logger("diffusers.models").warning("diffusers_warning")
        dlog.get_logger("diffusers.models").error("diffusers_error")
        tlog.get_logger("transformers.models").warning("transformers_warning")
        tlog.get_logger("transformers.models").error("transformers_error")
        logging.getLogger("torch._dynamo").warning("torch_warning")
        logging.getLogger("torch._dynamo").error("torch_error")
        warnings.warn("a library deprecation", FutureWarning)
        with logs.job_context(job_id="j-1", worker_id="worker-0"):
            logs.get_logger("zitops.worker").info("job_done")
        print("progress", dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    """
    proc = _run(script, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "progress False False"
    lines = _jsonl(tmp_path / "worker-0.log")
    events = [ln["event"] for ln in lines]
    # Before adoption transformers still owned its logger (its own handler,
    # no propagation); after it, every line is ours.
    assert events == ["diffusers_error", "transformers_error", "torch_error", "job_done"]
    assert {ln["process"] for ln in lines} == {"worker-0"}
    assert lines[-1]["job_id"] == "j-1" and lines[-1]["worker_id"] == "worker-0"
    # stderr is the journal: only our JSON lines at WARNING+, no "[transformers]" text.
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert not any("before_adopt" in ln and not ln.startswith("{") for ln in err_lines[2:])
    for ln in err_lines:
        if ln.startswith("{"):
            assert json.loads(ln)["level"] in ("warning", "error", "critical")
    assert "a library deprecation" not in proc.stderr


def test_uvicorn_access_log_is_separate(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = """
        import sys, threading, time
        from pathlib import Path
        import httpx, uvicorn
        from zitops.logbook import logs
        from zitops.profile import LogSettings

        logs.configure_logging(LogSettings(), log_dir=Path(sys.argv[1]), fmt="json", process="agent")

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[2]), log_config=None,
                                log_level=None, access_log=True, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        r = httpx.get(f"http://127.0.0.1:{sys.argv[2]}/v1/ping?token=sekrit",
                      headers={"Authorization": "Bearer sekrit2"}, timeout=5)
        assert r.status_code == 204
        server.should_exit = True
        thread.join(10)
    """
    proc = _run(script, str(tmp_path), str(port))
    assert proc.returncode == 0, proc.stderr
    (line,) = _jsonl(tmp_path / "access.log")
    assert line["event"] == "http_request" and line["method"] == "GET" and line["status"] == 204
    assert line["path"].startswith("/v1/ping") and "sekrit" not in json.dumps(line)
    assert line["logger"] == "uvicorn.access" and line["timestamp"].endswith("Z")
    main = tmp_path / "zitops.log"
    # uvicorn's INFO startup chatter is below the uvicorn.error WARNING tier.
    assert not main.exists() or "http_request" not in main.read_text("utf-8")
    assert not main.exists() or "Started server process" not in main.read_text("utf-8")
    assert "sekrit" not in proc.stderr
