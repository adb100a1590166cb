"""The record the image's build baked in: which zitops, which commit, which base, where the SBOM is.

The Containerfile installs zitops into the venv ``/opt/zitops`` and writes
``<venv>/share/zitops/image.json`` (version, revision, source, created, base,
the SBOM's path) beside the CycloneDX SBOM. Outside an image there is no such file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from zitops.errors import ConfigError

IMAGE_INFO = Path(sys.prefix) / "share" / "zitops" / "image.json"
"""Written by the Containerfile's build stage; absent outside an image."""

IMAGE_KEYS = ("version", "revision", "source", "created", "base", "sbom")


def image_info(path: Path = IMAGE_INFO) -> dict[str, str] | None:
    """The build's record of this image, or None outside an image (no such file)."""
    try:
        data: Any = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: the image's record is unreadable ({exc.__class__.__name__}); "
                          "rebuild the image") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the image's record is not a JSON object; rebuild the image")
    return {key: str(data.get(key, "unknown")) for key in IMAGE_KEYS}
