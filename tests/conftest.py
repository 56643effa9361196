"""Shared fixtures: the real data (skipped with a reason when absent), small synthetic datasets and a tiny
exported model."""

from __future__ import annotations

import gc
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from helpers import properties
from helpers.shared import once_per_run
from helpers.synthetic import write_synthetic_image

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`-n N`), each worker gets its share of the cores for torch's and OpenMP's threads,
# set before torch is imported (child processes inherit it). Without it, N workers each start one thread
# per core, and on a small machine those threads wait on each other: the same tests take several times
# longer. An explicit OMP_NUM_THREADS is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def shared_data_root() -> Path | None:
    """``$PNEUMOSCAN_TEST_DATA`` or ``../shared/data`` (the folder holding ``chest_xray/``), if present."""
    for candidate in (os.environ.get("PNEUMOSCAN_TEST_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "chest_xray" / "train").is_dir():
            return Path(candidate)
    return None


# -- the e2e marker -----------------------------------------------------------------------------------------
# A test that trains a model is marked e2e, so that `pytest -m "not e2e"` is a fast inner loop. The mark is
# checked, not trusted: an unmarked test (or a fixture it sets up) that starts Lightning's fit fails.
_RUNNING: list[pytest.Item | None] = [None]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    _RUNNING[0] = item
    try:
        return (yield)
    finally:
        _RUNNING[0] = None


def _guard_fit(trainer_module) -> None:
    fit = trainer_module.Trainer.fit

    def guarded(self, *args, **kwargs):
        item = _RUNNING[0]
        if item is not None and item.get_closest_marker("e2e") is None:
            pytest.fail(f"{item.nodeid} trains a model: mark it @pytest.mark.e2e", pytrace=False)
        return fit(self, *args, **kwargs)

    trainer_module.Trainer.fit = guarded


class _GuardFitOnImport(importlib.abc.MetaPathFinder):
    """Guards ``Trainer.fit`` as soon as Lightning's trainer module is imported (importing Lightning here
    would cost every test run seconds; commands import it lazily, inside a test)."""

    NAME = "lightning.pytorch.trainer.trainer"

    def find_spec(self, name, path, target=None):
        if name != self.NAME:
            return None
        sys.meta_path.remove(self)  # once: find the real spec, then wrap its loader
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_and_guard(module):
                exec_module(module)
                _guard_fit(module)

            spec.loader.exec_module = exec_and_guard
        return spec


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config) -> None:
    """``-n N`` without ``--dist`` distributes by work stealing: each worker starts on its own half of the
    suite in file order (a module's tests, and its fixtures, stay on one worker) and takes tests from the
    other's queue when it runs dry. pytest-xdist's own default ("load") hands out tests one by one, so a
    module's fixtures were made on both workers: the inner loop took 73 s instead of 68 s."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") == "no":
        config.option.dist = "worksteal"


def _inner_loop(config) -> bool:
    """``pytest -m "not e2e"``: the fast loop (see the e2e marker above)."""
    return (config.getoption("markexpr", "") or "").replace(" ", "") == "note2e"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """In the inner loop, a test module marked e2e as a whole (``pytestmark`` names e2e) is not even
    imported: every xdist worker imports every module it collects, and these bring Lightning, Ray or the
    browser driver for tests that are then deselected."""
    if not (_inner_loop(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_")):
        return None
    import ast

    for node in ast.parse(collection_path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            if any(isinstance(m, ast.Attribute) and m.attr == "e2e" for m in marks):
                return True
    return None


def pytest_configure(config) -> None:
    xdist_controller = bool(getattr(config.option, "numprocesses", None)) and "PYTEST_XDIST_WORKER" not in os.environ
    if not xdist_controller:  # the controller collects nothing, so nothing would turn the collector back on
        gc.disable()  # until collection ends: see pytest_collection_finish
    if _inner_loop(config):
        # The inner loop: properties draw fewer examples (helpers.properties); the whole suite draws all.
        properties.SHARE = properties.INNER_LOOP_SHARE
    if _GuardFitOnImport.NAME in sys.modules:
        _guard_fit(sys.modules[_GuardFitOnImport.NAME])
    else:
        sys.meta_path.insert(0, _GuardFitOnImport())


# The garbage collector and the libraries' objects. Importing torch, Lightning, MONAI and scikit-learn
# leaves millions of long-lived objects; every full collection walks them all: while the test modules
# import them, during the tests, in pytest's final collections (which look for unraisable exceptions) and
# at the interpreter's exit (measured: 3.4 s for a process that imported them, 0.45 s frozen). Each xdist
# worker pays that, and its controller waits. So the collector is off while the suite is collected, and
# the objects that exist when collection ends are moved out of its sight; what the tests create is still
# collected, and still reported when it raises in a finaliser.
@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session) -> None:
    gc.freeze()
    gc.enable()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """After the last report: nothing is left to find; the operating system takes the memory back."""
    gc.freeze()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder: tests never read or pollute the user's ~/.cache."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def no_figures(monkeypatch) -> None:
    """The evaluation report's and `data inspect`'s figures are not drawn in this test (matplotlib takes
    most of their time on the tests' small data): for tests that assert none of them. The report and
    inspect tests that check the figures draw them."""
    import importlib

    evaluate = importlib.import_module("pneumoscan.evaluation.evaluate")  # the package exports a function of that name
    monkeypatch.setattr(evaluate, "report_figures", lambda *args, **kwargs: {})
    inspect = importlib.import_module("pneumoscan.data.inspect")
    monkeypatch.setattr(inspect, "_plot_balance", lambda *args, **kwargs: None)
    monkeypatch.setattr(inspect, "_plot_samples", lambda *args, **kwargs: None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("real data absent: ../shared/data/chest_xray not found and $PNEUMOSCAN_TEST_DATA not set")
    return root


@pytest.fixture(scope="session")
def real_subset(shared_data, tmp_path_factory) -> Path:
    """A small real dataset in the Kermany layout: train/{NORMAL,PNEUMONIA} with 24 + 24 images (symlinks)."""
    root = tmp_path_factory.mktemp("real_subset")
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((shared_data / "chest_xray" / "train" / cls).glob("*.jpeg"))[:24]
        (root / "train" / cls).mkdir(parents=True)
        for f in files:
            (root / "train" / cls / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory) -> Path:
    """A run folder as training and export leave it: a random 64 px mini-resnet in ``model.safetensors``
    with its operating points, and its ONNX export with the model card in ``export/``. Exporting takes
    seconds: every test that needs an exported model shares this one, read-only, made once per run.

    Random weights serve: the plumbing, the API, parity and input handling do not depend on training. A
    mini-resnet rather than the seed CNN because its random outputs vary from image to image (sd about
    0.004 in probability on real radiographs, the seed CNN's 0.0007), so a mishandled input cannot pass a
    1e-4 tolerance; it is also the faster of the two. Fit "pad" makes a non-square image go through
    fitting; a temperature other than 1 makes its trip into the graph and the metadata visible.
    """

    def make(folder: Path) -> None:
        import torch

        from pneumoscan import __version__
        from pneumoscan.models import ModelMeta, build_model, save_model
        from pneumoscan.serving.export import export_onnx

        torch.manual_seed(3)
        meta = ModelMeta(name="mini-resnet", image_size=64, fit="pad", threshold=0.5, temperature=1.7,
                         version=__version__, run_id="test-run",
                         operating_points={"youden": 0.5, "sens95": 0.2, "spec95": 0.8})
        save_model(folder, build_model("mini-resnet", 64), meta)
        export_onnx(folder)

    return once_per_run(tmp_path_factory, "exported-run", make)


@pytest.fixture(scope="session")
def gated_run(tmp_path_factory) -> Path:
    """A run folder like ``exported_run`` whose model carries a scope gate fitted on synthetic radiographs
    (``helpers.gated``), with its ONNX export: made once per run."""
    from helpers.gated import make_gated_run

    return once_per_run(tmp_path_factory, "gated-run", make_gated_run)


@pytest.fixture
def synthetic_dataset(tmp_path) -> Path:
    """A Kermany-style folder of synthetic images: 10 patients per class, 2 images each, PNG."""
    root = tmp_path / "synthetic"
    for i in range(10):
        write_synthetic_image(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.png", 0, seed=i)
        write_synthetic_image(root / "train" / "NORMAL" / f"IM-{i:04d}-0002.png", 0, seed=100 + i)
        write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{500 + i}_bacteria_{i}.png", 1, seed=200 + i)
        write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{500 + i}_bacteria_{50 + i}.png", 1, seed=300 + i)
    return root
