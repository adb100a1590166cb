"""What ``zitops deploy`` renders, checked in memory: every target, every
built-in profile, the agent config read back by the agent's own loader, and
the repository's reference unit kept identical to the rendered one."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_support import fake_weights  # noqa: E402

from zitops.config import load_config  # noqa: E402
from zitops.deployment import deploy  # noqa: E402
from zitops.errors import RenderError, ZitopsError  # noqa: E402
from zitops.profile import BUILTIN_PROFILES  # noqa: E402
from zitops.render import templates_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = "/usr/local/bin/zitops"


def make(tmp_path: Path, **kw: object) -> deploy.Plan:
    """Plan a deployment into tmp_path/deploy with a fixed zitops path."""
    kw.setdefault("out", tmp_path / "deploy")
    kw.setdefault("zitops_bin", BIN)
    return deploy.plan(deploy.DeployRequest(**kw))  # type: ignore[arg-type]


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (repeated keys kept in order)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_templates_resolve_to_the_top_level_directory_in_a_checkout() -> None:
    assert templates_dir().samefile(REPO / "templates")


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_every_profile_renders_every_target(tmp_path: Path, profile: str) -> None:
    plan = make(tmp_path, profile=profile)
    assert {f.path for f in plan.files} == {
        "config.yaml", "start.sh", "supervisor/zitops.conf", "supervisord.conf",
        f"systemd/{deploy.UNIT_NAME}", "k8s/configmap.yaml", "k8s/service.yaml", "k8s/deployment.yaml",
        "k8s/kustomization.yaml",
        "observability/zitops-rules.yaml", "observability/zitops-dashboard.json",
        "k8s/monitoring/prometheusrule.yaml", "k8s/monitoring/dashboard-configmap.yaml",
        "k8s/monitoring/servicemonitor.yaml", "k8s/monitoring/kustomization.yaml",
    }
    for f in plan.files:
        assert f.content.endswith("\n") and not f.content.endswith("\n\n"), f.path
        # The seed's broken advice must never reappear (NOTES.md 5.1).
        assert "cron=" not in f.content, f.path
        assert "gpu-reset" not in f.content, f.path


def test_config_yaml_loads_with_the_agents_loader(tmp_path: Path) -> None:
    weights = str(fake_weights(tmp_path / "weights"))
    plan = make(tmp_path, profile="poster", model=weights, port=9000, gpus="0,1")
    path = tmp_path / "config.yaml"
    path.write_text(plan.file("config.yaml").content)
    config = load_config(path)
    assert config == plan.config
    assert config.profile.name == "poster" and config.port == 9000 and config.gpus == [0, 1]
    assert config.model == weights
    out = str(tmp_path / "deploy")
    assert config.paths.model_dump(exclude_none=True) == {
        "state_dir": f"{out}/state", "log_dir": f"{out}/logs",
        "output_dir": f"{out}/outputs", "cache_dir": f"{out}/cache",
    }


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    first = make(tmp_path, profile="ecommerce", overrides=("generation.steps=7",))
    second = make(tmp_path, profile="ecommerce", overrides=("generation.steps=7",))
    assert [(f.path, f.data, f.mode) for f in first.files] == [(f.path, f.data, f.mode) for f in second.files]


def test_systemd_unit_settings(tmp_path: Path) -> None:
    plan = make(tmp_path, overrides=("queue.drain_timeout_s=120",))
    unit = unit_settings(plan.file(f"systemd/{deploy.UNIT_NAME}").content)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["Restart"] == ["on-failure"] and unit["KillMode"] == ["mixed"]
    assert unit["WatchdogSec"] == ["30s"]
    assert int(unit["StartLimitBurst"][0]) >= 1 and int(unit["StartLimitIntervalSec"][0]) > 0
    assert int(unit["TimeoutStopSec"][0].rstrip("s")) > 120
    assert unit["ExecStart"] == [f'"{BIN}" agent --config "{tmp_path}/deploy/config.yaml"']
    assert unit["EnvironmentFile"] == ["-/etc/zitops/zitops.env"]
    assert unit["DevicePolicy"] == ["closed"]
    assert "/dev/nvidiactl rw" in unit["DeviceAllow"] and "/dev/nvidia-uvm rw" in unit["DeviceAllow"]
    assert "char-nvidia-frontend rw" in unit["DeviceAllow"]
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert unit[key] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == [" ".join(f'"{tmp_path}/deploy/{d}"' for d in ("cache", "logs", "outputs", "state"))]
    assert not any("token" in v.lower() for vs in unit.values() for v in vs)


def test_systemd_devices_follow_gpus(tmp_path: Path) -> None:
    unit = unit_settings(make(tmp_path, gpus="0,2").file(f"systemd/{deploy.UNIT_NAME}").content)
    assert "/dev/nvidia0 rw" in unit["DeviceAllow"] and "/dev/nvidia2 rw" in unit["DeviceAllow"]
    assert "char-nvidia-frontend rw" not in unit["DeviceAllow"]


def test_install_uses_fhs_paths_and_a_service_user(tmp_path: Path) -> None:
    plan = make(tmp_path, install=True)
    assert plan.config.paths.state_dir == "/var/lib/zitops"
    assert plan.config.paths.log_dir == "/var/log/zitops"
    unit = unit_settings(plan.file(f"systemd/{deploy.UNIT_NAME}").content)
    assert unit["User"] == ["zitops"] and unit["StateDirectory"] == ["zitops"]
    assert unit["ExecStart"] == [f'"{BIN}" agent --config "/etc/zitops/config.yaml"']
    assert plan.file("start.sh").install_to == "/usr/local/libexec/zitops/start.sh"
    assert "user=zitops" in plan.file("supervisor/zitops.conf").content


def test_reference_unit_matches_the_render() -> None:
    """systemd/ in the repo holds the unit for the default profile, installed."""
    plan = deploy.plan(deploy.DeployRequest(targets=("systemd",), install=True, zitops_bin=BIN))
    rendered = plan.file(f"systemd/{deploy.UNIT_NAME}").content
    reference = (REPO / "systemd" / deploy.UNIT_NAME).read_text()
    assert rendered == reference, (
        "systemd/zitops-agent.service is stale; regenerate with: python -c \"from zitops.deployment import deploy as d; "
        "print(d.plan(d.DeployRequest(targets=('systemd',), install=True, zitops_bin='/usr/local/bin/zitops'))"
        ".file('systemd/zitops-agent.service').content, end='')\" > systemd/zitops-agent.service"
    )


def test_supervisor_program(tmp_path: Path) -> None:
    plan = make(tmp_path, overrides=("queue.drain_timeout_s=100",))
    text = plan.file("supervisor/zitops.conf").content
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert settings["command"] == f"{tmp_path}/deploy/start.sh"
    assert settings["stopsignal"] == "TERM" and int(settings["stopwaitsecs"]) > 100
    assert settings["autorestart"] == "true"
    standalone = plan.file("supervisord.conf").content
    assert text.split("[program:zitops]")[1] in standalone
    assert "chmod=0700" in standalone
    assert f"file={tmp_path}/deploy/supervisor.sock" in standalone


def test_start_script_execs_the_agent(tmp_path: Path) -> None:
    text = make(tmp_path).file("start.sh").content
    assert text.startswith("#!/usr/bin/env bash\n")
    assert text.rstrip().splitlines()[-1] == f"exec {BIN} agent --config {tmp_path}/deploy/config.yaml"
    assert make(tmp_path).file("start.sh").mode == 0o755


def test_kubernetes_objects(tmp_path: Path) -> None:
    plan = make(tmp_path, profile="ecommerce", model=str(fake_weights(tmp_path / "zimage")))
    cm = yaml.safe_load(plan.file("k8s/configmap.yaml").content)
    embedded = yaml.safe_load(cm["data"]["config.yaml"])
    assert plan.k8s_config is not None
    assert embedded["host"] == "0.0.0.0" and embedded["model"] == "/models"
    assert embedded["paths"] == plan.k8s_config.paths.model_dump()
    dep = yaml.safe_load(plan.file("k8s/deployment.yaml").content)
    pod = dep["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert agent["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert agent["startupProbe"]["httpGet"]["path"] == "/livez"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] > plan.profile.queue.drain_timeout_s + 5
    assert agent["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The tokens file the config names is where the Secret is mounted.
    tokens = Path(embedded["auth"]["tokens_file"])
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    secret = next(v for v in pod["volumes"] if v["name"] == "tokens")["secret"]
    assert secret["secretName"] == "zitops-tokens" and str(tokens.parent) == mounts["tokens"]
    assert secret["defaultMode"] & 0o007 == 0  # the agent refuses tokens others can read
    assert Path(agent["args"][-1]).parent == Path(mounts["config"])
    claim = next(v for v in pod["volumes"] if v["name"] == "model")["persistentVolumeClaim"]["claimName"]
    assert claim == "zitops-models" and mounts["model"] == "/models"
    service = yaml.safe_load(plan.file("k8s/service.yaml").content)
    assert service["spec"]["ports"][0]["port"] == 7860


def test_kubernetes_tiny_model_needs_no_volume(tmp_path: Path) -> None:
    dep = yaml.safe_load(make(tmp_path).file("k8s/deployment.yaml").content)
    assert "model" not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}


def test_non_loopback_host_needs_tokens_or_a_proxy(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="auth.tokens_file"):
        make(tmp_path, host="0.0.0.0")
    plan = make(tmp_path, host="0.0.0.0", overrides=("auth.tokens_file=/etc/zitops/tokens",))
    assert plan.config.auth.tokens_file == "/etc/zitops/tokens"
    assert make(tmp_path, host="10.0.0.5", overrides=("auth.behind_proxy=true",)).config.auth.behind_proxy


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"host": "a;rm -rf /"}, "--host 'a;rm -rf /': not an IP address or a hostname"),
        ({"gpus": "0,x"}, "--gpus '0,x'"),
        ({"gpus": "1,1"}, "repeated"),
        ({"targets": ("docker",)}, "--target 'docker'"),
        ({"overrides": ("generation.steps=500",)}, "generation.steps"),
        ({"overrides": ("generation.nope=1",)}, "unknown key"),
        ({"overrides": ("limits.max_steps=0",)}, "limits.max_steps"),
        ({"out": Path("/tmp/" + "x" * 120)}, "107-byte limit"),
    ],
)
def test_bad_inputs_are_refused_with_one_line(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ZitopsError) as info:
        make(tmp_path, **kw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unit_reloads_log_tiers_with_sighup_to_the_main_process_only(tmp_path: Path) -> None:
    """`systemctl reload` must reach the agent alone: its workers follow it."""
    unit = unit_settings(make(tmp_path).file(f"systemd/{deploy.UNIT_NAME}").content)
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
