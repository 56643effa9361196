import argparse
import re

import pytest

from pneumoscan.cli import build_parser, main


def _subcommands():
    parser = build_parser()
    (group,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name, sub in group.choices.items():
        nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        if nested:
            yield from ([name, inner] for inner in nested[0].choices)
        else:
            yield [name]


def test_top_level_help_lists_every_command_with_examples_and_the_disclaimer(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "train", "evaluate", "compare", "predict", "explain", "export", "serve"):
        assert f"\n    {command}" in out
    assert "examples:" in out and "NOT a medical device" in out


@pytest.mark.parametrize("command", list(_subcommands()), ids=" ".join)
def test_every_sub_command_help_ends_with_a_runnable_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out
    assert f"pneumoscan {' '.join(command)}" in out.split("example:")[1]


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("argv", "message"), [
    (["data", "split", "{data}", "--val-fraction", "1.5", "--out", "{tmp}/s.csv"], "--val-fraction"),
    (["data", "cache", "{data}", "--size", "0", "--folder", "{tmp}/cache"], "--size"),
    (["train", "--data", "{data}", "--devices", "x", "--out", "{tmp}/runs"], "--devices"),
    (["predict", "{model}", "{data}", "--device", "bogus"], "--device bogus"),
])
def test_out_of_range_options_are_one_line_errors_before_any_work(argv, message, synthetic_dataset, tmp_path,
                                                                  capsys):
    from pneumoscan.models import ModelMeta, build_model, save_model

    save_model(tmp_path / "model", build_model("seed-cnn", 32), ModelMeta(name="seed-cnn", image_size=32))
    values = {"data": str(synthetic_dataset), "tmp": str(tmp_path), "model": str(tmp_path / "model")}
    assert main([part.format(**values) for part in argv]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()  # train wrote no half run folder


def test_the_command_line_exits_with_the_commands_status(synthetic_dataset):
    """`python -m pneumoscan` (as the console script) passes main's code to the shell: 0, 1 for a failed
    strict check, 2 for no command."""
    import subprocess
    import sys

    (synthetic_dataset / "train" / "NORMAL" / "IM-0003-0001.png").write_bytes(b"")
    validate = [sys.executable, "-m", "pneumoscan", "data", "validate", str(synthetic_dataset), "--no-progress"]
    runs = [subprocess.run(argv, capture_output=True, text=True, timeout=120)
            for argv in (validate, [*validate, "--strict"], [sys.executable, "-m", "pneumoscan"])]
    assert [r.returncode for r in runs] == [0, 1, 2], [r.stderr[-500:] for r in runs]
    assert "IM-0003-0001.png: empty file" in runs[1].stdout


def _parsers():
    """Every parser of the command line: the top level, each command, each group and its commands."""
    parser = build_parser()
    todo, found = [("pneumoscan", parser)], []
    while todo:
        name, current = todo.pop()
        found.append((name, current))
        for action in current._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


@pytest.mark.parametrize(("name", "parser"), _parsers(), ids=[n for n, _ in _parsers()])
def test_every_option_has_one_help_text_with_at_most_one_default(name, parser):
    for action in parser._actions:
        if not action.option_strings or action.help == "==SUPPRESS==" or "-h" in action.option_strings:
            continue
        text = parser._get_formatter()._expand_help(action) if action.help is not None else ""
        assert text.strip(), f"{name} {action.option_strings[0]}: no help text"
        assert text.count("(default") <= 1, f"{name} {action.option_strings[0]}: {text}"
        # A --flag/--no-flag pair says which is on; a lone flag's True or False, or None, says nothing.
        meaningless = r"\(default: None\)" if isinstance(action, argparse.BooleanOptionalAction) \
            else r"\(default: (True|False|None)\)"
        assert not re.search(meaningless, text), f"{name} {action.option_strings[0]}: {text}"


@pytest.mark.parametrize("group", ["data", "dicom"])
def test_every_command_group_help_ends_with_an_example(group, capsys):
    with pytest.raises(SystemExit):
        main([group, "--help"])
    out = capsys.readouterr().out
    assert "example:" in out and f"pneumoscan {group} " in out.split("example:")[1]
