"""Run the zitops CLI in-process, through the real entry point, as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

from zitops.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``zitops ARGV``; return (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def fake_weights(root: Path) -> Path:
    """A directory that passes ``zitops model check`` file by file (the files hold no real weights)."""
    import json

    components = {"scheduler": "FlowMatchEulerDiscreteScheduler", "text_encoder": "Qwen3Model",
                  "tokenizer": "Qwen2Tokenizer", "transformer": "ZImageTransformer2DModel", "vae": "AutoencoderKL"}
    root.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "ZImagePipeline", **{k: ["diffusers", v] for k, v in components.items()}}
    (root / "model_index.json").write_text(json.dumps(index))
    for comp in components:
        (root / comp).mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    for comp, weights in (("text_encoder", "model.safetensors"), ("transformer", "diffusion_pytorch_model.safetensors"),
                          ("vae", "diffusion_pytorch_model.safetensors")):
        (root / comp / "config.json").write_text("{}")
        (root / comp / weights).write_bytes((2).to_bytes(8, "little") + b"{}" + b" " * 6)  # a valid empty header
    return root
