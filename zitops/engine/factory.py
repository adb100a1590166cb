"""Build the engine a worker runs, from the agent config. torch-free at import."""

from __future__ import annotations

from zitops.config import AgentConfig
from zitops.engine.base import Engine
from zitops.engine.loader import Preloaded


def create_engine(config: AgentConfig, *, incarnation: int = 0, preloaded: Preloaded | None = None) -> Engine:
    """The engine named by ``config.engine.kind``; call ``setup(device)`` on it next.

    ``incarnation`` counts worker restarts (0 first); the fault engine fires
    its faults only in incarnation 0 unless told otherwise. ``preloaded``
    (a :class:`zitops.engine.loader.Preloaded` from a standby spare) goes to
    the diffusers engine, inner or not, whose setup then skips the load.
    """
    sel = config.engine
    if sel.kind == "faulty":
        from zitops.engine.faulty import FaultyEngine

        inner: Engine | None = None
        if sel.faults.inner == "diffusers":
            inner = _diffusers(config, preloaded)
        return FaultyEngine(sel.faults, explicit=True, incarnation=incarnation, inner=inner)
    return _diffusers(config, preloaded)


def _diffusers(config: AgentConfig, preloaded: Preloaded | None = None) -> Engine:
    from zitops.engine.diffusers_engine import DiffusersEngine

    return DiffusersEngine(config.profile.engine, config.model, state_dir=config.paths.state_dir,
                           cache_dir=config.paths.cache_dir, preloaded=preloaded, lora_dir=config.lora_dir,
                           controlnet_dir=config.controlnet_dir)
