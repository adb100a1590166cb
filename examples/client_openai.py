"""The official openai client against a zitops agent, unchanged but for base_url.

    python examples/client_openai.py [BASE_URL]

With no tokens configured the agent ignores the api_key; otherwise put one of
its tokens in ZITOPS_TOKEN. ``seed`` is a zitops extra, sent through extra_body.
"""

from __future__ import annotations

import base64
import os
import sys

from openai import OpenAI


def main() -> None:
    """Generate two images and write them as PNG files."""
    base = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ZITOPS_URL", "http://127.0.0.1:7860")
    client = OpenAI(base_url=f"{base.rstrip('/')}/v1", api_key=os.environ.get("ZITOPS_TOKEN", "placeholder"))
    result = client.images.generate(
        prompt="a ceramic coffee cup on a wooden table, natural lighting",
        n=2,
        size="1024x1024",
        response_format="b64_json",
        extra_body={"seed": 42},
    )
    for i, image in enumerate(result.data):
        name = f"openai-{i}.png"
        with open(name, "wb") as f:
            f.write(base64.b64decode(image.b64_json or ""))
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
