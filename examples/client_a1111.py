"""An AUTOMATIC1111 client library (webuiapi) against a zitops agent.

    python examples/client_a1111.py [HOST] [PORT]

A1111 sampler display names work ("DPM++ 2M SDE", "Euler a", "DPM++ 2M Karras").
cfg_scale is left at the client's default 7, which zitops reads as "use the
profile's guidance" (0 for the turbo model); see docs/api.md.
"""

from __future__ import annotations

import os
import sys

import webuiapi


def main() -> None:
    """Generate a batch of two and save them."""
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 7860
    api = webuiapi.WebUIApi(host=host, port=port, sampler="DPM++ 2M SDE", steps=8)
    token = os.environ.get("ZITOPS_TOKEN")
    if token:
        api.session.headers["Authorization"] = f"Bearer {token}"
    print("samplers:", ", ".join(s["name"] for s in api.get_samplers()))
    result = api.txt2img(
        prompt="a ceramic coffee cup on a wooden table, natural lighting",
        negative_prompt="blurry",
        seed=42,
        width=1024,
        height=1024,
        batch_size=2,
    )
    for i, image in enumerate(result.images):
        name = f"a1111-{i}.png"
        image.save(name)
        print(f"wrote {name}")
    print("seeds:", result.info["all_seeds"])


if __name__ == "__main__":
    main()
