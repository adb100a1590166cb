"""img2img, inpaint, LoRA, progress, interrupt, cancel and streams against a real agent with the tiny pipeline.

One ``zitops agent`` on loopback with a LoRA directory holding two tiny LoRAs
(PEFT/diffusers and kohya formats, built here with peft). The A1111 routes are
driven with ``webuiapi`` and the OpenAI ones with ``openai``. Interrupt and
cancel are sent when the job's first step event arrives, and the test
asserts the step count the job recorded, never a time.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image

from tests.agent_process_support import AgentProcess
from tests.engine_support import tiny_model_dir
from tests.lora_support import make_lora
from tests.runtime_support import REAL_ENGINE_SETS, link_tiny_model
from zitops.profile import load_profile

pytestmark = pytest.mark.slow

SETS = ["generation.width=64", "generation.height=64", "generation.steps=3", "queue.depth=20",
        "queue.job_timeout_s=60", "queue.drain_timeout_s=10"]
LONG_STEPS = 50  # limits.max_steps: a job long enough to be stopped after its first step


class Agent(AgentProcess):
    """A real ``zitops agent`` on the tiny pipeline with a LoRA directory of two tiny LoRAs."""

    def __init__(self, tmp: Path) -> None:
        self.lora_dir = tmp / "loras"
        make_lora(tiny_model_dir(), self.lora_dir, "peft-style", seed=1)
        make_lora(tiny_model_dir(), self.lora_dir, "kohya_style", seed=2, kohya=True)
        link_tiny_model(tmp / "state_dir")
        super().__init__(tmp, {
            "profile": load_profile("designer", SETS + REAL_ENGINE_SETS).model_dump(mode="json"),
            "lora_dir": str(self.lora_dir), "log_format": "json",
            "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
            "engine": {"kind": "diffusers"},
        })


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(tmp_path_factory.mktemp("features"))
    try:
        a.wait_ready(180)
        yield a
    finally:
        a.stop()


def noise_image(seed: int = 0, size: int = 64) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


def square_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def arr(image: Image.Image) -> Any:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a Server-Sent Events response."""
    kind, data = "", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and kind:
            yield kind, json.loads(data)
            kind, data = "", ""


# --- img2img and inpaint ---------------------------------------------------------------


def test_img2img_and_inpaint_through_webuiapi(agent: Agent) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=agent.port, sampler="Euler", steps=3)
    init = noise_image()
    one = api.img2img(images=[init], prompt="a bowl", seed=5, width=64, height=64, denoising_strength=0.6)
    two = api.img2img(images=[init], prompt="a bowl", seed=5, width=64, height=64, denoising_strength=0.6)
    other = api.img2img(images=[init], prompt="a bowl", seed=6, width=64, height=64, denoising_strength=0.6)
    assert one.images[0].size == (64, 64) and len(one.images) == 1
    assert (arr(one.images[0]) == arr(two.images[0])).all(), "img2img must be deterministic per seed"
    assert (arr(one.images[0]) != arr(other.images[0])).any()
    assert one.info["denoising_strength"] == 0.6
    # Inpaint: only the masked square may change (no blur, whole picture, original fill).
    inp = api.img2img(images=[init], mask_image=square_mask(), prompt="a bowl", seed=5, width=64, height=64,
                      denoising_strength=1.0, mask_blur=0, inpaint_full_res=False, inpainting_fill=1,
                      batch_size=2)
    again = api.img2img(images=[init], mask_image=square_mask(), prompt="a bowl", seed=5, width=64, height=64,
                        denoising_strength=1.0, mask_blur=0, inpaint_full_res=False, inpainting_fill=1,
                        batch_size=2)
    out, orig = arr(inp.images[0]), arr(init)
    assert len(inp.images) == 2 and inp.images[1].size == (64, 64)
    assert (out[:16] == orig[:16]).all() and (out[48:] == orig[48:]).all()
    assert (out[16:48, 16:48] != orig[16:48, 16:48]).any()
    assert (arr(inp.images[1]) == arr(again.images[1])).all()
    # webuiapi's defaults (mask blur 4, fill, only masked) are served as A1111 does them.
    default = api.img2img(images=[init], mask_image=square_mask(), prompt="a bowl", seed=5, width=64, height=64)
    assert default.images[0].size == (64, 64)
    assert (arr(default.images[0])[:8, :8] == orig[:8, :8]).all()


