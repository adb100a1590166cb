"""Finished jobs' images: encoded and written off the event loop, then the job succeeds.

A worker's Result carries raw pixels. :class:`ResultWriter` encodes and
writes them on a thread pool (:mod:`zitops.agent.dispatch.images`) while the worker,
already free, runs its next job; the job turns ``succeeded`` in the store
only once every file is in place. Until then it stays ``running``, so an
agent that dies mid-encode requeues it at the next start. The encoded bytes
of a job someone waits on are kept (bounded) for its synchronous route.
"""

from __future__ import annotations

import asyncio
import collections
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.dispatch.held import Held, HeldJournal
from zitops.agent.dispatch.images import (
    Encoder,
    attach_pixels,
    encode_and_write,
    encode_images,
    image_names,
    release_pixels,
    warm_encoder,
    write_encoded,
)
from zitops.agent.dispatch.object_store import ObjectStore, ObjectStoreDown
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.ops.failure_log import FailureLog
from zitops.agent.ops.job_traces import JobTraces
from zitops.agent.ops.runtime_metrics import RuntimeMetrics
from zitops.agent.storage.store import Store
from zitops.engine.output import encode_image
from zitops.errors import NotFound, StoreUnavailable
from zitops.worker.protocol import Result

ENCODE_THREADS = 2
"""Jobs encoded at once; each PNG already deflates its strips on threads of its own."""

FRESH_JOBS = 8
"""Encoded images kept in memory for synchronous waiters, newest jobs; older ones are read from disk."""

FRESH_BYTES = 256 * 1024 * 1024
"""The most bytes those kept images may take together."""

Uploader = Callable[[str, tuple[str, ...], tuple[bytes, ...]], None]
"""Puts a job's encoded images (names, bytes) where every agent can read them; runs on the encode pool."""

STAGES = ("queue", "start", "engine", "pack", "transfer", "encode")
"""A job's timed stages (``info["timings"]``, ``zitops_job_stage_seconds``); see docs/api.md."""


