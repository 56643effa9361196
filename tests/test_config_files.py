from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pneumoscan.config_files import load_config, save_config
from pneumoscan.errors import ConfigError


@dataclass
class _Options:
    model: str = "seed-cnn"
    lr: float = 1e-3
    root: Path = Path("data")
    sizes: list[int] = field(default_factory=lambda: [64, 128])


def test_a_saved_config_loads_back_equal(tmp_path):
    original = _Options(model="resnet18", lr=3e-4, root=Path("/x/y"), sizes=[96])
    save_config(original, tmp_path / "config.yaml")
    loaded = load_config(_Options, tmp_path / "config.yaml")
    assert loaded == _Options(model="resnet18", lr=3e-4, root="/x/y", sizes=[96])


def test_an_unknown_option_in_a_config_file_names_the_file_and_the_key(tmp_path):
    (tmp_path / "c.yaml").write_text("model: seed-cnn\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown option\(s\) learning_rate"):
        load_config(_Options, tmp_path / "c.yaml")
