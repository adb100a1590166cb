"""The resident agent: HTTP API, dispatcher, worker pool, watchdog. Never imports torch.

Rooms, from the edge inward (imports point this way only; tests/unit/test_architecture.py):

* ``http/``      the edge: FastAPI app, the API dialects, auth, middleware, console, uvicorn settings;
* ``dispatch/``  the job flow: the dispatcher, outcomes, results and images, retention, fleet claims, /status;
* ``workers/``   the worker pool: processes, slots, spares, the watchdog policy, VRAM;
* ``storage/``   the job store: the interface, SQLite, PostgreSQL (with ``sql/``), the fleet's view;
* ``ops/``       plumbing every room may use: the agent log, metrics, schedule, sd_notify, failure log, loop health.

Beside them: ``contract`` and ``progress`` (the job vocabulary and the Service the edge talks to,
importing no room) and ``server`` (the composition root, the one module that imports every room).
Package data stays here: ``sql/`` (read by ``storage.pg_schema``) and ``static/`` (``http.console``).
"""
