"""``zitops doctor``: the host's preflight checks (GPU, driver, model files, ports) and their report.

May import: config, profile, tiers, gpu, errors, ``zitops.engine.loader``. Never ``zitops.deployment``
(deploy uses the checks, not the other way), the agent or the CLI.
"""
