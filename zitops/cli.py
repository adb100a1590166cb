"""The command line: declarations only. Each command lives in its own module
under ``zitops.commands`` and is imported only when invoked, so ``zitops
--help`` stays fast and never imports torch, diffusers or pynvml."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from zitops import __version__
from zitops.errors import ZitopsError

# name -> (module, attribute, one-line help). Help text lives here so that
# listing commands does not import their modules.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "deploy": ("zitops.commands.deploy", "deploy", "Render (and optionally install/start) a deployment."),
    "profiles": ("zitops.commands.profiles", "profiles", "List profiles, or show one resolved."),
    "model": ("zitops.commands.model", "model", "Manage model weights (make-tiny, check)."),
    "generate": ("zitops.commands.generate", "generate", "Generate images once, without an agent."),
    "agent": ("zitops.commands.agent", "agent", "Run the resident agent (HTTP API + workers)."),
    "status": ("zitops.commands.client", "status", "Show a running agent's status."),
    "health": ("zitops.commands.client", "health", "Exit 0 only when the agent is ready (--live: serving)."),
    "failures": ("zitops.commands.failures", "failures", "List recorded job failures."),
    "logs": ("zitops.commands.logs", "logs", "Show the deployment's agent and worker logs (--follow, --level, --since)."),
    "reload": ("zitops.commands.reload", "reload", "Make the deployment's agent reload its tokens file and log tiers."),
    "drill": ("zitops.commands.drill", "drill", "Run a fault drill against a disposable agent."),
    "bench": ("zitops.commands.bench", "bench", "Benchmark diffusers vs the zitops engine vs the agent."),
    "warm": ("zitops.commands.warm", "warm", "Precompile into a deployment's compile cache before its first start."),
    "doctor": ("zitops.commands.doctor", "doctor", "Check that this host can run a profile (preflight)."),
    "container-run": ("zitops.commands.container", "container_run",
                      "The image's default command: the mounted config, else the tiny model."),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when it runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, without importing any command module."""
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import and return one command's module only now."""
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        cmd: click.Command = getattr(module, spec[1])
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the table, so `zitops --help` imports none of them."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, spec[2]) for name, spec in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zitops")
def cli() -> None:
    """zitops: run Z-Image-Turbo as a service."""


def main(argv: list[str] | None = None) -> Any:
    """Entry point: one red line and a non-zero exit for every ZitopsError."""
    try:
        return cli.main(args=argv, prog_name="zitops", standalone_mode=False)
    except ZitopsError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
