"""split_by_patient / split_dataset: patient-level, class-stratified, reproducible, test split untouched."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pneumoscan.data import Sample, load_dataset, split_by_patient
from pneumoscan.data.split import split_dataset

patients_strategy = st.lists(
    st.tuples(st.integers(0, 60), st.sampled_from([0, 1]), st.sampled_from([None, "train", "val", "test"])),
    min_size=1, max_size=150,
)


def _samples(rows) -> list[Sample]:
    # A patient keeps one label; images of one patient may come with different source splits.
    label_of: dict[int, int] = {}
    return [Sample(Path(f"/d/{i}.png"), label_of.setdefault(p, lab), f"p{p}", split)
            for i, (p, lab, split) in enumerate(rows)]


@settings(max_examples=200, deadline=None)
@given(rows=patients_strategy, fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**32 - 1))
def test_split_never_puts_one_patient_in_two_splits_and_stratifies_by_class(rows, fraction, seed):
    samples = _samples(rows)
    result = split_by_patient(samples, fraction, seed)
    splits_of: dict[str, set[str | None]] = defaultdict(set)
    for s in result:
        splits_of[s.patient_id].add(s.split)
    assert all(len(v) == 1 for v in splits_of.values())
    # The test split is kept as it is, and its patients never appear in train or val.
    assert [s for s in result if s.split == "test"] == [s for s in samples if s.split == "test"]
    test_patients = {s.patient_id for s in samples if s.split == "test"}
    pool = {s.patient_id: s.label for s in samples if s.patient_id not in test_patients}
    assert {s.patient_id for s in result if s.split in ("train", "val")} == set(pool)
    # Stratified: per class, the share of patients in val is the fraction, rounded, keeping one
    # patient on each side when the class has two or more.
    val = {s.patient_id for s in result if s.split == "val"}
    for label in (0, 1):
        members = [p for p, lab in pool.items() if lab == label]
        expected = round(len(members) * fraction)
        if len(members) >= 2:
            expected = min(max(expected, 1), len(members) - 1)
        assert sum(p in val for p in members) == expected


def test_split_is_reproducible_with_a_seed_and_changes_with_another():
    samples = _samples([(p, p % 2, None) for p in range(100)])
    first = split_by_patient(samples, 0.2, seed=7)
    assert first == split_by_patient(samples, 0.2, seed=7)
    assert first != split_by_patient(samples, 0.2, seed=8)


def test_split_rejects_a_fraction_outside_0_1():
    with pytest.raises(ValueError, match="--val-fraction"):
        split_by_patient(_samples([(1, 0, None)]), 1.0)


def test_split_dataset_writes_a_manifest_that_load_dataset_reads_back(tmp_path, synthetic_dataset):
    result = split_dataset(synthetic_dataset, tmp_path / "split.csv", val_fraction=0.2, seed=0)
    back = load_dataset(result.manifest)
    assert sorted((str(s.path), s.label, s.patient_id, s.split) for s in back.samples) == sorted(
        (str(s.path), s.label, s.patient_id, s.split) for s in result.samples)
    counts = result.counts()
    # 10 patients per class, 2 images each: 2 patients per class in val.
    assert counts["val"] == {"images": 8, "patients": 4, "NORMAL": 4, "PNEUMONIA": 4}
    assert counts["train"]["patients"] == 16


def test_split_dataset_on_real_data_keeps_every_patient_on_one_side(tmp_path, shared_data):
    result = split_dataset(shared_data / "chest_xray", tmp_path / "split.csv", 0.1, 0)
    val = {s.patient_id for s in result.samples if s.split == "val"}
    train = {s.patient_id for s in result.samples if s.split == "train"}
    test = {s.patient_id for s in result.samples if s.split == "test"}
    assert val and train and not (val & train) and not (test & (val | train))
    # Every listed image is kept (none dropped for a patient shared with the official test split).
    assert len(result.samples) == len(load_dataset(shared_data / "chest_xray").samples)
    assert not result.dropped_patients
    counts = result.counts()
    for name in ("NORMAL", "PNEUMONIA"):
        share = counts["val"][name] / (counts["val"][name] + counts["train"][name])
        assert 0.07 < share < 0.13


@given(rows=patients_strategy, seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_a_carved_test_split_shares_no_patient_with_train_or_val(rows, seed):
    samples = _samples(rows)
    result = split_by_patient(samples, 0.2, seed, test_fraction=0.2)
    side_of: dict[str, set[str]] = {}
    for s in result:
        side_of.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(sides) == 1 for sides in side_of.values())
    source_test = {s.patient_id for s in samples if s.split == "test"}
    if not source_test:  # nothing dropped: every image is on exactly one side
        assert sorted(str(s.path) for s in result) == sorted(str(s.path) for s in samples)


def test_no_test_split_is_carved_when_the_source_has_one():
    samples = _samples([(p, p % 2, "test" if p < 4 else None) for p in range(20)])
    result = split_by_patient(samples, 0.2, 0, test_fraction=0.3)
    assert {s.path for s in result if s.split == "test"} == {s.path for s in samples if s.split == "test"}
