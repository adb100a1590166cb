"""The zitops image, built for real: a Debian base from mmdebstrap, a wheelhouse, podman.

Three steps, each cached on its inputs under :data:`CACHE` (CI's machine keeps it
between runs; a new machine builds it once):

- the base: ``mmdebstrap`` of Debian bookworm with python3 and python3-venv, from
  the mirror apt uses here, ``podman import``-ed; keyed on the command line;
- the dependency wheels: ``pip wheel '.[container]' cyclonedx-bom torch==2.13.0``,
  less zitops's own wheel; keyed on pyproject.toml and the Python version;
- the image: ``podman build --isolation chroot`` of the Containerfile, its build
  context a wheelhouse of those wheels plus zitops's wheel built fresh from this
  checkout (the version does not change with every commit; the wheel does).

Podman runs here with runc, cgroupfs and no default ulimits (the sandbox allows
no cgroup delegation and no raising of limits), set in a CONTAINERS_CONF file,
and with its own storage under the cache. A missing tool fails the test: .ci/run
installs podman, runc, mmdebstrap and docker-compose.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zitops import __version__

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ZITOPS_CI_CACHE", "/var/cache/zitops-ci"))
TORCH = "torch==2.13.0"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
# Documentation, manuals and translations are of no use in the image.
BASE_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
INSTALL_HINT = "apt-get install -y podman runc mmdebstrap (.ci/run does)"

CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


@dataclass
class Timings:
    """Seconds each step took in this run (0 where a cache answered)."""

    base_s: float = 0.0
    wheels_s: float = 0.0
    zitops_wheel_s: float = 0.0
    build_s: float = 0.0
    base_cached: bool = False
    wheels_cached: bool = False


def missing_tools() -> list[str]:
    """The tools these tests drive that are not on PATH."""
    return [t for t in ("podman", "runc", "mmdebstrap", "docker-compose") if shutil.which(t) is None]


def podman_env() -> dict[str, str]:
    """The environment podman runs with here: runc, cgroupfs, no ulimits, storage under the cache."""
    conf_dir = CACHE / "podman"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "containers.conf"
    storage = conf_dir / "storage.conf"
    conf.write_text(CONTAINERS_CONF)
    storage.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{CACHE}/containers/storage"\n'
                       'runroot = "/run/zitops-ci/containers"\n')
    return {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run podman with :func:`podman_env`; raise with its stderr when it fails and ``check``."""
    done = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources), the one reachable here."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or not path.name.endswith((".list", ".sources")):
            continue
        for line in path.read_text(errors="replace").splitlines():
            found = re.match(r"\s*(?:URIs:|deb\s+(?:\[[^]]*\]\s+)?)\s*(\S+)", line)
            if found and found.group(1).rstrip("/").endswith("/debian"):
                return found.group(1)
    return "http://deb.debian.org/debian"


def _key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder of a cached thing at a time, across processes."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_image(timings: Timings) -> str:
    """The Debian base, made once per command line and imported into podman's storage."""
    mirror = debian_mirror()
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
           *(f"--dpkgopt=path-exclude={p}" for p in BASE_EXCLUDES), SUITE]
    key = _key(*cmd, mirror)
    tag = f"localhost/zitops-ci-base:{key}"
    with _locked("base"):
        if podman("image", "exists", tag, check=False).returncode == 0:
            timings.base_cached = True
            return tag
        start = time.monotonic()
        tarball = CACHE / f"base-{key}.tar"
        if not tarball.is_file():
            partial = tarball.with_name(tarball.name + ".part")
            done = subprocess.run([*cmd, "--format=tar", str(partial), mirror], capture_output=True, text=True,
                                  timeout=1200, check=False)
            if done.returncode != 0:
                raise AssertionError(f"mmdebstrap failed:\n{done.stderr[-3000:]}")
            partial.replace(tarball)
        podman("import", str(tarball), tag)
        timings.base_s = time.monotonic() - start
    return tag


def dependency_wheels(timings: Timings) -> Path:
    """Every wheel the image installs but zitops's own, once per pyproject.toml and Python."""
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    key = _key(pyproject, TORCH, "cyclonedx-bom", sys.version.split()[0])
    target = CACHE / f"wheels-{key}"
    with _locked("wheels"):
        if (target / ".complete").is_file():
            timings.wheels_cached = True
            return target
        start = time.monotonic()
        partial = Path(tempfile.mkdtemp(prefix="wheels-", dir=CACHE))
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
             f"{ROOT}[container]", "cyclonedx-bom>=7,<8", TORCH, "-w", str(partial)],
            capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise AssertionError(f"pip wheel failed:\n{done.stderr[-3000:]}")
        for own in partial.glob("zitops-*.whl"):
            own.unlink()
        (partial / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        partial.replace(target)
        timings.wheels_s = time.monotonic() - start
    return target


def wheelhouse(context: Path, timings: Timings) -> Path:
    """A build context: wheels/ holding the cached dependency wheels and a fresh zitops wheel."""
    wheels = context / "wheels"
    wheels.mkdir(parents=True)
    for wheel in dependency_wheels(timings).glob("*.whl"):
        try:
            os.link(wheel, wheels / wheel.name)
        except OSError:
            shutil.copy2(wheel, wheels / wheel.name)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(wheels)], check=True, capture_output=True, timeout=600)
    timings.zitops_wheel_s = time.monotonic() - start
    return context


def revision() -> str:
    """This checkout's commit, with +dirty when the tree has uncommitted changes."""
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=False).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"{rev}+dirty" if dirty else rev


@dataclass(frozen=True)
class BuiltImage:
    """The image under test and what went into it."""

    tag: str
    base: str
    version: str
    revision: str
    source: str
    size_bytes: int
    timings: Timings


def build_image(workdir: Path) -> BuiltImage:
    """Base, wheelhouse, ``podman build``: the image of this checkout, built offline from wheels."""
    timings = Timings()
    base = base_image(timings)
    context = wheelhouse(workdir / "context", timings)
    rev = revision()
    tag = f"localhost/zitops-ci:{_key(rev, str(time.time_ns()))}"
    source = f"file://{ROOT}"
    start = time.monotonic()
    # --layers=false: nothing of a build is reused (the fresh zitops wheel changes the context
    # every commit), so committing each step would only cost time. docker format: OCI images
    # have no HEALTHCHECK.
    podman("build", "--isolation", "chroot", "--format", "docker", "--layers=false",
           "--build-arg", f"BASE={base}", "--build-arg", f"VERSION={__version__}",
           "--build-arg", f"REVISION={rev}", "--build-arg", f"SOURCE={source}",
           "-t", tag, "-f", str(ROOT / "Containerfile"), str(context), timeout=1800)
    timings.build_s = time.monotonic() - start
    inspect = json.loads(podman("image", "inspect", tag).stdout)[0]
    return BuiltImage(tag, base, __version__, rev, source, int(inspect["Size"]), timings)


def remove_image(tag: str) -> None:
    """Remove the image and prune the dangling build layers (cached base and wheels stay)."""
    podman("rmi", "-f", tag, check=False)
    podman("image", "prune", "-f", check=False)
