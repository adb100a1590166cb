"""Keep the Hugging Face libraries offline and quiet: no hub contact, no progress bars.

Torch-free: call :func:`force_offline` before diffusers or transformers is
imported (the worker, a standby spare and the CLI's model commands all do).
"""

from __future__ import annotations

import os

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DIFFUSERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}


def force_offline() -> None:
    """Set the Hugging Face offline switches; call before importing diffusers/transformers."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    # Loading bars would garble worker logs and the CLI's own progress bar.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def quiet_libraries() -> None:
    """Turn off diffusers' and transformers' tqdm bars (they are imported by now)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
