"""The A1111 routes: the seed's curl bodies, the webuiapi client, and the whole schema."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import webuiapi
from PIL import Image

from tests.api_support import HTTP, MemService, make_config, serve

# ../shared/seed section 2.3, verbatim.
SEED_CURL_BODY = '{ "prompt": "a ceramic coffee cup on a wooden table, natural lighting", "steps": 8, "scheduler": "simple", "cfg_scale": 7.0 }'
# The brief's variant with an A1111 display name.
BRIEF_CURL_BODY = ('{"prompt": "a cat", "negative_prompt": "", "steps": 8, "width": 1024, "height": 1024, '
                   '"sampler_name": "DPM++ 2M SDE", "cfg_scale": 7}')


@pytest.fixture(scope="module")
def svc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemService, str]]:
    tmp = tmp_path_factory.mktemp("a1111")
    svc = MemService(tmp / "out")
    with serve(make_config(tmp), svc) as url:
        yield svc, url


def _post(url: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return HTTP.post(url + "/sdapi/v1/txt2img", content=content,
                      headers={"Content-Type": "application/json"}, timeout=20)


@pytest.mark.parametrize("body", [SEED_CURL_BODY, BRIEF_CURL_BODY])
def test_the_seeds_curl_works_unchanged(svc_url: tuple[MemService, str], body: str) -> None:
    svc, url = svc_url
    r = _post(url, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"images", "parameters", "info"}
    assert len(out["images"]) == 1
    png = base64.b64decode(out["images"][0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size == (1024, 1024)
    info = json.loads(out["info"])
    assert info["all_seeds"] == [info["seed"]]
    assert info["steps"] == 8
    req = svc.submitted[-1]
    # cfg_scale 7 is A1111's untouched default: the profile's guidance (0) applies.
    assert req.guidance == 0.0 and info["cfg_scale"] == 0.0
    assert out["parameters"]["cfg_scale"] == 7.0


def test_sampler_display_names_and_scheduler(svc_url: tuple[MemService, str]) -> None:
    svc, url = svc_url
    cases = [
        ({"sampler_name": "DPM++ 2M SDE"}, ("dpmpp_2m_sde", "simple")),
        ({"sampler_name": "DPM++ 2M Karras"}, ("dpmpp_2m", "karras")),
        ({"sampler_name": "Euler a", "scheduler": "Exponential"}, ("euler_a", "exponential")),
        ({"sampler_index": "Euler", "scheduler": "Automatic"}, ("euler", "simple")),
        ({"sampler_name": "DPM++ 2M Karras", "scheduler": "Simple"}, ("dpmpp_2m", "simple")),
    ]
    for extra, want in cases:
        r = _post(url, {"prompt": "x", "width": 64, "height": 64, **extra})
        assert r.status_code == 200, (extra, r.text)
        req = svc.submitted[-1]
        assert (req.sampler, req.schedule) == want, extra


def test_batch_n_iter_seed_and_cfg(svc_url: tuple[MemService, str]) -> None:
    svc, url = svc_url
    r = _post(url, {"prompt": "x", "width": 64, "height": 80, "seed": 100, "batch_size": 2, "n_iter": 3,
                    "cfg_scale": 2.5, "steps": 4, "negative_prompt": "blurry"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["images"]) == 6
    info = json.loads(out["info"])
    assert info["all_seeds"] == list(range(100, 106))
    assert info["cfg_scale"] == 2.5 and info["negative_prompt"] == "blurry"
    assert "Negative prompt: blurry" in info["infotexts"][0] and "Seed: 100" in info["infotexts"][0]
    req = svc.submitted[-1]
    assert (req.guidance, req.steps, req.width, req.height, req.seeds) == (2.5, 4, 64, 80, tuple(range(100, 106)))
    # cfg_scale 1 is A1111's "no guidance"
    assert _post(url, {"prompt": "x", "width": 64, "height": 64, "cfg_scale": 1}).status_code == 200
    assert svc.submitted[-1].guidance == 0.0


def test_send_images_false(svc_url: tuple[MemService, str]) -> None:
    r = _post(svc_url[1], {"prompt": "x", "width": 64, "height": 64, "send_images": False, "save_images": True})
    assert r.status_code == 200
    assert r.json()["images"] == []


@pytest.mark.parametrize(("extra", "field"), [
    ({"enable_hr": True}, "enable_hr"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    ({"alwayson_scripts": {"ADetailer": {"args": []}}}, "alwayson_scripts"),  # only controlnet runs
    ({"restore_faces": True}, "restore_faces"),
    ({"tiling": True}, "tiling"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 2}}, "override_settings"),
    ({"refiner_checkpoint": "sdxl_refiner"}, "refiner_checkpoint"),
    ({"styles": ["cinematic"]}, "styles"),
    ({"subseed_strength": 0.3}, "subseed_strength"),
    ({"firstpass_image": "aGVsbG8="}, "firstpass_image"),
    ({"sampler_name": "DDIM"}, "sampler_name"),
    ({"sampler_index": "PLMS"}, "sampler_index"),
    ({"scheduler": "Polyexponential"}, "scheduler"),
    ({"cfg_scale": 30}, "cfg_scale"),
    ({"batch_size": 4, "n_iter": 4}, "batch_size"),
    ({"width": 1000}, "width"),
    ({"steps": 500}, "steps"),
    ({"not_a1111_field": 1}, "not_a1111_field"),
])
def test_what_zitops_cannot_do_is_a_422_naming_the_field(svc_url: tuple[MemService, str], extra: dict[str, Any], field: str) -> None:
    r = _post(svc_url[1], {"prompt": "x", "width": 64, "height": 64, **extra})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["message"].startswith(field), body
    assert body["detail"] == body["error"]["message"]


NEUTRAL_FULL_BODY: dict[str, Any] = {
    "prompt": "x", "negative_prompt": "", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": "Euler", "scheduler": "Automatic",
    "batch_size": 1, "n_iter": 1, "steps": 8, "cfg_scale": 7.0, "distilled_cfg_scale": 3.5, "width": 64,
    "height": 64, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "eta": 1.0, "denoising_strength": 0.7, "s_min_uncond": 0, "s_churn": 0,
    "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None, "refiner_switch_at": None, "disable_extra_networks": False,
    "firstpass_image": None, "comments": {}, "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0,
    "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
    "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "force_task_id": None, "sampler_index": "Euler", "script_name": None,
    "script_args": [], "send_images": True, "save_images": False, "alwayson_scripts": {}, "infotext": None,
}


def test_the_whole_schema_at_neutral_defaults_is_accepted(svc_url: tuple[MemService, str]) -> None:
    from zitops.agent.http.api_a1111 import Txt2ImgIn

    forge_extras = {"hr_additional_modules", "hr_distilled_cfg"}
    assert set(NEUTRAL_FULL_BODY) == set(Txt2ImgIn.model_fields) - forge_extras
    r = _post(svc_url[1], NEUTRAL_FULL_BODY)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["hr_upscaler"] == "Latent"


def test_webuiapi_client(svc_url: tuple[MemService, str]) -> None:
    svc, url = svc_url
    port = int(url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="DPM++ 2M SDE", steps=6)
    result = api.txt2img(prompt="a cup of tea", seed=5, width=128, height=64, batch_size=2)
    assert [im.size for im in result.images] == [(128, 64), (128, 64)]
    assert result.info["all_seeds"] == [5, 6]
    req = svc.submitted[-1]
    assert (req.sampler, req.steps, req.guidance) == ("dpmpp_2m_sde", 6, 0.0)
    names = [s["name"] for s in api.get_samplers()]
    assert "DPM++ 2M SDE" in names and "Euler" in names
    assert api.get_sd_models()[0]["title"]
    assert "sd_model_checkpoint" in api.get_options()


def test_lookups(svc_url: tuple[MemService, str]) -> None:
    url = svc_url[1]
    samplers = HTTP.get(url + "/sdapi/v1/samplers", timeout=10).json()
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE"} <= {s["name"] for s in samplers}
    schedulers = HTTP.get(url + "/sdapi/v1/schedulers", timeout=10).json()
    assert [s["label"] for s in schedulers][:2] == ["Automatic", "Simple"]
    assert HTTP.get(url + "/sdapi/v1/scripts", timeout=10).json() == {"txt2img": [], "img2img": []}
