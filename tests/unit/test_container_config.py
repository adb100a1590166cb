"""The image's default command chooses its config (zitops.deployment.container), and doctor reads
the build's record (zitops.preflight.image). The image itself: tests/e2e/test_image.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zitops.config import load_config
from zitops.deployment import container
from zitops.deployment.deploy_types import FHS_PATHS
from zitops.errors import ConfigError
from zitops.preflight.image import image_info


def test_demo_config_serves_tiny_designer_on_every_address_of_the_container(tmp_path: Path) -> None:
    config = container.demo_config(7861, None)
    assert (config.model, config.profile.name, config.host, config.port) == ("tiny", "designer", "0.0.0.0", 7861)
    assert config.profile.queue.job_timeout_s == container.DEMO_JOB_TIMEOUT_S
    # Everything it writes lies on the image's volumes.
    assert config.paths.model_dump(exclude_none=True) == FHS_PATHS
    assert config.auth.behind_proxy and config.auth.tokens_file is None
    with_tokens = container.demo_config(7860, Path("/etc/zitops/tokens"))
    assert with_tokens.auth.tokens_file == "/etc/zitops/tokens" and not with_tokens.auth.behind_proxy
    written = container.write_config(config, tmp_path / "state" / "container-config.yaml")
    assert load_config(written) == config


def test_image_record(tmp_path: Path) -> None:
    assert image_info(tmp_path / "none.json") is None
    record = tmp_path / "image.json"
    record.write_text(json.dumps({"version": "0.1.0", "revision": "abc", "base": "b"}))
    assert image_info(record) == {"version": "0.1.0", "revision": "abc", "source": "unknown", "created": "unknown",
                                  "base": "b", "sbom": "unknown"}
    record.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        image_info(record)
    record.write_text("{")
    with pytest.raises(ConfigError, match="unreadable"):
        image_info(record)
