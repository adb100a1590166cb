"""The compile bundle's key and file: a bundle for another key is found, named and never loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from zitops.engine.precision import compile_bundle as cb


def _parts(**over: object) -> dict[str, object]:
    parts = cb.key_parts(engine={"precision": "bf16", "compile": True, "warmup": "auto"},
                         shapes=[(1, 1024, 1024), (1, 1152, 960)], model="full-random", device="cuda sm_90")
    parts.update(over)
    return parts


def test_the_key_leaves_out_the_warmup_switch_and_keeps_the_rest() -> None:
    parts = _parts()
    assert set(parts) == {"torch", "diffusers", "triton", "python", "device", "engine", "shapes", "model"}
    assert "warmup" not in parts["engine"]  # type: ignore[operator]
    assert cb.digest(parts) == cb.digest(_parts()) != cb.digest(_parts(device="cuda sm_89"))


def test_a_written_bundle_reads_back(tmp_path: Path) -> None:
    path = cb.bundle_path(tmp_path, _parts())
    cb.write_bundle(path, _parts(), b"\x00blob\nwith newlines")
    assert cb.read_bundle(path) == (_parts(), b"\x00blob\nwith newlines")
    assert cb.find(tmp_path, _parts()).path == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_bundle_for_another_gpu_and_torch_names_both(tmp_path: Path) -> None:
    cb.write_bundle(tmp_path / "x.zcc", _parts(device="cuda sm_80", torch="2.11.0"), b"blob")
    lookup = cb.find(tmp_path, _parts(torch="2.13.0"))
    assert lookup.path is None
    assert "device: bundle 'cuda sm_80', here 'cuda sm_90'" in lookup.message
    assert "torch: bundle '2.11.0', here '2.13.0'" in lookup.message
    checked = cb.check(tmp_path / "x.zcc", _parts(torch="2.13.0"))
    assert checked.path is None and checked.message.endswith(": compiling")


def test_an_engine_knob_is_named_one_by_one(tmp_path: Path) -> None:
    theirs = _parts(engine={"precision": "bf16", "fp8": False})
    assert cb.differences(theirs, _parts(engine={"precision": "bf16", "fp8": True})) == [
        "engine.fp8: bundle False, here True"]


@pytest.mark.parametrize("content", [b"", b"not a bundle", cb.MAGIC + b"{broken\n"])
def test_a_file_that_is_not_a_bundle_compiles_with_a_message(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.zcc"
    path.write_bytes(content)
    report = cb.load(cb.check(path, _parts()))
    assert report["status"] == "compile" and str(path) in report["message"]


def test_an_empty_directory_says_where_warm_writes(tmp_path: Path) -> None:
    report = cb.load(cb.find(tmp_path / "none", _parts()))
    assert report == {"status": "compile", "message": f"no compile bundle in {tmp_path / 'none'}: compiling "
                                                      "(`zitops warm` writes one there)"}
