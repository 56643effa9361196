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
