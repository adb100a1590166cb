"""ControlNet against a real agent: the tiny pipeline with a tiny Union ControlNet built here with diffusers.

One ``zitops agent`` on loopback, its ControlNet directory holding random
weights of the Union architecture at the tiny model's size. The A1111 route is
driven with ``webuiapi`` and its ControlNet units, the native route with raw
JSON. Pixels are compared, never times.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.agent_process_support import AgentProcess
from tests.controlnet_support import make_controlnet
from tests.integration.test_features_agent import arr
from tests.integration.test_features_agent import png_b64 as b64
from tests.runtime_support import REAL_ENGINE_SETS, link_tiny_model
from zitops.profile import load_profile

pytestmark = pytest.mark.slow

SETS = ["generation.width=64", "generation.height=64", "generation.steps=2", "queue.depth=20",
        "queue.job_timeout_s=60", "queue.drain_timeout_s=10"]


class Agent(AgentProcess):
    """A real ``zitops agent`` on the tiny pipeline with a tiny ControlNet."""

    def __init__(self, tmp: Path) -> None:
        link_tiny_model(tmp / "state_dir")
        super().__init__(tmp, {
            "profile": load_profile("designer", SETS + REAL_ENGINE_SETS).model_dump(mode="json"),
            "controlnet_dir": str(make_controlnet(tmp / "controlnet")), "log_format": "json",
            "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
            "engine": {"kind": "diffusers"},
            "limits": {"max_body_bytes": 1048576},  # native jobs carry the control image in JSON
        })


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(tmp_path_factory.mktemp("controlnet"))
    try:
        a.wait_ready(180)
        yield a
    finally:
        a.stop()


def edges_image() -> Image.Image:
    """A control map: white rectangle outlines on black, as a canny map looks."""
    image = Image.new("RGB", (64, 64))
    image.paste((255, 255, 255), (8, 8, 56, 10))
    image.paste((255, 255, 255), (8, 8, 10, 56))
    image.paste((255, 255, 255), (30, 20, 32, 60))
    return image


def photo() -> Image.Image:
    """A picture with hard edges, for the server's canny."""
    image = Image.new("RGB", (64, 64), (20, 40, 60))
    image.paste((230, 200, 40), (16, 16, 48, 48))
    return image


def native(agent: Agent, control: dict[str, Any] | None, seed: int = 3) -> Any:
    """The image of a native job (with ``control`` when given), fetched once it succeeded."""
    body: dict[str, Any] = {"prompt": "a house", "seed": seed, "width": 64, "height": 64, "steps": 2}
    if control is not None:
        body["control"] = control
    with httpx.Client(base_url=agent.url, timeout=60) as c:
        job = c.post("/v1/jobs", json=body)
        assert job.status_code == 202, job.text
        url = job.json()["url"]
        with c.stream("GET", url + "/events") as events:  # ends after done, failed or cancelled
            for _ in events.iter_lines():
                pass
        state = c.get(url).json()
        assert state["status"] == "succeeded", state
        image = c.get(url + "/images/0")
        return arr(Image.open(io.BytesIO(image.content))), state


def test_native_control_changes_pixels_and_strength_zero_equals_none(agent: Agent) -> None:
    plain, _ = native(agent, None)
    ctl, state = native(agent, {"image": b64(edges_image()), "type": "canny", "strength": 1.0})
    again, _ = native(agent, {"image": b64(edges_image()), "type": "canny", "strength": 1.0})
    zero, _ = native(agent, {"image": b64(edges_image()), "type": "canny", "strength": 0.0})
    other_seed, _ = native(agent, {"image": b64(edges_image()), "type": "canny", "strength": 1.0}, seed=4)
    assert np.abs(ctl - plain).mean() > 1, "a control image must change the pixels"
    assert (ctl == again).all(), "control must be deterministic per seed"
    assert (ctl != other_seed).any()
    # The ControlNet's outputs are scaled by the strength and added to the transformer's blocks:
    # at 0 it adds exact zeros, so the pixels are those without control (eager, as here on the CPU).
    assert (zero == plain).all()
    params = state["params"]
    assert params["control_type"] == "canny" and params["control_strength"] == 1.0
    assert params["control_image"].startswith("<")  # its size, not the base64
    # The server's canny turns a photo into a map; a depth map is taken as sent.
    canny, _ = native(agent, {"image": b64(photo()), "preprocess": "canny", "strength": 1.0})
    depth, _ = native(agent, {"image": b64(photo()), "type": "depth", "strength": 1.0})
    assert (canny != depth).any()


