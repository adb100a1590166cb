"""``zitops deploy``, writing: refuse user-edited files, write atomically, manifest last.

Files are written atomically (temp file, fsync, rename) and listed with their
SHA-256 in ``manifest.json``; a re-run compares against it to report what
changed and to refuse to overwrite a file the user has edited, unless ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import Any

from zitops import __version__
from zitops.deployment.deploy_types import (
    FHS,
    MANIFEST,
    SERVICE_USER,
    UNIT_NAME,
    Change,
    Plan,
    RenderedFile,
    Result,
    under_home,
)
from zitops.errors import RenderError

MONITORING_STEP = ("monitoring (prometheus-operator, Grafana sidecar): kubectl apply -k {} "
                   "(docs/observability.md)")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RenderError(f"{path}: cannot read: {exc.strerror}") from None


def _load_manifest(out: Path) -> dict[str, Any]:
    raw = _read(out / MANIFEST)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _staged(root: Path, final: str) -> Path:
    return root / PurePosixPath(final).relative_to("/")


def _destinations(p: Plan) -> list[tuple[str, Path, RenderedFile, str]]:
    """(manifest section, path on disk, file, manifest key) for every write."""
    dests = [("files", p.out / f.path, f, f.path) for f in p.files]
    if p.request.install:
        root = Path(os.path.abspath(p.request.root))
        for f in p.files:
            if f.install_to:
                target = _staged(root, f.install_to)
                dests.append(("installed", target, f, str(target)))
    return dests


def _writable(path: Path) -> bool:
    """Whether an atomic replace of ``path`` can work: its nearest existing
    directory must be writable (the rename needs the directory, not the file)."""
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def apply(p: Plan) -> Result:
    """Write the plan: refuse user-edited files first, then write atomically, manifest last."""
    old = _load_manifest(p.out)
    result = Result()
    conflicts: list[str] = []
    writes: list[tuple[Path, RenderedFile, str, str]] = []
    manifest: dict[str, Any] = {
        "generator": f"zitops {__version__}",
        "profile": p.profile.name,
        "targets": list(p.request.targets),
        "files": {},
    }
    if p.request.install:
        manifest["installed"] = {}
    for section, path, f, key in _destinations(p):
        manifest[section][key] = {"sha256": f.sha256, "mode": f"{f.mode:04o}"}
        current = _read(path)
        shown = key if section == "installed" else f.path
        if current is None:
            writes.append((path, f, "created", shown))
        elif current == f.data:
            result.changes.append(Change("unchanged", shown))
        else:
            recorded = old.get(section, {}).get(key, {}).get("sha256")
            if recorded == _sha(current):
                writes.append((path, f, "changed", shown))
            elif p.request.force:
                writes.append((path, f, "overwritten", shown))
            else:
                conflicts.append(shown)
    if conflicts:
        raise RenderError(
            f"refusing to overwrite {len(conflicts)} file(s) changed since the last deploy: "
            f"{', '.join(conflicts)}; keep your edits elsewhere, or re-run with --force to overwrite"
        )
    for path, *_ in writes:
        if not _writable(path):
            hint = " (run as root, or stage with --root DIR)" if p.request.install else ""
            raise RenderError(f"cannot write {path}: permission denied{hint}")
    try:
        p.out.mkdir(parents=True, exist_ok=True)
        for d in p.runtime_dirs:
            d.mkdir(parents=True, exist_ok=True)
        for path, f, action, shown in writes:
            _write_atomic(path, f.data, f.mode)
            result.changes.append(Change(action, shown))
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        if _read(p.out / MANIFEST) != text.encode():
            _write_atomic(p.out / MANIFEST, text.encode(), 0o644)
    except OSError as exc:
        raise RenderError(f"cannot write {exc.filename or p.out}: {exc.strerror}") from None
    for key in sorted(set(old.get("files", {})) - set(manifest["files"])):
        if (p.out / key).exists():
            result.changes.append(Change("stale", key))
    result.changes.sort(key=lambda c: c.path)
    result.next_steps = next_steps(p)
    return result


def next_steps(p: Plan) -> list[str]:
    """The exact commands to run after this deploy."""
    q = shlex.quote
    targets = p.request.targets
    steps: list[str] = []
    if not p.request.install:
        if "supervisor" in targets:
            conf = q(str(p.supervisord_conf))
            steps.append(f"start:  supervisord -c {conf}   (or re-run deploy with --start)")
            steps.append(f"stop:   supervisorctl -c {conf} shutdown")
        if "systemd" in targets:
            steps.append("systemd: re-run as root with --install to place the unit and config")
        if "k8s" in targets:
            if p.config.store.shared:
                secret = q(str(p.out / 'k8s' / 'store-secret.yaml'))
                steps.append(f"kubernetes: fill the store password in {secret}, then kubectl apply -f {secret}")
            steps.append("kubernetes: kubectl create secret generic zitops-tokens --from-file=tokens=TOKENS_FILE "
                         f"&& kubectl apply -k {q(str(p.out / 'k8s'))}")
            steps.append(MONITORING_STEP.format(q(str(p.out / "k8s" / "monitoring"))))
        if "compose" in targets:
            steps.append(f"compose: create secrets/tokens and secrets/store-password in {q(str(p.out / 'compose'))} "
                         "(its compose.yaml says how), then docker compose up -d there")
        return steps
    root = Path(os.path.abspath(p.request.root))
    if root != Path("/"):
        steps.append(f"staged under {q(str(root))}: copy its tree onto / of the target host, then:")
    if "systemd" in targets or "supervisor" in targets:
        steps.append(
            f"once: id -u {SERVICE_USER} >/dev/null 2>&1 || useradd --system --home-dir {FHS['state_dir']} "
            f"--shell /usr/sbin/nologin {SERVICE_USER}"
        )
        if under_home(p.zitops_bin):
            steps.append(
                f"warning: {p.zitops_bin} is under a home directory the {SERVICE_USER} user cannot "
                "read; install zitops system-wide (e.g. a venv in /opt/zitops) and re-run deploy from it"
            )
    if "systemd" in targets:
        steps.append(f"systemd: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}")
    if "supervisor" in targets:
        dirs = " ".join(q(d) for d in (FHS["state_dir"], FHS["log_dir"], FHS["cache_dir"]))
        steps.append(f"supervisor (once): install -d -o {SERVICE_USER} -g {SERVICE_USER} -m 0750 {dirs}")
        steps.append("supervisor: supervisorctl reread && supervisorctl update")
    if "k8s" in targets:
        steps.append("kubernetes: kubectl create secret generic zitops-tokens --from-file=tokens=TOKENS_FILE")
        steps.append(f"kubernetes: kubectl apply -k {q(str(p.out / 'k8s'))}")
        steps.append(MONITORING_STEP.format(q(str(p.out / "k8s" / "monitoring"))))
    return steps

