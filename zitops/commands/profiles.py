"""``zitops profiles``: list the built-in profiles, or show one resolved."""

from __future__ import annotations

import click

from zitops.commands.options import set_option
from zitops.profile import list_builtin, load_profile, profile_to_dict
from zitops.render import dump_yaml


@click.group(invoke_without_command=True)
@click.pass_context
def profiles(ctx: click.Context) -> None:
    """List the built-in profiles with a one-line description each."""
    if ctx.invoked_subcommand is not None:
        return
    builtins = list_builtin()
    width = max(len(p.name) for p in builtins)
    for p in builtins:
        click.echo(f"{p.name:<{width}}  {p.summary}")


@profiles.command("show")
@click.argument("name")
@set_option
def show(name: str, overrides: tuple[str, ...]) -> None:
    """Print profile NAME (built-in or a YAML file) fully resolved, as YAML."""
    click.echo(dump_yaml(profile_to_dict(load_profile(name, overrides))), nl=False)
