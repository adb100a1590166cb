"""``zitops deploy``: plan, render everything in memory, validate, then write.

Nothing touches the disk until every file has rendered and passed its
in-memory check, so a refused deploy leaves ``--out`` as it was (not even
created). The work is split by concern: :mod:`zitops.deployment.deploy_types` (the
values), :mod:`zitops.deployment.deploy_plan` (rendering and checks),
:mod:`zitops.deployment.deploy_write` (atomic writes and the manifest) and
:mod:`zitops.deployment.deploy_start` (``--start``). This module is their public face.
"""

from __future__ import annotations

from zitops.deployment.deploy_plan import (
    cache_env,
    check_host,
    parse_gpus,
    plan,
    resolve_zitops_bin,
    service_hosts,
)
from zitops.deployment.deploy_start import agent_available, refuse_taken_port, start
from zitops.deployment.deploy_types import (
    ALL_TARGETS,
    FHS,
    FHS_PATHS,
    K8S,
    MANIFEST,
    SERVICE_USER,
    TARGETS,
    UNIT_NAME,
    Change,
    DeployRequest,
    Plan,
    RenderedFile,
    Result,
)
from zitops.deployment.deploy_write import apply, next_steps

__all__ = [
    "ALL_TARGETS", "FHS", "FHS_PATHS", "K8S", "MANIFEST", "SERVICE_USER", "TARGETS", "UNIT_NAME", "Change", "DeployRequest",
    "Plan", "RenderedFile", "Result", "agent_available", "apply", "cache_env", "check_host", "next_steps",
    "parse_gpus", "plan", "refuse_taken_port", "resolve_zitops_bin", "service_hosts", "start",
]
