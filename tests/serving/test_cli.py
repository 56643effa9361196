"""`pneumoscan serve` on the command line: help with an example, one-line errors with exit code 2."""

from __future__ import annotations

import pytest

from pneumoscan.cli import main


def test_serve_help_lists_the_options_and_ends_with_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--workers", "--max-upload-mb", "--max-batch-files", "--max-concurrency",
                   "--batch-images", "--batch-wait-ms"):
        assert option in text
    assert "127.0.0.1" in text  # the default bind, shown
    assert text.rstrip().splitlines()[-1].strip().startswith("pneumoscan serve ")


def test_serve_refuses_a_missing_model_before_listening_with_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["serve", str(missing), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "run folder" in err


def test_serve_refuses_a_file_that_is_not_a_model(tmp_path, capsys):
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model")
    assert main(["serve", str(fake), "--port", "0"]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--workers", "0"], ["--port", "70000"], ["--max-upload-mb", "0"],
                                    ["--batch-images", "0"], ["--batch-wait-ms", "-1"]])
def test_serve_refuses_invalid_options_with_exit_2(served_run, option, capsys):
    assert main(["serve", str(served_run), *option]) == 2
    assert option[0] in capsys.readouterr().err
