"""Fault drills: break a disposable local agent on purpose and time its recovery.

A drill renders a throwaway deployment (``zitops.deployment.deploy.plan`` with the
fault-injecting engine and short watchdog thresholds, :mod:`.agent`), starts
a real ``zitops agent`` subprocess on 127.0.0.1, submits a bounded number of
jobs through the native HTTP API while watching /readyz, /status and
/metrics (:mod:`.run`), and then checks its expectations (:mod:`.judge`):
the fault was detected, the worker came back, and every accepted job
succeeded (jobs lost = 0). What each kind injects is :mod:`.plan`; the
outcome and its text, :mod:`.report`.
"""

from zitops.drill.agent import AgentProcess, ReadyzWatcher, build_deployment, free_port
from zitops.drill.plan import KINDS, MAX_JOBS, DrillPlan, plan_drill
from zitops.drill.report import Check, DrillReport, format_report
from zitops.drill.run import exit_on_signal, run_drill

__all__ = ["KINDS", "MAX_JOBS", "AgentProcess", "Check", "DrillPlan", "DrillReport", "ReadyzWatcher",
           "build_deployment", "exit_on_signal", "format_report", "free_port", "plan_drill", "run_drill"]