class ResultWriter:
    """Writes each Result's images, then marks its job succeeded (or failed, saying why)."""

    def __init__(self, output_dir: Path, store: Store, metrics: RuntimeMetrics, log: AgentLog,
                 failures: FailureLog, finished: Callable[[JobRecord], None],
                 wanted: Callable[[str], bool],
                 store_failed: Callable[[str, str, StoreUnavailable], None] | None = None,
                 upload: Uploader | None = None, objects: ObjectStore | None = None,
                 traces: JobTraces | None = None, attempt_of: Callable[[str], int] | None = None) -> None:
        self.output_dir = output_dir
        self._attempt_of = attempt_of  # fleet mode: the attempt this agent holds (-1 once its lease moved on)
        self.store = store
        self.metrics = metrics
        self.log = log
        self.failures = failures
        self._finished = finished  # the job is final: wake its waiters
        self._wanted = wanted  # someone waits on the job: keep its bytes
        self._store_failed = store_failed  # the store refused the outcome: fail the job in memory
        self._upload = upload  # fleet mode: put the images in the shared store, on the encode thread
        self.traces = traces if traces is not None else JobTraces()
        self._objects = objects  # images.url: the job succeeds once its images are objects there
        self.held: dict[str, Held] = {}
        """Finished jobs whose images wait on this host for the object store to come back."""
        self._inline: dict[str, tuple[bytes, ...] | None] = {}
        """Waited-for jobs whose response carries their images and keeps no files: their bytes once encoded."""
        self.journal = HeldJournal(output_dir / ".held")  # the same, on disk: a restart does not run them again
        self._round: asyncio.Task[None] | None = None
        self.encode: Encoder = encode_image
        """Test seam: tests swap in a slow or failing encoder; production never changes it."""
        self._threads = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="zitops-encode")
        self.pending: dict[str, asyncio.Task[None]] = {}
        self.encoder_warm: dict[str, Any] | None = None
        """Each format's first encode at start (ms; images.warm_encoder), for /status; None until done."""
        self._fresh: collections.OrderedDict[str, tuple[bytes, ...]] = collections.OrderedDict()
        self._marks: collections.OrderedDict[str, dict[str, float]] = collections.OrderedDict()

    async def warm(self) -> None:
        """The encoder's first call, on the encode threads while the workers start (before any job)."""
        warm: dict[str, Any]
        try:
            warm = await asyncio.get_running_loop().run_in_executor(self._threads, warm_encoder, self.encode)
        except Exception as exc:  # a warm-up that fails must not stop the agent: the first job pays instead
            warm = {"error": f"{type(exc).__name__}: {exc}"}
        self.encoder_warm = warm
        self.log("info", "encoder warmed", **{k if k == "error" else f"{k}_ms": v for k, v in warm.items()})

    def accept(self, worker_id: str, result: Result, marks: dict[str, float]) -> None:
        """Start writing a finished job's images; ``marks`` are its monotonic accepted/handed times."""
        result = replace(result, images=attach_pixels(result.images))
        received = time.monotonic()
        self.metrics.job_seconds.observe(result.seconds)
        task = asyncio.get_running_loop().create_task(self._write(worker_id, result, received, dict(marks)),
                                                      name=f"zitops-encode-{result.job_id}")
        self.pending[result.job_id] = task
        self.metrics.encodes_pending.set(len(self.pending))
        task.add_done_callback(lambda _t: self._done(result.job_id))

    def _done(self, job_id: str) -> None:
        self.pending.pop(job_id, None)
        self.metrics.encodes_pending.set(len(self.pending))

    def _release(self, result: Result) -> None:
        """The pixel files' unmapping, on the pool: off the path to the synchronous waiter."""
        try:
            self._threads.submit(release_pixels, result.images)
        except RuntimeError:  # the pool is shut down (the agent stops): here, then
            release_pixels(result.images)

    async def _write(self, worker_id: str, result: Result, received: float, marks: dict[str, float]) -> None:
        """Write the images, then record the outcome; a store that refuses it (full disk) never strands the job."""
        try:
            await self._write_and_record(worker_id, result, received, marks)
        except StoreUnavailable as exc:
            if self._store_failed is None:
                raise
            self._store_failed(result.job_id, f"finished on {worker_id}, but its outcome was not stored", exc)

    async def _write_and_record(self, worker_id: str, result: Result, received: float,
                                marks: dict[str, float]) -> None:
        """Encode and write on the thread pool; then the job succeeds, or fails saying why."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        inline = result.job_id in self._inline  # its route sends the bytes and keeps no files: none written
        try:
            with self.traces.span(result.job_id, "zitops.encode", **{"zitops.images": len(result.images),
                                                                     "zitops.format": result.output_format}):
                if inline:
                    names = image_names(result.job_id, len(result.images), result.output_format)
                    blobs = await loop.run_in_executor(self._threads, encode_images, result.images,
                                                       result.output_format, self.encode)
                    inline = result.job_id in self._inline
                    if not inline:  # its route left meanwhile: the files are written after all
                        await loop.run_in_executor(self._threads, write_encoded, self.output_dir, names, blobs)
                else:
                    names, blobs = await loop.run_in_executor(self._threads, encode_and_write, self.output_dir,
                                                              result.job_id, result.images, result.output_format,
                                                              self.encode)
        except Exception as exc:  # the job fails; the worker, already on its next job, is fine
            self._release(result)
            error = f"writing images to {self.output_dir} failed: {type(exc).__name__}: {exc}"
            try:
                record = self.store.fail(result.job_id, error)
            except StoreUnavailable as store_exc:  # the same full disk, most likely: keep the real cause
                if self._store_failed is None:
                    raise
                self._store_failed(result.job_id, error, store_exc)
                return
            self.metrics.jobs.labels("failed").inc()
            self.log("warning", "job failed", job_id=result.job_id, worker_id=worker_id, error=error)
            self.failures.record(record, type(exc).__name__, error, traceback.format_exc(), worker_id=worker_id,
                                 vram={}, action="fail")
            self._finished(record)
            return
        encoded = time.monotonic()
        self._release(result)
        if self._upload is not None:
            # A shared store's image upload is a network round trip per job: on
            # the pool, so the event loop never waits on it; before succeed, so
            # the images exist when the fleet hears "done". The uploader never
            # raises: a refused upload is retried by succeed (fleet_store.py).
            with self.traces.span(result.job_id, "zitops.object_store.write"):
                await loop.run_in_executor(self._threads, self._upload, result.job_id, names, blobs)
        done = time.monotonic()
        encode_s = encoded - started
        self.metrics.encode_seconds.observe(encode_s)
        timings = self._timings(result, received, encode_s, done, marks)
        marks.update(engine_started=result.engine_started_at, engine_done=result.engine_done_at,
                     sent=result.sent_at, received=received, encoded=done)
        info = {**result.info, "seconds": round(result.seconds, 3), "encode_s": round(encode_s, 4),
                "worker": worker_id, "timings": timings}
        if self._upload is not None:
            info["upload_s"] = round(done - encoded, 4)
        if self._objects is not None:
            try:
                await loop.run_in_executor(self._threads, self._put, self._objects, result.job_id, names, blobs)
            except ObjectStoreDown as exc:  # the job stays running, its files here, until the store is back
                held = self.held[result.job_id] = Held(worker_id, names, info)
                self.log("warning", "object store down: images kept on this host until it is back",
                         job_id=result.job_id, reason=str(exc))
                try:
                    await loop.run_in_executor(self._threads, self.journal.save, result.job_id, held)
                except OSError as journal_exc:  # held in memory still; only a restart would run it again
                    self.log("error", "held job not written to disk; a restart before the object store is back "
                             "runs it again", job_id=result.job_id, error=str(journal_exc))
                return
            info["object_s"] = round(time.monotonic() - done, 4)
        if inline:  # no await since the route was last seen waiting (local store): it takes them
            self._inline[result.job_id] = blobs
        elif self._wanted(result.job_id):
            self.keep_fresh(result.job_id, blobs)
        self._succeed(result.job_id, worker_id, names, info, marks)

    def _succeed(self, job_id: str, worker_id: str, names: tuple[str, ...], info: dict[str, Any],
                 marks: dict[str, float] | None = None) -> None:
        with self.traces.span(job_id, "zitops.store.write", **{"zitops.status": "succeeded"}):
            record = self.store.succeed(job_id, names, info)
        if marks is not None and self._wanted(job_id):  # for its synchronous route's Server-Timing
            self._marks[job_id] = {**marks, "stored": time.monotonic()}
            while len(self._marks) > FRESH_JOBS:
                self._marks.popitem(last=False)
        self.metrics.jobs.labels("succeeded").inc()
        self.log("info", "job succeeded", job_id=job_id, worker_id=worker_id, seconds=info.get("seconds"),
                 encode_s=info.get("encode_s"))
        self._finished(record)

    def objects_round(self) -> None:
        """The object store's round: probe it off the loop; once it answers, upload the held jobs and finish them."""
        if self._objects is not None and (self._round is None or self._round.done()):
            self._round = asyncio.get_running_loop().create_task(self._objects_round(self._objects),
                                                                 name="zitops-objects")

    async def _objects_round(self, objects: ObjectStore) -> None:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._threads, objects.probe):
            return
        for job_id, held in list(self.held.items()):
            try:
                await loop.run_in_executor(self._threads, self._put_files, objects, job_id, held.names)
            except ObjectStoreDown:
                return  # down again: the next round tries again
            except OSError as exc:  # a held file vanished: the job cannot succeed
                del self.held[job_id]
                self._finished(self.store.fail(job_id, f"images held for the object store were lost: {exc}"))
                self.journal.drop(job_id)
                continue
            del self.held[job_id]
            self._succeed(job_id, held.worker_id, held.names, held.info)
            self.journal.drop(job_id)

    def held_names(self) -> frozenset[str]:
        """The image files of the held jobs: their only copy until the object store is back (any thread)."""
        return frozenset(name for held in list(self.held.values()) for name in held.names)

    def recover(self, agent_id: str | None = None) -> list[str]:
        """At start: the store's ``recover`` (running jobs back to the queue; the queued ids), except the jobs
        held for the object store before a restart, which stay running and are held again when they are still
        this agent's (``agent_id``: the fleet's name for it); the object store's round then uploads them."""
        entries, bad = self.journal.load()
        if bad:
            self.log("warning", "unreadable held-job entries removed; their jobs run again", entries=bad)
        queued = self.store.recover(keep=tuple(entries))
        for job_id, held in entries.items():
            try:
                record = self.store.get(job_id)
            except NotFound:
                record = None
            if record is not None and record.status is JobStatus.RUNNING and record.agent == agent_id:
                self.held[job_id] = held
                self.log("info", "held job restored: its images wait on this host for the object store",
                         job_id=job_id)
            else:  # finished meanwhile, or another agent's now: its entry and files say nothing any more
                self.journal.drop(job_id)
        return queued

    def _put_files(self, objects: ObjectStore, job_id: str, names: tuple[str, ...]) -> None:
        self._put(objects, job_id, names, tuple((self.output_dir / name).read_bytes() for name in names))

    def _put(self, objects: ObjectStore, job_id: str, names: tuple[str, ...], blobs: tuple[bytes, ...]) -> None:
        """Write the images under the attempt this agent holds; none when it holds none (a stale run: its
        succeed is refused by the store's fence, and its objects must never replace the winner's)."""
        if self._attempt_of is not None:
            attempt = self._attempt_of(job_id)
        else:  # one agent: the job's own record
            attempt = self.store.get(job_id).attempts
        if attempt >= 0:
            objects.put(job_id, attempt, names, blobs)

    def _timings(self, result: Result, received: float, encode_s: float, done: float,
                 marks: dict[str, float]) -> dict[str, float | None]:
        """The job's stages in seconds; None where this agent process did not see the stage begin."""
        accepted, handed = marks.get("accepted"), marks.get("handed")
        # engine_done_at and sent_at are the worker's time.monotonic(): CLOCK_MONOTONIC is one
        # clock for the whole host on Linux, so the differences are the hand-over's parts.
        done_at, sent_at = result.engine_done_at, result.sent_at
        pack = sent_at - done_at if sent_at and done_at else None
        transfer = received - sent_at if sent_at else None
        started = result.engine_started_at
        stages: dict[str, float | None] = {
            "queue": handed - accepted if accepted is not None and handed is not None else None,
            "start": max(0.0, started - handed) if started and handed is not None else None,
            "engine": result.engine_s or None,
            "pack": max(0.0, pack) if pack is not None else None,
            "transfer": max(0.0, transfer) if transfer is not None else None,
            "encode": encode_s,
        }
        for stage, seconds in stages.items():
            if seconds is not None:
                self.metrics.stage_seconds.labels(stage).observe(seconds)
        stages["done"] = done - accepted if accepted is not None else None
        return {k: None if v is None else round(v, 6) for k, v in stages.items()}

    def keep_fresh(self, job_id: str, blobs: tuple[bytes, ...]) -> None:
        """Keep a waited-for job's encoded images for its synchronous route (bounded; oldest go first)."""
        self._fresh[job_id] = blobs
        while len(self._fresh) > FRESH_JOBS or (
                len(self._fresh) > 1 and sum(len(b) for bs in self._fresh.values() for b in bs) > FRESH_BYTES):
            self._fresh.popitem(last=False)

    def encoded_images(self, job_id: str) -> tuple[bytes, ...] | None:
        """A succeeded job's encoded images, once, if still in memory; None: read the files."""
        inline = self._inline.pop(job_id, None)
        return inline if inline is not None else self._fresh.pop(job_id, None)

    def deliver_inline(self, job_id: str) -> None:
        """A synchronous route will send this job's images in its response and keep no files of them.

        Until :meth:`release_inline`, the job's images are encoded but not written
        (the files were deleted right after the response anyway; writing a 1024x1024
        noise PNG took 0.70 to 5.4 ms on the dev box, with the kernel's writeback:
        benchmarks/results/cpu-2026-12-08-pixel-path.json), and its bytes wait for
        :meth:`encoded_images`, outside the bounded cache. A route that leaves before the
        job is done releases it, and the files are written as for any job. Local
        store only: a fleet's images go to the shared store, an object store's there.
        """
        if self._upload is None and self._objects is None:
            self._inline.setdefault(job_id, None)

    def release_inline(self, job_id: str) -> None:
        """The route is done with the job (answered, gone or timed out): drop its mark and any bytes left."""
        self._inline.pop(job_id, None)

    def stage_marks(self, job_id: str) -> dict[str, float] | None:
        """A waited-for job's time.monotonic() marks in this process, once (zitops.agent.http.http_metrics)."""
        return self._marks.pop(job_id, None)

    async def settle(self, timeout_s: float) -> None:
        """Let pending writes finish; any still going after ``timeout_s`` leave their job running."""
        if self.pending:
            _, pending = await asyncio.wait(list(self.pending.values()), timeout=timeout_s)
            for task in pending:
                task.cancel()  # the job stays "running" in the store and is requeued at the next start
        self._threads.shutdown(wait=False)