def test_a1111_controlnet_unit_through_webuiapi(agent: Agent) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=agent.port, sampler="Euler", steps=2)
    unit = webuiapi.ControlNetUnit(image=edges_image(), module="none", model="union [canny]", weight=1.0)
    one = api.txt2img(prompt="a house", seed=3, width=64, height=64, cfg_scale=7, controlnet_units=[unit])
    two = api.txt2img(prompt="a house", seed=3, width=64, height=64, cfg_scale=7, controlnet_units=[unit])
    off = api.txt2img(prompt="a house", seed=3, width=64, height=64, cfg_scale=7,
                      controlnet_units=[webuiapi.ControlNetUnit(image=edges_image(), enabled=False)])
    canny = api.txt2img(prompt="a house", seed=3, width=64, height=64, cfg_scale=7,
                        controlnet_units=[webuiapi.ControlNetUnit(image=photo(), module="canny",
                                                                  threshold_a=100, threshold_b=200)])
    assert one.images[0].size == (64, 64)
    assert (arr(one.images[0]) == arr(two.images[0])).all()
    assert np.abs(arr(one.images[0]) - arr(off.images[0])).mean() > 1
    assert (arr(canny.images[0]) != arr(off.images[0])).any()
    native_same, _ = native(agent, {"image": b64(edges_image()), "strength": 1.0, "resize": "fill"})
    assert (arr(one.images[0]) == native_same).all(), "webuiapi's Resize and Fill = native resize fill"
    assert api.controlnet_module_list() == ["none", "canny"]
    assert api.controlnet_model_list() == ["controlnet"]


def test_bad_control_fields_are_refused_by_name(agent: Agent) -> None:
    unit = {"image": b64(edges_image()), "module": "none", "weight": 1.0}
    with httpx.Client(base_url=agent.url, timeout=30) as c:
        def refused(path: str, body: dict[str, Any], field: str) -> None:
            r = c.post(path, json={"prompt": "x", "width": 64, "height": 64, "steps": 2, **body})
            assert r.status_code == 422, r.text
            assert field in r.text, r.text

        def a1111(**change: Any) -> dict[str, Any]:
            return {"alwayson_scripts": {"controlnet": {"args": [{**unit, **change}]}}}

        t2i = "/sdapi/v1/txt2img"
        refused(t2i, a1111(module="depth_midas"), "args[0].module")
        refused(t2i, a1111(module="sharpen"), "args[0].module")
        refused(t2i, a1111(guidance_end=0.5), "args[0].guidance_start")
        refused(t2i, a1111(control_mode=2), "args[0].control_mode")
        refused(t2i, a1111(resize_mode="Stretch"), "args[0].resize_mode")
        refused(t2i, a1111(mask=unit["image"]), "args[0].mask")
        refused(t2i, a1111(image="", input_image=None), "args[0].image")
        refused(t2i, a1111(image="bm90IGFuIGltYWdl"), "args[0].image")
        refused(t2i, a1111(inpaint_crop_input_image=True), "args[0].inpaint_crop_input_image")
        refused(t2i, a1111(weight=5), "args[0].weight")
        refused(t2i, {"alwayson_scripts": {"controlnet": {"args": [unit, unit]}}}, "enabled units")
        refused(t2i, {"alwayson_scripts": {"controlnet": [unit]}}, "alwayson_scripts.controlnet")
        refused(t2i, {"alwayson_scripts": {"controlnet": {"args": []}, "adetailer": {"args": []}}},
                "alwayson_scripts")
        refused("/sdapi/v1/img2img", {"init_images": [unit["image"]], **a1111()}, "alwayson_scripts.controlnet")
        jobs = "/v1/jobs"
        refused(jobs, {"control": {"image": unit["image"], "type": "normal"}}, "type")
        refused(jobs, {"control": {"image": unit["image"], "strength": 3}}, "strength")
        refused(jobs, {"control": {"image": unit["image"], "type": "depth", "preprocess": "canny"}},
                "control.preprocess")
        refused(jobs, {"control": {"image": "***"}}, "control.image")
        refused(jobs, {"control": {"image": unit["image"]}, "init_image": unit["image"]}, "control")
