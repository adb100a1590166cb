"""The container image, built and run for real (podman, runc, a Debian base from mmdebstrap).

The image is built once per module from a wheelhouse (no index: the air-gapped
build), then run as an operator would: the default command answers the seed
article's curl with a PNG, as a non-root user, with a read-only root
filesystem, and exits 0 on SIGTERM within the profile's drain time. A mounted
config is what the container runs; ZITOPS_PORT moves the default command's port.
Marked ``image``: .ci/run runs it as a step of its own (docs/deploy.md "Containers").
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.image_support import (
    INSTALL_HINT,
    BuiltImage,
    build_image,
    missing_tools,
    podman,
    remove_image,
)
from tests.pg_support import free_port
from zitops.config import config_to_dict
from zitops.deployment import deploy
from zitops.profile import load_profile

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

# The README's curl body (the seed article's, section 2.3), byte for byte.
SEED_BODY = ('{ "prompt": "a ceramic coffee cup on a wooden table, natural lighting", "steps": 8, '
             '"scheduler": "simple", "cfg_scale": 7.0 }')
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
START_S = 600.0  # the worker builds the tiny model on first start; a loaded 2-core box is slow


def _wait_for(what: str, check: object, deadline_s: float) -> None:
    """Poll ``check()`` until it is true, failing after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {deadline_s:g} s")


def _answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == status
    except httpx.HTTPError:
        return False


def _logs(name: str) -> str:
    done = podman("logs", name, check=False)
    return (done.stdout + done.stderr)[-4000:]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    missing = missing_tools()
    assert not missing, f"missing {', '.join(missing)}: {INSTALL_HINT}"
    built = build_image(tmp_path_factory.mktemp("image"))
    t = built.timings
    print(f"\nimage-build: {json.dumps({'size_bytes': built.size_bytes, 'base_s': round(t.base_s, 1), 'base_cached': t.base_cached, 'wheels_s': round(t.wheels_s, 1), 'wheels_cached': t.wheels_cached, 'zitops_wheel_s': round(t.zitops_wheel_s, 1), 'build_s': round(t.build_s, 1)})}")
    yield built
    remove_image(built.tag)


class Container:
    """One detached container of the image, removed at the end."""

    def __init__(self, image: BuiltImage, *args: str, port: int = 7860) -> None:
        self.name = f"zitops-test-{os.getpid()}-{time.monotonic_ns()}"
        self.host_port = free_port()
        podman("run", "-d", "--name", self.name, "--read-only",
               "-p", f"127.0.0.1:{self.host_port}:{port}", *args, image.tag)
        self.url = f"http://127.0.0.1:{self.host_port}"

    def wait_live(self) -> None:
        _wait_for(f"/livez of {self.name}\n{_logs(self.name)}", lambda: _answers(self.url + "/livez"), START_S)

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture(scope="module")
def demo(image: BuiltImage) -> Iterator[Container]:
    box = Container(image)
    try:
        box.wait_live()
        yield box
    finally:
        box.remove()