def test_img2img_refusals_name_the_field(agent: Agent) -> None:
    with httpx.Client(base_url=agent.url, timeout=30) as c:
        def refused(body: dict[str, Any], field: str) -> None:
            r = c.post("/sdapi/v1/img2img", json={"prompt": "x", "width": 64, "height": 64, **body})
            assert r.status_code == 422, r.text
            assert field in r.text, r.text

        refused({"init_images": ["bm90IGFuIGltYWdl"]}, "init_images")  # "not an image"
        refused({"init_images": ["***"]}, "init_images")
        gif = io.BytesIO()
        noise_image().save(gif, format="GIF")
        refused({"init_images": [base64.b64encode(gif.getvalue()).decode()]}, "init_images")
        refused({"init_images": [png_b64(noise_image())], "resize_mode": 2}, "resize_mode")
        refused({"init_images": [png_b64(noise_image())], "inpainting_fill": 2}, "inpainting_fill")
        refused({"init_images": [png_b64(noise_image())], "mask": "%%%"}, "mask")
        refused({"init_images": [png_b64(noise_image())], "sampler_name": "DPM++ 2M"}, "sampler")
        # A decompression bomb: a valid PNG header claiming 100000 x 100000 pixels.
        bomb = io.BytesIO()
        Image.new("L", (1, 1)).save(bomb, format="PNG")
        raw = bytearray(bomb.getvalue())
        raw[16:24] = (100_000).to_bytes(4, "big") * 2
        raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
        r = c.post("/v1/jobs", json={"prompt": "x", "init_image": base64.b64encode(bytes(raw)).decode()})
        assert r.status_code == 422 and "init_image" in r.text and "limits.max_image_pixels" in r.text, r.text
        r = c.post("/v1/jobs", json={"prompt": "x", "mask": png_b64(square_mask())})
        assert r.status_code == 422 and "mask" in r.text, r.text


def test_native_img2img_job_and_openai_edits(agent: Agent) -> None:
    with httpx.Client(base_url=agent.url, timeout=60) as c:
        r = c.post("/v1/jobs", json={"prompt": "a lamp", "seed": 3, "init_image": png_b64(noise_image(1, 80)),
                                     "strength": 0.5})
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        with c.stream("GET", f"/v1/jobs/{job}/events") as events:
            final = [e for e in sse_events(events)][-1]
        assert final[0] == "done", final
        body = c.get(f"/v1/jobs/{job}").json()
        assert body["params"]["init_image"].startswith("<") and body["params"]["width"] == 80
        assert Image.open(io.BytesIO(c.get(f"/v1/jobs/{job}/images/0").content)).size == (80, 80)
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key="unused", max_retries=0)
    image = io.BytesIO()
    noise_image(2).save(image, format="PNG")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # transparent: repaint the left half
    mask_file = io.BytesIO()
    mask.save(mask_file, format="PNG")
    result = client.images.edit(image=("in.png", image.getvalue(), "image/png"), prompt="a lamp", n=1,
                                size="64x64", mask=("mask.png", mask_file.getvalue(), "image/png"),
                                extra_body={"seed": 4})
    assert result.data and result.data[0].b64_json
    out = arr(Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))))
    orig = arr(noise_image(2))
    assert out.shape == (64, 64, 3) and (out[:, 32:] == orig[:, 32:]).all() and (out[:, :32] != orig[:, :32]).any()


# --- LoRA ------------------------------------------------------------------------------------


def test_loras_change_pixels_and_weight_zero_is_none(agent: Agent) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=agent.port, sampler="Euler", steps=3)
    names = sorted(lo["name"] for lo in api.get_loras())
    assert names == ["kohya_style", "peft-style"]
    for name in names:
        full = api.txt2img(prompt=f"a kite <lora:{name}:1>", seed=8, width=64, height=64)
        zero = api.txt2img(prompt=f"a kite <lora:{name}:0>", seed=8, width=64, height=64)
        none = api.txt2img(prompt="a kite", seed=8, width=64, height=64)
        assert full.info["prompt"] == "a kite"  # the tag is stripped
        assert (arr(full.images[0]) != arr(none.images[0])).any(), name
        assert (arr(zero.images[0]) == arr(none.images[0])).all(), name
    with pytest.raises(RuntimeError, match="prompt: unknown LoRA .{0,4}nope"):
        api.txt2img(prompt="a kite <lora:nope:1>", width=64, height=64)
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError, match="loras"):
        client.images.generate(prompt="a kite", size="64x64", extra_body={"loras": [{"name": "missing"}]})
    with_lora = client.images.generate(prompt="a kite", size="64x64",
                                       extra_body={"seed": 8, "loras": [{"name": "peft-style", "weight": 1.0}]})
    plain = client.images.generate(prompt="a kite", size="64x64", extra_body={"seed": 8})
    assert with_lora.data and plain.data
    assert with_lora.data[0].b64_json != plain.data[0].b64_json


# --- progress, previews, interrupt, cancel ---------------------------------------------------------


