"""The job flow: the dispatcher (jobs in, workers out), job outcomes, results and image files,
the disk budget, fleet claims over a shared store, and the readiness and /status reports.

May import: ``zitops.agent.workers``, ``zitops.agent.storage``, ``zitops.agent.ops``, ``zitops.agent.contract``,
``zitops.agent.progress``. Never ``zitops.agent.http`` or ``zitops.agent.server``.
New job-side features land here (result sinks such as S3 or webhooks beside ``results``).
"""
