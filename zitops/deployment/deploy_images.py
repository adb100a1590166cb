"""``zitops deploy --images s3://BUCKET[/PREFIX]``: the config's ``images`` section, on a host and in a pod.

The credentials are never rendered: on a host the config names the AWS
shared-credentials file (``--s3-credentials-file``, checked like the tokens
file); in a pod the file comes from the ``zitops-s3`` Secret, which the
operator creates (``kubectl create secret generic zitops-s3
--from-file=credentials=FILE``). docs/deploy.md explains it.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from zitops.deployment.deploy_types import DeployRequest
from zitops.errors import RenderError
from zitops.render import check_value

S3_SECRET = "zitops-s3"
S3_DIR = "/etc/zitops/s3"  # the Secret's mount: file "credentials"


def image_settings(req: DeployRequest) -> dict[str, Any]:
    """The config's ``images`` section for a host, or {} when images stay on the host."""
    if req.images is None:
        if req.s3_endpoint is not None or req.s3_credentials_file is not None:
            raise RenderError("--s3-endpoint and --s3-credentials-file only apply with --images s3://BUCKET[/PREFIX]")
        return {}
    settings: dict[str, Any] = {"url": check_value(req.images, "--images")}
    if req.s3_endpoint is not None:
        settings["s3_endpoint"] = check_value(req.s3_endpoint, "--s3-endpoint")
    if req.s3_credentials_file is not None:
        path = Path(check_value(str(req.s3_credentials_file), "--s3-credentials-file")).expanduser().absolute()
        try:
            mode = path.stat().st_mode
        except OSError:
            raise RenderError(f"--s3-credentials-file {path}: no such file (an AWS shared-credentials file: "
                              "[default], aws_access_key_id, aws_secret_access_key)") from None
        if not stat.S_ISREG(mode) or mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
            raise RenderError(f"--s3-credentials-file {path}: must be a regular file others cannot read "
                              f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}")
        settings["s3_credentials_file"] = str(path)
    return settings


def k8s_images(images: dict[str, Any]) -> dict[str, Any]:
    """The in-pod ``images`` section: the credentials from the Secret's file."""
    if not images.get("url"):
        return images
    return {**images, "s3_credentials_file": f"{S3_DIR}/credentials"}


def s3_context(images: dict[str, Any]) -> dict[str, Any] | None:
    """The deployment template's Secret mount for the credentials (None without an object store)."""
    return {"secret": S3_SECRET, "dir": S3_DIR} if images.get("url") else None
