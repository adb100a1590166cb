"""The worker pool: spawned worker processes and their slots, the standby and hot spares, overlap,
the watchdog policy, VRAM sampling and its history.

May import: ``zitops.agent.ops`` (and the worker protocol, config, profile, gpu). Never ``http``,
``dispatch`` or ``storage``: the pool knows nothing of jobs' order or the store.
``watchdog`` is pure policy (observations in, actions out) and imports nothing from ``zitops.agent``;
``overlap`` and ``standby`` are strategies the pool holds and never import ``pool``.
"""
