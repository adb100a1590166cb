"""Operations plumbing every agent room may use: the agent's structured log, the runtime's
Prometheus metrics, the periodic-rounds schedule, sd_notify, the failure log and the loop's health.

May import: ``zitops.agent.contract`` only (plus logbook, config, errors). No other agent room imports
back into it, so anything here is safe to use from the edge, the job flow, the pool or the store.
Cross-cutting operations features (tracing, new metrics) land here.
"""
