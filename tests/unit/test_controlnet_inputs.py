"""ControlNet at the edge without a model: no ControlNet deployed, the schema, deploy's check, canny, sharing."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api_support import MemService, make_config, serve
from tests.controlnet_support import make_controlnet
from tests.runtime_support import runtime_config
from zitops.agent.http.app import create_app
from zitops.agent.http.canny import canny
from zitops.deployment.deploy_plan import controlnet_dir
from zitops.errors import RenderError


def _png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("no-controlnet")
    with serve(make_config(tmp), MemService(tmp / "out")) as base:
        yield base


def test_without_a_controlnet_control_requests_get_a_clear_422(url: str) -> None:
    unit = {"image": _png(), "module": "none"}
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"ControlNet": {"args": [unit]}}})
        assert r.status_code == 422 and "--controlnet-dir" in r.text, r.text
        r = c.post("/v1/jobs", json={"prompt": "x", "control": {"image": _png()}})
        assert r.status_code == 422 and "control" in r.text, r.text
        # A disabled unit, or none (webuiapi sends {"args": []}), is plain txt2img.
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"ControlNet": {"args": []}}})
        assert r.status_code == 200, r.text
        assert c.get("/controlnet/model_list").json() == {"model_list": []}


def test_the_schema_says_whether_controlnet_is_on(tmp_path: Path) -> None:
    off = create_app(runtime_config(tmp_path), MemService(tmp_path / "a"), tokens=frozenset()).openapi()
    schemas = off["components"]["schemas"]
    assert schemas["JobIn"]["properties"]["control"]["type"] == "null"
    assert schemas["Txt2ImgIn"]["properties"]["alwayson_scripts"]["enum"] == [{}]
    cn = make_controlnet(tmp_path / "cn")
    on = create_app(runtime_config(tmp_path, controlnet_dir=str(cn)), MemService(tmp_path / "b"),
                    tokens=frozenset()).openapi()
    schemas = on["components"]["schemas"]
    scripts = schemas["Txt2ImgIn"]["properties"]["alwayson_scripts"]
    assert scripts["properties"]["controlnet"]["properties"]["args"]["maxItems"] == 1
    assert schemas["A1111ControlNetUnit"]["properties"]["module"]["enum"] == ["none", "canny"]
    assert "ControlIn" in str(schemas["JobIn"]["properties"]["control"])


def test_deploy_checks_the_controlnet_directory(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="config.json"):
        controlnet_dir(tmp_path)
    assert controlnet_dir(make_controlnet(tmp_path / "cn")) == (tmp_path / "cn").absolute()


def test_canny_draws_thin_edges_where_the_picture_has_them() -> None:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (16, 16, 48, 48))
    edges = np.asarray(canny(image).convert("L")) > 0
    assert edges[14:50, 14:50].any() and not edges[:8].any() and not edges[:, :8].any()
    assert not edges[24:40, 24:40].any(), "a flat area has no edges"
    assert edges.sum() < 64 * 6, "edges are thin lines, not filled regions"
    assert not (np.asarray(canny(image, 2000, 3000).convert("L")) > 0).any(), "thresholds above every gradient"
    assert not (np.asarray(canny(Image.new("RGB", (32, 32), (90, 90, 90)))) > 0).any()
