"""Weights from host memory onto a GPU through pinned staging buffers (the set-up's copies).

A copy from pageable host memory is synchronous and goes through the
driver's own small bounce buffers; weights read off disk, or parked on the
host by an offloading profile, are pageable. :class:`Stager` instead copies
each tensor into one of two pinned buffers (a CPU memcpy) and hands that
buffer to a copy stream, so the next chunk's memcpy overlaps the last
chunk's DMA. Used for the layer-by-layer fp8 quantization and for moving the
components that stay resident (:func:`module_to`). ``ZITOPS_ACCEL=-staged``
turns it off for an A/B run; off CUDA it is plain ``tensor.to(device)``.
Imports torch inside functions only (the worker's).
"""

from __future__ import annotations

from typing import Any

CHUNK_BYTES = 64 << 20
"""Each pinned staging buffer (two of them): large enough for full-speed DMA, small to pin."""


class Stager:
    """Host-to-``device`` copies through two pinned buffers and a copy stream; one per set-up."""

    def __init__(self, device: str, chunk_bytes: int = CHUNK_BYTES) -> None:
        import torch

        self.device = torch.device(device)
        self.chunk = chunk_bytes
        self._buffers = [torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self._done: list[Any] = [None, None]
        self._stream = torch.cuda.Stream(self.device)
        self._turn = 0
        self.bytes = 0

    def copy(self, tensor: Any) -> Any:
        """``tensor`` on the device (a new tensor; one already there is returned as it is)."""
        import torch

        if tensor.device.type != "cpu" or tensor.numel() == 0:
            return tensor.to(self.device)
        src = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        out = torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device)
        dst = out.reshape(-1).view(torch.uint8)
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)  # ``out`` is allocated on the current stream
        size = src.numel()
        for start in range(0, size, self.chunk):
            n = min(self.chunk, size - start)
            buf, done = self._buffers[self._turn], self._done[self._turn]
            if done is not None:
                done.synchronize()  # this buffer's last DMA has finished: it may be overwritten
            buf[:n].copy_(src[start:start + n])
            with torch.cuda.stream(self._stream):
                dst[start:start + n].copy_(buf[:n], non_blocking=True)
                done = torch.cuda.Event()
                done.record(self._stream)
            self._done[self._turn] = done
            self._turn ^= 1
        current.wait_stream(self._stream)
        self.bytes += size
        return out


def stager_for(device: str) -> Stager | None:
    """A :class:`Stager` for a CUDA ``device``; None on the CPU or with ``ZITOPS_ACCEL=-staged``."""
    from zitops.engine.precision.accel import disabled_levers

    if not device.startswith("cuda") or "staged" in disabled_levers():
        return None
    return Stager(device)


def to_device(tensor: Any, device: str, stager: Stager | None) -> Any:
    """``tensor`` on ``device``, through ``stager`` when there is one."""
    return tensor.to(device) if stager is None else stager.copy(tensor)


def module_to(module: Any, device: str, stager: Stager | None) -> Any:
    """Move ``module``'s host parameters and buffers to ``device`` (as ``module.to``, staged); returns it."""
    if stager is None:
        return module.to(device)
    for sub in module.modules():
        for param in sub._parameters.values():
            if param is not None and param.device.type == "cpu":
                param.data = stager.copy(param.data)  # the same Parameter: tied weights stay tied
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.device.type == "cpu":
                sub._buffers[name] = stager.copy(buf)
    return module
