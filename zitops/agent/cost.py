"""The cost check at the edge: a request's estimated run time against the profile's budget.

The policy (:mod:`zitops.budget`) is pure; this module gathers its
observations: the profile's calibrated rate, whether this agent's workers
all run on a CPU, and the pace its recent jobs measured
(:class:`zitops.agent.pace.Pace`, kept by the progress board). A request
over budget is a 422 before it is queued; an admitted one's 202 says its
estimate and where the rate came from.
"""

from __future__ import annotations

import math

from zitops.agent.contract import Service
from zitops.budget import estimate_seconds, over_budget, pick_rate, work_per_step
from zitops.config import AgentConfig
from zitops.engine.request import GenerationRequest
from zitops.errors import InvalidRequest


def rate(config: AgentConfig, service: Service, req: GenerationRequest) -> tuple[float, str]:
    """(seconds per megapixel-step, its basis) for ``req`` on this agent now."""
    board = service.progress
    work = work_per_step(req.width, req.height, req.batch, req.sampler)
    return pick_rate(config.profile.generation.seconds_per_megapixel_step, board.cpu_only, board.pace.cpu(work))


def check_cost(config: AgentConfig, service: Service, req: GenerationRequest) -> None:
    """Raise InvalidRequest ("cost: ...") when ``req`` is estimated past the profile's budget."""
    per_step, basis = rate(config, service, req)
    why = over_budget(req.width, req.height, req.steps, req.batch, req.sampler,
                      seconds_per_megapixel_step=per_step, max_job_seconds=config.profile.generation.max_job_seconds,
                      job_timeout_s=config.profile.queue.job_timeout_s, basis=basis)
    if why:
        raise InvalidRequest(f"cost: {why}")


def estimate(config: AgentConfig, service: Service, req: GenerationRequest) -> tuple[int, str]:
    """(estimated run seconds, rounded up; the rate's basis) of an admitted request, for its 202."""
    per_step, basis = rate(config, service, req)
    return math.ceil(estimate_seconds(req.width, req.height, req.steps, req.batch, req.sampler, per_step)), basis