def test_image_record_labels_user_and_sbom(image: BuiltImage) -> None:
    meta = json.loads(podman("image", "inspect", image.tag).stdout)[0]
    config = meta["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == image.version
    assert labels["org.opencontainers.image.revision"] == image.revision
    assert labels["org.opencontainers.image.source"] == image.source
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"][0].endswith("/dumb-init") and "--single-child" in config["Entrypoint"]
    assert "zitops health --live" in " ".join(meta["Healthcheck"]["Test"])  # /livez
    assert {"/var/lib/zitops", "/var/log/zitops", "/var/cache/zitops"} <= set(config["Volumes"])
    # No compilers in the final image, and the SBOM lists what the venv holds.
    script = ("for c in gcc cc g++ c++ clang tcc; do command -v $c; done; id -u; "
              "cat /opt/zitops/share/zitops/sbom.cdx.json")
    out = podman("run", "--rm", "--read-only", image.tag, "sh", "-c", script).stdout
    first, _, sbom_text = out.partition("{")
    assert first.split() == ["10001"], f"a compiler or a root user in the image: {first!r}"
    sbom = json.loads("{" + sbom_text)
    components = {c["name"].lower(): c.get("version") for c in sbom["components"]}
    assert sbom["bomFormat"] == "CycloneDX"
    assert components.get("zitops") == image.version and components.get("torch", "").startswith("2.13.0")
    # The [fast] extra's ISA-L and pybase64: without them the image's PNG writing falls back to zlib.
    assert {"isal", "pybase64"} <= set(components), sorted(components)


_UNCOMPILED = """
import importlib.util, os, sys
missing = []
for root in [p for p in sys.path if p.endswith("-packages") and os.path.isdir(p)]:
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            if name.endswith(".py") and not os.path.exists(importlib.util.cache_from_source(path)):
                try:
                    compile(open(path, "rb").read(), path, "exec")
                except (SyntaxError, ValueError):
                    continue  # does not compile: nothing imports it
                missing.append(path)
print(len(missing), *missing[:5])
"""


def test_every_module_has_its_bytecode(image: BuiltImage) -> None:
    """Read-only with PYTHONDONTWRITEBYTECODE: a module without a .pyc is compiled at every worker start."""
    out = podman("run", "--rm", "--read-only", image.tag, "python", "-c", _UNCOMPILED).stdout.split()
    assert out[0] == "0", f"{out[0]} modules without bytecode, e.g. {out[1:]}"


def test_doctor_reports_the_image(image: BuiltImage) -> None:
    done = podman("run", "--rm", "--read-only", image.tag, "zitops", "doctor", "--json", check=False)
    report = json.loads(done.stdout)
    found = [c for c in report["checks"] if c["name"] == "image"]
    assert found and found[0]["ok"], report["checks"]
    assert image.version in found[0]["detail"] and image.revision in found[0]["detail"]


def test_seed_curl_non_root_read_only_and_drain(image: BuiltImage, demo: Container) -> None:
    _wait_for(f"/readyz\n{_logs(demo.name)}", lambda: _answers(demo.url + "/readyz"), START_S)
    assert podman("exec", demo.name, "id", "-u").stdout.strip() == "10001"
    assert podman("healthcheck", "run", demo.name, check=False).returncode == 0, _logs(demo.name)
    # The seed's curl, as the README gives it.
    curl = subprocess.run(
        ["curl", "-sS", "-m", "900", "-X", "POST", f"{demo.url}/sdapi/v1/txt2img",
         "-H", "Content-Type: application/json", "-d", SEED_BODY],
        capture_output=True, text=True, timeout=960, check=False)
    assert curl.returncode == 0, curl.stderr
    answer = json.loads(curl.stdout)
    assert "images" in answer, curl.stdout[:500]
    assert base64.b64decode(answer["images"][0]).startswith(PNG_MAGIC)
    # SIGTERM: dumb-init hands it to the agent, which drains and exits 0 within its drain time.
    drain_s = load_profile("designer").queue.drain_timeout_s
    podman("kill", "--signal", "TERM", demo.name)
    waited = podman("wait", "--condition", "exited", demo.name, timeout=drain_s + 5, check=False)
    state = json.loads(podman("inspect", demo.name).stdout)[0]["State"]
    assert state["Status"] == "exited", f"still {state['Status']} {drain_s:g} s after SIGTERM"
    assert state["ExitCode"] == 0 and waited.stdout.strip() == "0", _logs(demo.name)


def test_mounted_config_and_zitops_port(image: BuiltImage, tmp_path: Path) -> None:
    """/etc/zitops/config.yaml (here the k8s target's in-pod config) is what runs; ZITOPS_PORT moves the demo."""
    plan = deploy.plan(deploy.DeployRequest(profile="designer", targets=("k8s",), out=tmp_path / "deploy",
                                            port=7871))
    assert plan.k8s_config is not None
    pod_config = config_to_dict(plan.k8s_config)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(pod_config))
    tokens = tmp_path / "tokens"
    tokens.write_text("t" * 32 + "\n")
    os.chown(tokens, 10001, 10001)
    tokens.chmod(0o600)
    mounted = Container(image, "-v", f"{config}:/etc/zitops/config.yaml:ro",
                        "-v", f"{tokens}:{pod_config['auth']['tokens_file']}:ro", "-e", "ZITOPS_PORT=7871",
                        port=7871)
    moved = Container(image, "-e", "ZITOPS_PORT=7872", port=7872)
    try:
        mounted.wait_live()
        procs = podman("exec", mounted.name, "sh", "-c",
                       "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done").stdout
        assert "zitops agent --config /etc/zitops/config.yaml" in procs, procs
        assert _answers(mounted.url + "/status", 401), "the mounted config's tokens are not required"
        authed = httpx.get(mounted.url + "/status", headers={"Authorization": "Bearer " + "t" * 32}, timeout=10)
        assert authed.status_code == 200
        assert podman("healthcheck", "run", mounted.name, check=False).returncode == 0
        moved.wait_live()
        assert podman("healthcheck", "run", moved.name, check=False).returncode == 0
    finally:
        mounted.remove()
        moved.remove()