def test_job_events_in_order_with_previews(agent: Agent) -> None:
    with httpx.Client(base_url=agent.url, timeout=60) as c:
        job = c.post("/v1/jobs", json={"prompt": "a boat", "steps": 4, "seed": 2}).json()["id"]
        with c.stream("GET", f"/v1/jobs/{job}/events", params={"preview": "true"}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = list(sse_events(r))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and kinds[0] in ("queued", "started", "step"), kinds
    steps = [d["step"] for k, d in events if k == "step"]
    assert steps == sorted(steps) and steps[-1] == 4 and all(d["steps"] == 4 for k, d in events if k == "step")
    previews = [d["preview"] for k, d in events if k == "step" and "preview" in d]
    assert previews, "previews were asked for"
    assert Image.open(io.BytesIO(base64.b64decode(previews[-1]))).size == (64, 64)
    assert events[-1][1]["images"] == [f"/v1/jobs/{job}/images/0"]


def _first_step(c: httpx.Client, job: str, then: Any) -> list[tuple[str, dict[str, Any]]]:
    """Read the job's events; call ``then()`` at its first step event; return all events."""
    seen: list[tuple[str, dict[str, Any]]] = []
    with c.stream("GET", f"/v1/jobs/{job}/events") as r:
        for kind, data in sse_events(r):
            if kind == "step" and not any(k == "step" for k, _ in seen):
                then()
            seen.append((kind, data))
    return seen


def test_cancel_stops_a_running_job_between_steps(agent: Agent) -> None:
    with httpx.Client(base_url=agent.url, timeout=60) as c:
        job = c.post("/v1/jobs", json={"prompt": "a long job", "steps": LONG_STEPS}).json()["id"]
        answers: list[httpx.Response] = []
        seen = _first_step(c, job, lambda: answers.append(c.delete(f"/v1/jobs/{job}")))
        assert answers[0].status_code == 200 and answers[0].json()["status"] == "cancelled", answers[0].text
        assert seen[-1][0] == "cancelled"
        last_step = max(d["step"] for k, d in seen if k == "step")
        assert last_step < LONG_STEPS
        assert c.get(f"/v1/jobs/{job}").json()["status"] == "cancelled"
        # The worker goes on serving.
        done = c.post("/v1/jobs", json={"prompt": "after", "steps": 2}).json()["id"]
        with c.stream("GET", f"/v1/jobs/{done}/events") as r:
            assert list(sse_events(r))[-1][0] == "done"


def test_a1111_progress_and_interrupt(agent: Agent) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=agent.port, sampler="Euler", steps=LONG_STEPS)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(
        api.txt2img(prompt="interrupt me", seed=1, width=64, height=64, steps=LONG_STEPS)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        progress = api.get_progress()
        while progress["state"]["sampling_step"] < 1 and time.monotonic() < deadline:
            progress = api.get_progress()
        assert progress["state"]["sampling_steps"] == LONG_STEPS and 0 < progress["progress"] < 1
        api.interrupt()
    finally:
        worker.join(90)
    result = results[0]
    stopped = result.info["extra_generation_params"]
    assert result.images[0].size == (64, 64)
    job = result.info["job_id"]
    record = httpx.get(f"{agent.url}/v1/jobs/{job}", timeout=10).json()
    assert record["status"] == "succeeded", (record, stopped)
    with httpx.Client(base_url=agent.url, timeout=30) as c, c.stream("GET", f"/v1/jobs/{job}/events") as r:
        final = list(sse_events(r))[-1][1]
    assert 1 <= final["interrupted_at_step"] < LONG_STEPS
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["sampling_steps"] == 0


# --- OpenAI streaming --------------------------------------------------------------------------


def test_openai_streaming_parses_in_the_official_client(agent: Agent) -> None:
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key="unused", max_retries=0)
    stream = client.images.generate(prompt="a lighthouse", size="64x64", stream=True, partial_images=2,
                                    extra_body={"steps": 4, "seed": 3})
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    partials = [e for e in events if e.type == "image_generation.partial_image"]
    assert [e.partial_image_index for e in partials] == [0, 1]
    final = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json)))
    assert final.size == (64, 64) and events[-1].size == "64x64"


def test_openai_edits_stream_in_the_official_client(agent: Agent) -> None:
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key="unused", max_retries=0)
    image = io.BytesIO()
    noise_image(4).save(image, format="PNG")
    stream = client.images.edit(image=("in.png", image.getvalue(), "image/png"), prompt="a lamp", size="64x64",
                                stream=True, partial_images=2, extra_body={"steps": 4, "seed": 5, "strength": 1.0})
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_edit.partial_image"] * 2 + ["image_edit.completed"], kinds
    partials = [e for e in events if e.type == "image_edit.partial_image"]
    assert [e.partial_image_index for e in partials] == [0, 1]
    final = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json)))
    assert final.size == (64, 64) and events[-1].size == "64x64"
    # The same edit without streaming gives the same pixels: the stream adds previews, not a different job.
    plain = client.images.edit(image=("in.png", image.getvalue(), "image/png"), prompt="a lamp", size="64x64",
                               extra_body={"steps": 4, "seed": 5, "strength": 1.0})
    assert plain.data and (arr(Image.open(io.BytesIO(base64.b64decode(plain.data[0].b64_json or "")))) ==
                           arr(final)).all()
    with pytest.raises(openai.UnprocessableEntityError, match="partial_images"):
        client.images.edit(image=("in.png", image.getvalue(), "image/png"), prompt="a lamp", size="64x64",
                           partial_images=2)
