"""Every rendered file passes the real tool that will read it: systemd-analyze,
supervisor's own parser, bash and shellcheck, and a Kubernetes schema
validator (offline). Paths carry spaces, '%', '$' and '&' on purpose."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from supervisor.options import ServerOptions, UnhosedConfigParser

from zitops.deployment import deploy
from zitops.deployment.deploy_fleet import KEDA_QUERY
from zitops.errors import RenderError, ZitopsError

REPO = Path(__file__).resolve().parents[2]
# The oldest Kubernetes minor the manifests promise to work with (the preStop
# sleep action needs 1.29+, and older minors are out of upstream support);
# kubernetes-validate ships this schema, so validation needs no network.
K8S_VERSION = "1.31.0"
WEIRD = "50%h $(id) &x"

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("validators")
    bindir = root / f"bin {WEIRD}"
    bindir.mkdir()
    (bindir / "zitops").symlink_to(deploy.resolve_zitops_bin())
    return root


@pytest.fixture(scope="module")
def rendered(base: Path) -> deploy.Plan:
    """ecommerce, every target, written to a directory with an awkward name."""
    plan = deploy.plan(deploy.DeployRequest(
        profile="ecommerce", out=base / f"out {WEIRD}", zitops_bin=str(base / f"bin {WEIRD}" / "zitops"),
    ))
    deploy.apply(plan)
    return plan


def manifests(k8s: Path) -> list[Path]:
    """The Kubernetes manifests (kustomization.yaml is kubectl kustomize's: test_deploy_containers.py)."""
    return sorted(p for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml")


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify, run in the unit's directory."""
    return subprocess.run(["systemd-analyze", "verify", unit.name], cwd=unit.parent,
                          capture_output=True, text=True, timeout=60, check=False)


def exposure(unit: Path) -> float:
    """The overall exposure score of systemd-analyze security, offline."""
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", unit.name], cwd=unit.parent,
                          capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


@needs_systemd
def test_systemd_analyze_verify_prints_nothing(rendered: deploy.Plan) -> None:
    proc = verify(rendered.out / "systemd" / deploy.UNIT_NAME)
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", "")


@needs_systemd
@pytest.mark.parametrize("kw", [{"install": True, "gpus": "0,1"}, {"gpus": "3", "port": 8000}],
                         ids=["install", "gpu-list"])
def test_systemd_analyze_verify_other_variants(base: Path, tmp_path: Path, kw: dict[str, object]) -> None:
    plan = deploy.plan(deploy.DeployRequest(
        targets=("systemd",), out=tmp_path / "d", zitops_bin=deploy.resolve_zitops_bin(), **kw,  # type: ignore[arg-type]
    ))
    unit = tmp_path / deploy.UNIT_NAME
    unit.write_text(plan.file(f"systemd/{deploy.UNIT_NAME}").content)
    proc = verify(unit)
    assert (proc.returncode, proc.stderr) == (0, "")


@needs_systemd
def test_systemd_analyze_verify_can_fail(rendered: deploy.Plan, tmp_path: Path) -> None:
    """The check above would catch a wrong ExecStart: the escaped path must be the real one."""
    text = (rendered.out / "systemd" / deploy.UNIT_NAME).read_text().replace("%%h", "%%H")
    unit = tmp_path / deploy.UNIT_NAME
    unit.write_text(text)
    proc = verify(unit)
    assert proc.returncode != 0 and "%H" in proc.stderr


@needs_systemd
def test_systemd_exposure_score(rendered: deploy.Plan) -> None:
    """Recorded in the issue note: the installed reference unit and a --out unit."""
    reference = exposure(REPO / "systemd" / deploy.UNIT_NAME)
    local = exposure(rendered.out / "systemd" / deploy.UNIT_NAME)
    print(f"exposure: reference (installed) {reference}, --out unit {local}")
    assert reference <= 2.0 and local <= 3.0


def test_start_script_passes_bash_and_shellcheck(rendered: deploy.Plan) -> None:
    script = rendered.out / "start.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout


def test_example_client_passes_bash_and_shellcheck() -> None:
    script = REPO / "examples" / "curl.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout
    assert "/sdapi/v1/txt2img" in script.read_text()


def test_start_script_execs_exactly_the_rendered_command(base: Path, tmp_path: Path) -> None:
    """bash reads the quoted words back as the very paths, '%', '$(...)' and all."""
    fake_dir = tmp_path / f"fake {WEIRD}"
    fake_dir.mkdir()
    fake = fake_dir / "zitops"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "json.dump({'argv': sys.argv[1:], 'pid': os.getpid(), 'cache': os.environ['XDG_CACHE_HOME']},"
                    " open(os.environ['PROBE'], 'w'))\n")
    fake.chmod(0o755)
    plan = deploy.plan(deploy.DeployRequest(targets=("supervisor",), out=tmp_path / f"o {WEIRD}", zitops_bin=str(fake)))
    deploy.apply(plan)
    probe = tmp_path / "probe.json"
    proc = subprocess.Popen([str(plan.out / "start.sh")], env={**os.environ, "PROBE": str(probe)})
    assert proc.wait(timeout=30) == 0
    seen = json.loads(probe.read_text())
    assert seen["argv"] == ["agent", "--config", str(plan.out / "config.yaml")]
    assert seen["cache"] == plan.config.paths.cache_dir
    assert seen["pid"] == proc.pid  # exec: the agent keeps the script's PID


def test_supervisor_reads_the_standalone_config(rendered: deploy.Plan) -> None:
    options = ServerOptions()
    options.realize(args=["-c", str(rendered.supervisord_conf)])
    (server,) = options.server_configs
    assert server["file"] == str(rendered.out / "supervisor.sock") and server["chmod"] == 0o700
    (group,) = options.process_group_configs
    (program,) = group.process_configs
    assert shlex.split(program.command) == [str(rendered.out / "start.sh")]
    assert program.stopsignal == 15 and program.stopwaitsecs > rendered.profile.queue.drain_timeout_s
    assert program.directory == rendered.config.paths.state_dir
    assert program.stdout_logfile.startswith(rendered.config.paths.log_dir)
    assert options.logfile.startswith(str(rendered.out / "logs"))


def test_supervisor_reads_the_conf_d_program(rendered: deploy.Plan) -> None:
    parser = UnhosedConfigParser()
    parser.read(str(rendered.out / "supervisor" / "zitops.conf"))
    (program,) = ServerOptions().processes_from_section(parser, "program:zitops", "zitops")
    assert shlex.split(program.command) == [str(rendered.out / "start.sh")]
    assert parser.sections() == ["program:zitops"]


def test_kubernetes_manifests_validate_strictly_offline(
    rendered: deploy.Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*_: object) -> None:
        raise AssertionError("the validator tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    kinds = []
    for path in manifests(rendered.out / "k8s"):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "Service"]
    # The validator is not a rubber stamp: a misspelt field fails.
    bad = yaml.safe_load((rendered.out / "k8s" / "deployment.yaml").read_text())
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_wheel_ships_the_templates(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources; render from the unpacked wheel."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "zitops", "templates"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=240, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("zitops-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"zitops/_templates/{p.relative_to(REPO / 'templates').as_posix()}"
                for p in (REPO / "templates").rglob("*.j2")}
    assert expected and expected <= names
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = ("import zitops, zitops.deployment.deploy as d; from pathlib import Path; "
            f"assert Path(zitops.__file__).is_relative_to({str(unpacked)!r}), zitops.__file__; "
            "p = d.plan(d.DeployRequest(out=Path('o'), zitops_bin='/usr/bin/true')); print(len(p.files))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(unpacked)}, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "15"  # 9 of the targets, 6 of monitoring (zitops/observe/files.py)


KEDA_SCHEMA = json.loads((REPO / "tests" / "data" / "keda-v1alpha1-subset.json").read_text())


def keda_validate(doc: dict[str, object]) -> None:
    """Validate a keda.sh/v1alpha1 document against the schema kept in tests/data (see its $comment)."""
    schema = {**KEDA_SCHEMA, "$ref": f"#/definitions/{doc['kind']}"}
    jsonschema.validate(doc, schema)


def test_fleet_manifests_validate_strictly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", lambda *_: (_ for _ in ()).throw(AssertionError("network")))
    plan = deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path / "out", replicas=3,
                                            store="postgresql://zitops@db.example:5432/zitops?sslmode=disable",
                                            zitops_bin="/usr/bin/zitops"))
    deploy.apply(plan)
    kinds = []
    for path in manifests(plan.out / "k8s"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["apiVersion"].startswith("keda.sh/"):
                keda_validate(doc)
            else:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "ScaledObject", "Secret",
                             "Service", "TriggerAuthentication"]
    text = "\n".join(p.read_text() for p in (plan.out / "k8s").glob("*.yaml"))
    assert 'password: ""' in text  # a template the operator fills, never a rendered password
    deployment = yaml.safe_load((plan.out / "k8s" / "deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 3
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and container["startupProbe"]
    scaled = list(yaml.safe_load_all((plan.out / "k8s" / "keda.yaml").read_text()))[1]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["query"] == KEDA_QUERY and trigger["metadata"]["sslmode"] == "disable"
    # The schema is not a rubber stamp: a misspelt field and a wrong type fail.
    for bad in ({"pollingInterva": 5}, {"minReplicaCount": "1"}):
        with pytest.raises(jsonschema.ValidationError):
            keda_validate({**scaled, "spec": {**scaled["spec"], **bad}})
    trigger_bad = {**trigger, "metadata": {**trigger["metadata"], "querry": "x"}}
    with pytest.raises(jsonschema.ValidationError):
        keda_validate({**scaled, "spec": {**scaled["spec"], "triggers": [trigger_bad]}})


def test_store_flags_are_checked(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="--replicas 2: several pods need the shared job store"):
        deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path, replicas=2, zitops_bin="/bin/true"))
    with pytest.raises(ZitopsError, match="contains a password"):
        deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path, store="postgresql://u:pw@h:5432/d",
                                         zitops_bin="/bin/true"))
    with pytest.raises(RenderError, match="--store-password-file .*no such file"):
        deploy.plan(deploy.DeployRequest(targets=("systemd",), out=tmp_path, store="postgresql://u@h:5432/d",
                                         store_password_file=tmp_path / "nope", zitops_bin="/bin/true"))
    secret = tmp_path / "pw"
    secret.write_text("s3cret-value\n")
    plan = deploy.plan(deploy.DeployRequest(targets=("systemd",), out=tmp_path / "o", store="postgresql://u@h:5432/d",
                                            store_password_file=secret, zitops_bin="/bin/true"))
    assert plan.config.store.password_file == str(secret) and plan.config.store.url == "postgresql://u@h:5432/d"
    assert not any("s3cret-value" in f.content for f in plan.files)
