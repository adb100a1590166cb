"""Soak: does memory stay flat over a long run of mixed traffic on the real engine, and is a leak caught?

A real ``zitops agent`` (a loopback deployment in ``--workdir``, the real
engine: ``--model tiny`` on a CPU for a smoke, ``full-random`` for real-size
random weights on a GPU) serves, one request at a time, a random mix:
txt2img at random sizes from the A1111 size list with every sampler, native
and A1111 routes, img2img and inpaint, OpenAI streaming with partial images
(previews), cancels (queued and running), a switch between two random-weight
LoRA files every ``--lora-every`` jobs, and a ``kill -9`` of the worker
every ``--kill-every`` jobs (its job must still succeed).

After every job it records the agent's and the worker's RSS, open file
descriptors and threads, the worker's allocator (allocated, reserved), NVML's
used memory, and the job store's size on disk. The verdict
(zitops.bench.soak_verdict): after warm-up, growth under 100 MB per memory
series, no job lost, p99 latency drift within 10 % from the first quarter to
the last.

**Resumable.** Each call runs for ``--minutes`` (8 on the device, whose
calls are limited) against the same deployment, job store and sample file in
``--workdir``; the verdict and the plot always cover every call so far.
``--reset`` starts over.

**Negative control.** ``--leak-mib N`` runs the same deployment with the
fault engine around the real pipeline (``faults.leak_memory: real``): each
job keeps N MiB more on the device. It passes when the watchdog recycles the
worker for the leak, which the script reads from /status and reports.

    python benchmarks/soak.py --model tiny --minutes 2 --size-scale 0.125 --kill-every 25 --lora-every 10
    python benchmarks/soak.py --model full-random --minutes 7.5 --workdir /tmp/zsoak      (GPU)
    python benchmarks/soak.py --model full-random --leak-mib 512 --workdir /tmp/zsoak-leak  (GPU control)
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from zitops.bench.soak_samples import gpu_processes, proc_stats
from zitops.bench.soak_verdict import plot, verdict
from zitops.config import config_from_mapping, config_to_dict
from zitops.drill import AgentProcess, free_port
from zitops.engine.request import IMG2IMG_SAMPLERS
from zitops.engine.samplers import SAMPLER_INFO
from zitops.gpu import NvmlMonitor
from zitops.profile import SAMPLERS

A1111_SIZES = ((512, 512), (768, 768), (1024, 1024), (512, 768), (768, 512), (832, 1216), (1216, 832),
               (896, 1152), (1152, 896), (768, 1344), (1344, 768), (640, 1536), (1536, 640))
"""A1111's common sizes: SD 1.5's and SDXL's aspect-ratio buckets (width, height)."""

KINDS = (("txt2img", 30), ("a1111", 15), ("img2img", 12), ("inpaint", 10), ("stream", 13), ("cancel", 10),
         ("openai", 10))
"""Job kinds and their weights; a kill -9 job comes every --kill-every jobs on top."""

FINAL = ("succeeded", "failed", "cancelled")


def make_loras(lora_dir: Path, model: str) -> list[str]:
    """Two random-weight LoRA files (kohya format) shaped for ``model``'s transformer; their names."""
    import torch
    from diffusers import ZImageTransformer2DModel

    from zitops.engine.full import FULL_TRANSFORMER
    from zitops.engine.tiny import TINY_TRANSFORMER

    sys.path.insert(0, str(Path(__file__).parent))
    from features import make_lora  # benchmarks/features.py

    lora_dir.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        transformer = ZImageTransformer2DModel(**(TINY_TRANSFORMER if model == "tiny" else FULL_TRANSFORMER))
    for seed, name in ((1, "soak_a"), (2, "soak_b")):
        if not (lora_dir / f"{name}.safetensors").is_file():
            make_lora(transformer, lora_dir / f"{name}.safetensors", seed, rank=8)
    return ["soak_a", "soak_b"]


