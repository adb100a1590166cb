"""Logs and failure records: structured logging with per-logger tiers and its processors, and the
failure store (JSONL and SQLite) with its retention,
what a record keeps of a request (``failure_params``) and the query side (``failure_query``).

May import: config, profile, errors. Never the agent, the engine, ``deployment`` or ``preflight``:
every process (CLI, agent, worker) configures its logging from here.
Logger names are kept as they were ("zitops.logs", "zitops.failures"), not the module paths.
"""
