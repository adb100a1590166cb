"""The per-format quoting filters: each value reads back unchanged through the
format's own parser, or is refused with a RenderError that names the field."""

from __future__ import annotations

import shlex

import pytest
import yaml
from supervisor.options import UnhosedConfigParser

from zitops import render
from zitops.errors import RenderError

TRICKY = [
    "plain",
    "with space",
    "50% off %(here)s %h",
    "quote ' and \" both",
    "$(reboot) `id` ${HOME} $HOME",
    "semi;colon & pipe | and > redirect",
    "back\\slash",
    "yes",
    "null",
    "1e3",
    "- dash",
    "key: value",
    "#hash",
    "{brace}",
    "中文 海报 '新年快乐'",
    "emoji 🎨",
]
BAD = [
    ("line\nbreak", "a newline"),
    ("nul\x00byte", "a NUL"),
    ("carriage\rreturn", "a carriage return"),
    ("bidi\u202eoverride", "U+202E"),
    ("tab\there", "U+0009"),
    ("lone \ud800 surrogate", "U+D800"),
]
ALL_FILTERS = sorted(render.FILTERS)


@pytest.mark.parametrize("value", TRICKY)
def test_shell_word_reads_back_through_shlex(value: str) -> None:
    assert shlex.split(f"exec {render.shell(value, 'f')} tail") == ["exec", value, "tail"]


@pytest.mark.parametrize("value", [v for v in TRICKY if v == v.strip()])
def test_ini_value_reads_back_through_supervisors_parser(value: str) -> None:
    if render._INI_COMMENT.search(value):
        pytest.skip("refused, see test_ini_refuses_what_the_parser_would_eat")
    parser = UnhosedConfigParser()
    parser.read_string(f"[program:x]\ncommand={render.ini(value, 'command')}\n")
    # saneget applies supervisor's %-expansion, as it does for every value.
    assert parser.saneget("program:x", "command", expansions={"here": "/x"}) == value


@pytest.mark.parametrize("value", ["a ;comment", "a #comment", " leading", "trailing "])
def test_ini_refuses_what_the_parser_would_eat(value: str) -> None:
    with pytest.raises(RenderError, match="^stdout_logfile: "):
        render.ini(value, "stdout_logfile")


@pytest.mark.parametrize("value", TRICKY)
def test_yaml_scalar_reads_back(value: str) -> None:
    assert yaml.safe_load(f"key: {render.yaml_scalar(value, 'key')}\n") == {"key": value}


@pytest.mark.parametrize("value", [0, 7860, 1.5, True, None])
def test_yaml_scalar_keeps_non_strings_typed(value: object) -> None:
    assert yaml.safe_load(render.yaml_scalar(value, "n")) == value


def test_systemd_arg_escapes_specifiers_variables_quotes_and_backslashes() -> None:
    assert render.systemd_arg('/a b/50%/$HOME/"q"/back\\', "f") == '"/a b/50%%/$$HOME/\\"q\\"/back\\\\"'


def test_systemd_exe_doubles_percent_and_refuses_what_systemd_refuses() -> None:
    assert render.systemd_exe("/opt/z ops/50%/zitops", "exe") == '"/opt/z ops/50%%/zitops"'
    for bad in ("/a'b/zitops", '/a"b/zitops', "/a\\b/zitops"):
        with pytest.raises(RenderError, match="^exe: .*systemd does not allow"):
            render.systemd_exe(bad, "exe")
    with pytest.raises(RenderError, match="absolute"):
        render.systemd_exe("zitops", "exe")


def test_systemd_env_quotes_one_assignment() -> None:
    assert render.systemd_env("/c a/50%", "HF_HOME") == '"HF_HOME=/c a/50%%"'
    with pytest.raises(RenderError):
        render.systemd_env("/x", "BAD NAME")


@pytest.mark.parametrize("name", ALL_FILTERS)
@pytest.mark.parametrize(("value", "what"), BAD)
def test_every_filter_refuses_unrepresentable_characters_naming_the_field(
    name: str, value: str, what: str
) -> None:
    filt = render.FILTERS[name]
    arg = "HF_HOME" if name == "systemd_env" else "the.field"
    payload = {"the": {"field": "/" + value}} if name == "to_yaml" else "/" + value
    with pytest.raises(RenderError) as info:
        filt(payload, arg)
    message = str(info.value)
    assert what in message
    assert ("the.field" if name != "systemd_env" else "HF_HOME") in message
    assert "\n" not in message


def test_to_yaml_keeps_multiline_descriptions_only() -> None:
    doc = {"profile": {"description": "line one\nline two", "name": "x"}, "n": 1}
    assert yaml.safe_load(render.to_yaml(doc, "config")) == doc
    with pytest.raises(RenderError, match=r"^config\.profile\.negative: .*newline"):
        render.to_yaml({"profile": {"negative": "a\nb"}}, "config")


def test_dump_yaml_is_deterministic_and_keeps_order() -> None:
    doc = {"z": 1, "a": {"y": "long " * 100, "b": [1, 2]}}
    text = render.dump_yaml(doc)
    assert text == render.dump_yaml(doc)
    assert text.index("z:") < text.index("a:")
    assert yaml.safe_load(text) == doc


def test_environment_is_strict_and_keeps_trailing_newline(tmp_path: object) -> None:
    env = render.environment()
    assert env is render.environment()
    assert env.from_string("x\n").render() == "x\n"
    with pytest.raises(RenderError, match="template agent/start.sh.j2: 'env' is undefined"):
        render.render("agent/start.sh.j2", {"profile_name": "designer"})
