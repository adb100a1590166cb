"""``zitops profiles`` and ``zitops profiles show``, through the real entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.cli_support import run_cli as run
from zitops.profile import BUILTIN_PROFILES, Profile, load_profile

REPO = Path(__file__).resolve().parents[2]


def test_list_shows_each_builtin_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "profiles")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(BUILTIN_PROFILES)
    for name, line in zip(BUILTIN_PROFILES, lines, strict=True):
        assert line.split(None, 1)[1] == load_profile(name).summary


@pytest.mark.parametrize("name", BUILTIN_PROFILES)
def test_show_prints_the_resolved_profile_as_yaml(capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, out, _ = run(capsys, "profiles", "show", name)
    assert code == 0
    assert Profile.model_validate(yaml.safe_load(out)) == load_profile(name)


def test_show_applies_set_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    negative = '50% "off" $(x) style: flat # not a comment'
    code, out, _ = run(capsys, "profiles", "show", "designer", "--set", "generation.steps=4",
                       "--set", f"generation.negative_prompt={negative}", "--set", "engine.compile=false")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["generation"]["steps"] == 4 and shown["engine"]["compile"] is False
    # Text is kept as typed: YAML would have cut it at " #" or made it a mapping.
    assert shown["generation"]["negative_prompt"] == negative


def test_example_user_profile_extends_a_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    example = REPO / "examples" / "my-profile.yaml"
    code, out, _ = run(capsys, "profiles", "show", str(example))
    assert code == 0
    shown = Profile.model_validate(yaml.safe_load(out))
    base = load_profile("ecommerce")
    assert shown.name == "shop-square" and shown.generation.width == 768
    assert shown.generation.sampler == base.generation.sampler
    assert shown.logging.levels["zitops"] == "DEBUG"
    assert shown.logging.levels["diffusers"] == base.logging.levels["diffusers"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("profiles", "show", "nope"), "unknown profile 'nope'"),
        (("profiles", "show", "designer", "--set", "generation.steps=999"), "generation.steps"),
        (("profiles", "show", "designer", "--set", "generation.steps"), "expected KEY=VALUE"),
        (("profiles", "show", "designer", "--set", "engine.bogus=1"), "engine.bogus: unknown key"),
    ],
)
def test_bad_input_is_one_line_without_traceback(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], expected: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code != 0 and out == ""
    assert len(err.splitlines()) == 1 and expected in err
    assert "Traceback" not in err


def test_bad_profile_file_names_file_and_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: designer\ndescription: mine\ngeneration:\n  width: 1000\n")
    code, _, err = run(capsys, "profiles", "show", str(bad))
    assert code != 0 and len(err.splitlines()) == 1
    assert str(bad) in err and "generation.width" in err and "multiple of 16" in err