def deploy(workdir: Path, model: str, profile: str, sets: list[str], leak_mib: float,
           cache_dir: str | None = None) -> tuple[Path, int]:
    """The soak's deployment in ``workdir`` (kept across calls): (config.yaml, port)."""
    from zitops.deployment.deploy import DeployRequest, plan

    path = workdir / "deploy" / "config.yaml"
    if path.is_file():
        return path, int(config_from_mapping(__import__("yaml").safe_load(path.read_text()), "soak").port)
    port = free_port()
    out = workdir / "deploy"
    p = plan(DeployRequest(profile=profile, targets=(), out=out, port=port, host="127.0.0.1", gpus="auto",
                           model=model, overrides=tuple(sets), zitops_bin=sys.executable))
    data = config_to_dict(p.config)
    data.update(model=model, log_format="json", lora_dir=str(workdir / "loras"))
    # No limits of its own: native img2img and inpaint ride in /v1/jobs' body, which takes
    # limits.max_image_body_bytes (32 MiB) since the first H100 soak's 413s; the soak runs the defaults users get.
    if cache_dir:  # a compile cache another run warmed (the device call's designer bench)
        data["paths"] = {**data["paths"], "cache_dir": cache_dir}
    if leak_mib:
        data["engine"] = {"kind": "faulty", "faults": {"inner": "diffusers", "leak_mib_per_job": leak_mib,
                                                       "leak_memory": "real", "every_incarnation": True}}
    config = config_from_mapping(data, "soak config")
    for d in p.runtime_dirs:
        d.mkdir(parents=True, exist_ok=True)
    import yaml

    path.write_text("# zitops soak: a disposable deployment (benchmarks/soak.py)\n"
                    + yaml.safe_dump(config_to_dict(config), sort_keys=False), "utf-8")
    return path, port


def noise_png(width: int, height: int, rng: random.Random, mask: bool = False) -> str:
    """A base64 PNG: random pixels, or (mask) a white rectangle on black."""
    from PIL import Image, ImageDraw

    if mask:
        img = Image.new("L", (width, height), 0)
        ImageDraw.Draw(img).rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=255)
    else:
        img = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


