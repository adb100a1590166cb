"""``zitops deploy``: the plan (validated, model checked), rendered files for each target, atomic
writes with a manifest, ``--start`` and its wait, the fleet's store settings and manifests.

May import: ``zitops.preflight`` (the model and port checks), render, tiers, config, profile, errors.
Never the agent, the engine's torch modules or the CLI.
"""
