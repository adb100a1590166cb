"""Secret files (webhook signing secret, object-store credentials): read with the tokens file's checks.

A secret lives in a file of its own, never in config.yaml, a unit or a
command line. The file must be a regular file that others cannot read or
write, that its group cannot write, owned by the agent's user or root (as
Kubernetes mounts Secrets). Messages name the setting and never the secret.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from zitops.errors import ConfigError


def read_secret_file(name: str | Path, setting: str) -> str:
    """The text of secret file ``name``; ConfigError naming ``setting`` when it is unsafe or unusable."""
    path = Path(name)
    try:
        info = path.stat()
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{setting}: cannot read {path}: {reason}") from None
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{setting}: {path} is not a regular file")
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"{setting}: {path} is readable or writable by other users "
                          f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}")
    if mode & stat.S_IWGRP:
        raise ConfigError(f"{setting}: {path} is writable by its group (mode {stat.S_IMODE(mode):o}); "
                          f"run: chmod 600 {path} (or 640 to let a group read it)")
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(f"{setting}: {path} is owned by uid {info.st_uid}, not by the agent's user "
                          f"(uid {os.geteuid()}) or root; run: chown {os.geteuid()} {path}")
    return text