class Soak:
    """One call of a (resumable) soak: the agent, the client, the samples so far."""

    def __init__(self, args: argparse.Namespace, state: dict[str, Any], agent: AgentProcess, loras: list[str]) -> None:
        self.args, self.state, self.agent, self.loras = args, state, agent, loras
        self.rng = random.Random(args.seed + len(state["samples"]))
        self.client = httpx.Client(base_url=agent.url, timeout=args.job_timeout)
        self.store_dir = Path(args.workdir) / "deploy"
        self.nvml = NvmlMonitor()  # unavailable (no series) without a GPU

    def size(self) -> tuple[int, int]:
        w, h = self.rng.choice(A1111_SIZES)
        scale = self.args.size_scale
        return max(64, round(w * scale / 16) * 16), max(64, round(h * scale / 16) * 16)

    def lora(self, job: int) -> list[dict[str, Any]]:
        return [{"name": self.loras[(job // self.args.lora_every) % len(self.loras)], "weight": 0.8}] \
            if self.loras else []

    def wait(self, job_id: str, deadline: float) -> dict[str, Any]:
        while time.monotonic() < deadline:
            r = self.client.get(f"/v1/jobs/{job_id}")
            if r.status_code == 404:
                return {"status": "missing"}
            rec = r.json()
            if rec["status"] in FINAL:
                return dict(rec)
            time.sleep(0.01)
        return {"status": "timeout"}

    def worker_pid(self) -> int | None:
        workers = self.client.get("/status").json().get("workers") or []
        return next((w["pid"] for w in workers if w.get("pid") and w.get("state") in ("ready", "busy")), None)

    def run_one(self, job: int) -> dict[str, Any]:
        """One job of a random kind (or the kill -9 job); its sample without the series."""
        kill = self.args.kill_every and job % self.args.kill_every == 0
        kind = "kill" if kill else self.rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        width, height = self.size()
        steps = self.rng.choice(self.args.steps)
        sampler = self.rng.choice(IMG2IMG_SAMPLERS if kind in ("img2img", "inpaint") else SAMPLERS)
        body: dict[str, Any] = {"prompt": f"soak {job}", "seed": job, "width": width, "height": height,
                                "steps": steps, "sampler": sampler}
        sample: dict[str, Any] = {"job": job, "kind": kind, "width": width, "height": height, "steps": steps,
                                  "sampler": sampler, "mpx_steps": width * height / 1e6 * steps}
        t0 = time.monotonic()
        deadline = t0 + self.args.job_timeout
        status = "failed"
        if kind in ("txt2img", "img2img", "inpaint", "cancel", "kill"):
            if kind != "cancel":
                body["loras"] = self.lora(job)
            if kind in ("img2img", "inpaint"):
                body["init_image"] = noise_png(width, height, self.rng)
                body["strength"] = 0.6
                if kind == "inpaint":
                    body["mask"] = noise_png(width, height, self.rng, mask=True)
            r = self.client.post("/v1/jobs", json=body)
            if r.status_code != 202:
                return {**sample, "status": "refused", "error": r.text[:300], "latency_s": None}
            job_id = r.json()["id"]
            if kind == "cancel":
                if self.rng.random() < 0.5:  # let it start first: a running job stops at its next step
                    while self.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued" \
                            and time.monotonic() < deadline:
                        time.sleep(0.005)
                self.client.delete(f"/v1/jobs/{job_id}")
            if kind == "kill":
                while self.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued" \
                        and time.monotonic() < deadline:
                    time.sleep(0.005)
                pid = self.worker_pid()
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    sample["killed"] = pid
            rec = self.wait(job_id, deadline)
            status = rec["status"]
            if kind == "cancel" and status in ("cancelled", "succeeded"):
                status = "cancelled" if status == "cancelled" else "succeeded"
            sample["error"] = rec.get("error")
        elif kind == "a1111":
            display = self.rng.choice(SAMPLER_INFO)["name"]
            sample["sampler"] = display
            tag = f" <lora:{self.lora(job)[0]['name']}:0.8>" if self.loras else ""
            r = self.client.post("/sdapi/v1/txt2img", json={"prompt": f"soak {job}{tag}", "seed": job, "width": width,
                                                            "height": height, "steps": steps, "sampler_name": display})
            status = "succeeded" if r.status_code == 200 and r.json().get("images") else "failed"
            sample["error"] = None if status == "succeeded" else r.text[:300]
        else:  # OpenAI: plain, or streamed with previews as partial images
            req = {"prompt": f"soak {job}", "size": f"{width}x{height}", "seed": job, "steps": steps,
                   "response_format": "b64_json"}
            if kind == "stream":
                events: list[str] = []
                with self.client.stream("POST", "/v1/images/generations",
                                        json={**req, "stream": True, "partial_images": 2}) as r:
                    events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
                sample["events"] = len(events)
                status = "succeeded" if any(e.endswith("completed") for e in events) else "failed"
                sample["error"] = None if status == "succeeded" else f"events: {events[-3:]}"
            else:
                r = self.client.post("/v1/images/generations", json=req)
                status = "succeeded" if r.status_code == 200 else "failed"
                sample["error"] = None if status == "succeeded" else r.text[:300]
        sample["latency_s"] = round(time.monotonic() - t0, 4)
        sample["status"] = status
        return sample

    def series(self) -> dict[str, Any]:
        """The memory and resource series now (after a job)."""
        st = self.client.get("/status").json()
        w: dict[str, Any] = next((w for w in st.get("workers") or [] if w.get("pid")), {})
        vram = w.get("vram") or {}
        agent, worker = proc_stats(self.agent.pid), proc_stats(w.get("pid"))
        gpu = gpu_processes(self.nvml)
        store = sum(p.stat().st_size for p in self.store_dir.rglob("jobs.sqlite3*") if p.is_file())
        return {"agent_rss_mib": agent["rss_mib"], "worker_rss_mib": worker["rss_mib"],
                "agent_fds": agent["fds"], "worker_fds": worker["fds"], "agent_threads": agent["threads"],
                "worker_threads": worker["threads"], "allocated_mib": vram.get("allocated_mib"),
                "reserved_mib": vram.get("reserved_mib"), "nvml_used_mib": vram.get("device_used_mib"),
                "worker_nvml_mib": gpu.get(int(w["pid"])) if w.get("pid") else None, "gpu_processes": len(gpu),
                "store_mib": round(store / 2**20, 3), "worker_pid": w.get("pid"),
                "recoveries": [e for e in st.get("recoveries", []) if e.get("kind") in ("recycle", "crash", "kill")]}


def load_state(workdir: Path, reset: bool) -> dict[str, Any]:
    """The run so far (samples, calls), or a new one."""
    path = workdir / "soak-state.json"
    if reset or not path.is_file():
        return {"samples": [], "calls": [], "elapsed_s": 0.0, "leak": None}
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def save_state(workdir: Path, state: dict[str, Any]) -> None:
    """Write the state (temp file, then rename: a call cut short never leaves half a file)."""
    tmp = workdir / "soak-state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, workdir / "soak-state.json")


def run_call(args: argparse.Namespace, state: dict[str, Any]) -> None:
    """Start the agent on the kept deployment, run jobs until the call's time is up, stop it."""
    workdir = Path(args.workdir)
    sets = [f"queue.job_timeout_s={int(args.job_timeout)}", "queue.drain_timeout_s=20", *args.set]
    config_path, port = deploy(workdir, args.model, args.profile, sets, args.leak_mib, args.cache_dir)
    loras = [] if args.leak_mib or not args.lora_every else make_loras(workdir / "loras", args.model)
    agent = AgentProcess(config_path, port, workdir / "agent.out")
    call: dict[str, Any] = {"started": time.time(), "jobs": 0, "ready_s": None}
    state["calls"].append(call)
    stop_at = time.monotonic() + args.minutes * 60.0
    soak: Soak | None = None
    try:
        call["ready_s"] = round(agent.wait_ready(args.ready_timeout), 2)
        soak = Soak(args, state, agent, loras)
        t_base = state["elapsed_s"]
        t0 = time.monotonic()
        while time.monotonic() < stop_at:
            job = len(state["samples"]) + 1
            sample = soak.run_one(job)
            series = soak.series()
            recoveries = series.pop("recoveries")
            sample.update(series, t=round(t_base + time.monotonic() - t0, 2), call=len(state["calls"]))
            state["samples"].append(sample)
            call["jobs"] = int(call["jobs"] or 0) + 1
            leak = next((e for e in recoveries if e.get("policy") == "leak"), None)
            if args.leak_mib and leak:
                state["leak"] = {**leak, "after_jobs": job}
                break
            if job % 25 == 0:
                print(f"[soak] job {job}  t {sample['t']:.0f} s  agent RSS {sample['agent_rss_mib']:.0f} MiB  "
                      f"worker RSS {sample['worker_rss_mib'] or 0:.0f} MiB  allocated {sample['allocated_mib']}  "
                      f"last {sample['kind']} {sample['status']} {sample['latency_s'] or 0:.2f} s", flush=True)
                save_state(workdir, state)
        state["elapsed_s"] = t_base + time.monotonic() - t0
        call["torch_in_agent"] = "libtorch" in Path(f"/proc/{agent.pid}/maps").read_text()
    finally:
        call["stopped"] = time.time()
        if soak is not None:
            soak.nvml.close()
        agent.stop()
        save_state(workdir, state)


def report(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    """Verdict, JSON and plot over every call so far; printed."""
    samples = state["samples"]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.leak_mib:
        caught = state.get("leak")
        result: dict[str, Any] = {"control": "faults.leak_memory: real", "leak_mib_per_job": args.leak_mib,
                                  "jobs": len(samples), "caught": caught, "pass": caught is not None}
        print(f"control: {len(samples)} jobs, leaking {args.leak_mib:g} MiB per job: "
              + (f"PASS: the watchdog recycled the worker for the leak after {caught['after_jobs']} jobs "
                 f"({caught.get('reason')})" if caught else "FAIL: no leak recycle"))
    else:
        result = verdict(samples, args.warmup_jobs)
        for key, g in result["series"].items():
            print(f"  {key:<15} {g['first_quarter_median']:>10} -> {g['last_quarter_median']:>10}  "
                  f"growth {g['growth']:>8} (limit {g['limit']})  {'ok' if g['ok'] else 'GROWS'}")
        for key, g in result["info"].items():
            print(f"  {key:<15} {g['first_quarter_median']:>10} -> {g['last_quarter_median']:>10}  "
                  f"growth {g['growth']:>8} (not judged: device-wide, a hot spare counts)")
        lat = result["latency"] or {}
        print(f"  p99 s/(Mpx*step) {lat.get('p99_s_per_mpx_step_first')} -> {lat.get('p99_s_per_mpx_step_last')}"
              f"  drift {lat.get('drift')} (limit {lat.get('limit')}); raw p99 {lat.get('p99_s_first')} s -> "
              f"{lat.get('p99_s_last')} s")
        kinds: dict[str, int] = {}
        for s in samples:
            kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
        print(f"soak: {len(samples)} jobs over {len(state['calls'])} call(s), {state['elapsed_s'] / 60:.1f} min; "
              f"kinds {kinds}; lost {len(result['lost'])}, failed {len(result['failed'])}, kills "
              f"{sum(1 for s in samples if s.get('killed'))}: {'PASS' if result['pass'] else 'FAIL'}")
    result.update(label=args.label, model=args.model, profile=args.profile, calls=state["calls"],
                  elapsed_s=round(state["elapsed_s"], 1), args={k: str(v) for k, v in vars(args).items()})
    (out / f"{args.label}.json").write_text(json.dumps({**result, "samples": samples}, indent=1) + "\n")
    if plot(samples, out / f"{args.label}.png", f"{args.label}: {args.model}, {len(samples)} jobs"):
        print(f"plot: {out / (args.label + '.png')}")
    else:
        print("plot: matplotlib is not installed; JSON only")
    return result


def main(argv: list[str] | None = None) -> int:
    """One call of the soak (or its negative control); exit 0 when the verdict over every call so far passes."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/zsoak", help="deployment, job store and samples, kept across calls")
    ap.add_argument("--reset", action="store_true", help="start a new run in --workdir")
    ap.add_argument("--cache-dir", default=None, help="compile cache (default: the deployment's own)")
    ap.add_argument("--minutes", type=float, default=8.0, help="this call's length")
    ap.add_argument("--model", default="tiny", help="tiny (CPU smoke) or full-random (GPU, real size)")
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--set", action="append", default=[], help="profile override KEY=VALUE (repeatable)")
    ap.add_argument("--size-scale", type=float, default=1.0, help="scale the A1111 sizes (0.125 for the CPU)")
    ap.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[8], help="e.g. 4,8")
    ap.add_argument("--kill-every", type=int, default=200)
    ap.add_argument("--lora-every", type=int, default=50, help="switch the LoRA every N jobs (0: no LoRA)")
    ap.add_argument("--warmup-jobs", type=int, default=20)
    ap.add_argument("--job-timeout", type=float, default=300.0)
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    ap.add_argument("--leak-mib", type=float, default=0.0, help="negative control: leak this much per job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="soak")
    ap.add_argument("--out-dir", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    if args.reset and workdir.exists():
        import shutil

        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state = load_state(workdir, args.reset)
    # The device's timeout sends SIGTERM: stop the agent and keep the samples (finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_call(args, state)
    finally:
        result = report(args, state)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
