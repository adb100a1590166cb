"""``zitops drill KIND``: a fault drill against a disposable local agent (see zitops.drill)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from zitops.commands.options import config_option, json_option
from zitops.drill import MAX_JOBS, exit_on_signal, format_report, plan_drill, run_drill
from zitops.errors import InvalidRequest


@contextlib.contextmanager
def _deployment_profile(config_path: str | None) -> Iterator[str]:
    """The found deployment's profile as a YAML file for the drill (it may be a custom one), or designer."""
    import yaml

    from zitops.commands.locate import announce, find_deployment

    found = find_deployment(config_path)
    announce(found, fallback="drilling the designer profile")
    if found is None:
        yield "designer"
        return
    with tempfile.TemporaryDirectory(prefix="zitops-drill-profile-") as tmp:
        path = Path(tmp) / f"{found.config.profile.name}.yaml"
        path.write_text(yaml.safe_dump(found.config.profile.model_dump(mode="json"), sort_keys=False), "utf-8")
        yield str(path)


@click.command("drill")
@click.argument("kind", metavar="KIND")
@click.option("--jobs", type=int, default=None, metavar="N",
              help=f"Jobs to submit (1..{MAX_JOBS}; default depends on KIND).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Build the deployment in DIR (new or empty) and keep it, logs included.")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="Seconds the whole drill may take (agent start included) before it gives up.")
@click.option("--real", is_flag=True,
              help="leak only: the real diffusers engine (tiny model) keeps real memory per job; on a GPU "
                   "NVML's high-water rule must catch it (docs/drills.md).")
@config_option
@json_option
def drill(kind: str, jobs: int | None, keep: Path | None, timeout_s: float, real: bool, config_path: str | None,
          as_json: bool) -> None:
    """Break a disposable agent on purpose and time its recovery.

    KIND is one of leak, crash, hang, oom, kill. Exit 0 only when every
    expectation held, including jobs lost = 0.
    """
    plan_drill(kind, jobs, real=real)  # a bad KIND, --jobs or --real fails here, in one line, before anything starts
    if timeout_s <= 0:  # (as early: before the deployment lookup says which profile it drills)
        raise InvalidRequest(f"--timeout {timeout_s:g}: give a positive number of seconds")
    # The agent runs in its own session, so a signal to the drill does not
    # reach it: the drill exits through its teardown instead.
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGINT, exit_on_signal)
    with _deployment_profile(config_path) as profile:
        report = run_drill(kind, jobs=jobs, keep=keep, timeout_s=timeout_s, real=real, profile=profile)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        for line in format_report(report):
            click.echo(line)
    sys.exit(0 if report.ok else 1)
