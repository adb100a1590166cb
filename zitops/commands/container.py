"""``zitops container-run``: the image's default command (Containerfile's CMD).

It only chooses the config, then becomes ``zitops agent --config FILE`` (exec,
so the agent is dumb-init's one child and gets its SIGTERM).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click


@click.command("container-run")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, envvar="ZITOPS_PORT",
              help="Without a mounted config: the port to serve on [env ZITOPS_PORT].")
def container_run(port: int) -> None:
    """Run the mounted /etc/zitops/config.yaml, else the tiny model (designer profile) on --port."""
    from zitops.config import load_config
    from zitops.deployment import container

    if container.MOUNTED_CONFIG.is_file():
        path = container.MOUNTED_CONFIG
        load_config(path)  # a bad mounted config fails here, in one line
    else:
        tokens = container.MOUNTED_TOKENS if container.MOUNTED_TOKENS.is_file() else None
        path = container.write_config(container.demo_config(port, tokens))
        if tokens is None:
            click.echo(f"zitops: no {container.MOUNTED_CONFIG}: serving the tiny model (random weights, "
                       f"noise images) on port {port} without tokens; publish it on 127.0.0.1 or mount "
                       f"{container.MOUNTED_TOKENS}", err=True)
    beside = Path(sys.executable).parent / "zitops"
    exe = str(beside) if beside.is_file() else (shutil.which("zitops") or "zitops")
    os.execvp(exe, [exe, "agent", "--config", str(path)])
