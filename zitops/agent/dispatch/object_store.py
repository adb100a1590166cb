"""Succeeded jobs' images in an S3-compatible bucket, through boto3.

boto3 because it is AWS's own maintained client, speaks SigV4 to every
S3-compatible server (SeaweedFS, MinIO, Ceph RGW, R2), presigns URLs
without a round trip and reads the AWS shared-credentials file format
operators already have. Objects are ``PREFIX/<job id>/a<attempt>/<file
name>``: the attempt that wrote them, so an agent whose lease moved on (a
stale attempt) can never overwrite the objects of the run that won; readers
take the attempt of the succeeded record, and retention deletes everything
under ``PREFIX/<job id>/`` (a stale attempt's orphans too).

:class:`ObjectStore` owns the client and the store's state (up, or down and
why). Every call blocks: callers run them off the event loop (the result
writer's encode pool, ``asyncio.to_thread``). A failed call marks the store
down; the probe round (``head_bucket``) marks it up again.
"""

from __future__ import annotations

import configparser
import threading
import time
from typing import Any

from zitops.errors import ConfigError, ZitopsError
from zitops.results_settings import ImageSettings
from zitops.secret_files import read_secret_file

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
CONNECT_S = 3.0
READ_S = 15.0


class ObjectStoreDown(ZitopsError):
    """The object store refused or did not answer; the images stay on this host until it is back."""

    http_status = 503


def read_credentials(path: str, profile: str) -> tuple[str, str]:
    """(access key id, secret key) of ``profile`` in an AWS shared-credentials file; ConfigError otherwise."""
    setting = "images.s3_credentials_file"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_secret_file(path, setting))
    except configparser.Error:
        raise ConfigError(f"{setting}: {path} is not an AWS shared-credentials file "
                          "([default] with aws_access_key_id and aws_secret_access_key)") from None
    if not parser.has_section(profile):
        raise ConfigError(f"{setting}: {path} has no [{profile}] section (images.s3_profile)")
    section = parser[profile]
    key, secret = section.get("aws_access_key_id", "").strip(), section.get("aws_secret_access_key", "").strip()
    if not key or not secret:
        raise ConfigError(f"{setting}: [{profile}] in {path} needs aws_access_key_id and aws_secret_access_key")
    return key, secret


class ObjectStore:
    """One bucket and prefix, and whether it answers (see the module docstring)."""

    def __init__(self, settings: ImageSettings) -> None:
        import boto3
        from botocore.config import Config

        self.settings = settings
        self.bucket, self.prefix = settings.bucket, settings.prefix
        key, secret = (read_credentials(settings.s3_credentials_file, settings.s3_profile)
                       if settings.s3_credentials_file else (None, None))
        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
            aws_access_key_id=key, aws_secret_access_key=secret,
            config=Config(connect_timeout=CONNECT_S, read_timeout=READ_S, retries={"max_attempts": 2},
                          s3={"addressing_style": "path"}, signature_version="s3v4"))
        self._lock = threading.Lock()
        self._down: str | None = "not checked yet"
        self.checked_at: float | None = None

    # --- state -----------------------------------------------------------------

    @property
    def down(self) -> str | None:
        """Why the store is down, or None while it answers."""
        return self._down

    def _failed(self, action: str, exc: Exception) -> ObjectStoreDown:
        reason = f"object store s3://{self.bucket}/{self.prefix}: {action} failed: {type(exc).__name__}: {exc}"[:400]
        with self._lock:
            self._down = reason
        return ObjectStoreDown(reason)

    def probe(self) -> bool:
        """Ask the bucket (``head_bucket``); True and up when it answers, else down with the reason."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            self._failed("head_bucket", exc)
            return False
        finally:
            self.checked_at = time.time()
        with self._lock:
            self._down = None
        return True

    def state(self) -> dict[str, Any]:
        """For /status and the console."""
        return {"url": self.settings.url, "endpoint": self.settings.s3_endpoint, "up": self._down is None,
                "reason": self._down, "checked_at": self.checked_at, "url_ttl_s": self.settings.url_ttl_s}

    # --- objects ---------------------------------------------------------------

    def key(self, job_id: str, attempt: int, name: str) -> str:
        """The object key of an image file that attempt ``attempt`` of a job wrote."""
        return "/".join(p for p in (self.prefix, job_id, f"a{attempt}", name) if p)

    def put(self, job_id: str, attempt: int, names: tuple[str, ...], blobs: tuple[bytes, ...]) -> None:
        """Write the images of one attempt of a job (all of them, or ObjectStoreDown)."""
        for name, blob in zip(names, blobs, strict=True):
            kind = CONTENT_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")
            try:
                self._client.put_object(Bucket=self.bucket, Key=self.key(job_id, attempt, name), Body=blob,
                                        ContentType=kind)
            except Exception as exc:
                raise self._failed("put_object", exc) from exc

    def get(self, job_id: str, attempt: int, name: str) -> bytes:
        """One image's bytes, or ObjectStoreDown."""
        try:
            body: bytes = self._client.get_object(Bucket=self.bucket,
                                                  Key=self.key(job_id, attempt, name))["Body"].read()
        except Exception as exc:
            raise self._failed("get_object", exc) from exc
        return body

    def presign(self, job_id: str, attempt: int, name: str) -> str:
        """A GET URL of one image, valid for images.url_ttl_s (signed locally: no round trip)."""
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(job_id, attempt, name)},
            ExpiresIn=self.settings.url_ttl_s)
        return url

    def delete_job(self, job_id: str) -> None:
        """Remove every object under the job's prefix, every attempt's (retention); ObjectStoreDown on refusal."""
        prefix = "/".join(p for p in (self.prefix, job_id) if p) + "/"
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        except Exception as exc:
            raise self._failed("delete_objects", exc) from exc
