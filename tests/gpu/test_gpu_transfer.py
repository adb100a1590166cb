"""The set-up's host-to-GPU copies through pinned staging buffers give the same bytes as ``tensor.to``.

Speed is the bench's (``benchmarks/device.sh h2d``), not asserted here.
"""

from __future__ import annotations

import pytest

from tests.gpu_support import DEVICE
from zitops.engine.precision.transfer import Stager, module_to

pytestmark = [pytest.mark.gpu]
torch = pytest.importorskip("torch")


def test_staged_copies_are_exact_across_chunks_dtypes_and_shapes() -> None:
    stager = Stager(DEVICE, chunk_bytes=1 << 16)  # small chunks: tensors span several, both buffers turn
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(300, 257, generator=gen).to(torch.bfloat16), torch.randn(70000, generator=gen),
               torch.randint(0, 255, (3, 5, 7), dtype=torch.uint8, generator=gen), torch.tensor(3.5),
               torch.randn(64, 48, generator=gen).t(), torch.empty(0)]
    for t in tensors:
        out = stager.copy(t)
        assert out.device.type == "cuda" and out.dtype == t.dtype and out.shape == t.shape
        assert torch.equal(out.cpu(), t)
    assert stager.bytes == sum(t.numel() * t.element_size() for t in tensors[:-1])


def test_module_to_keeps_tied_weights_tied_and_moves_buffers() -> None:
    lin = torch.nn.Linear(32, 32)
    model = torch.nn.Sequential(lin, torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 32))
    model[2].weight = lin.weight  # tied
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    module_to(model, DEVICE, Stager(DEVICE))
    assert model[2].weight is model[0].weight and model[0].weight.device.type == "cuda"
    assert all(torch.equal(v.cpu(), expected[k]) for k, v in model.state_dict().items())
    assert model[1].running_mean.device.type == "cuda"
