"""The held-out-intents protocol (benchmarks/out_of_scope.py): its split, and what its models train on."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bankintent import ood
from bankintent.data import load_splits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def protocol():
    spec = importlib.util.spec_from_file_location("out_of_scope_protocol", ROOT / "benchmarks" / "out_of_scope.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_split_is_seeded_and_partitions_the_intents(protocol):
    labels = SimpleNamespace(labels=[f"intent_{i:02d}" for i in range(77)])
    first, again, other = (protocol.protocol_split(labels, 2 / 3, seed) for seed in (42, 42, 43))
    assert first == again and first["known"] != other["known"]
    assert len(first["known"]) == 51 and len(first["held_out"]) == 26
    assert set(first["known"]).isdisjoint(first["held_out"]) and set(first["known"]) | set(first["held_out"]) == set(labels.labels)
    assert sorted(first["example_intents"] + first["untouched"]) == first["held_out"] and len(first["example_intents"]) == 13
    assert set(first["example_intents"]).isdisjoint(first["untouched"])


def test_no_held_out_intent_trains_and_the_outputs_are_kept(protocol, tiny_bert, tiny_data, tmp_path):
    splits = load_splits(str(tiny_data))
    args = Namespace(known=0.5, method="linear-probe", base_model=str(tiny_bert), epochs=None, frozen_base=False, distill=0)
    outputs = protocol.model_outputs(0, "label", args, splits, tmp_path)
    intents = outputs["intents"]
    with open(tmp_path / "data-label-0" / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["category"] for row in rows} == set(intents["known"]) | {"out_of_scope"}
    examples = [row["text"] for row in rows if row["category"] == "out_of_scope"]
    assert examples == [t for t, label in zip(splits.train.texts, splits.train.labels) if label in intents["example_intents"]]
    assert outputs["labels"] == intents["known"]  # the out-of-scope rows are not an intent
    assert len(outputs["features/id_oos"]) == sum(label in intents["held_out"] for label in splits.test.labels)

    shutil.rmtree(tmp_path / "run-label-0")  # the cache answers: no training again
    cached = protocol.model_outputs(0, "label", args, splits, tmp_path)
    np.testing.assert_array_equal(cached["logits/test"], outputs["logits/test"])

    rows = {(row["oos_examples"], row["score"]): row for arm in ("none", "label") for row in protocol.arm_rows(arm, 0, outputs, args)}
    assert ("none", f"shipped ({ood.DEFAULT_SCORE})") in rows
    shipped = [score for arm, score in rows if arm == "label" and score.startswith("shipped")]
    assert len(shipped) == 1 and shipped[0][len("shipped ("):-1] in ood.SCORES
    for row in rows.values():
        assert 0 <= row["recall_id"] <= 1 and 0 <= row["recall_ood"] <= 1 and 0 < row["coverage"] <= 1
    # the label arm is tested on the untouched half only
    assert rows[("label", "knn")]["recall_id"] == rows[("label", "knn")]["recall_id_half"]


def test_the_class_arm_trains_the_examples_as_one_more_intent(protocol, tiny_bert, tiny_data, tmp_path):
    splits = load_splits(str(tiny_data))
    args = Namespace(known=0.5, method="linear-probe", base_model=str(tiny_bert), epochs=None, frozen_base=False, distill=0)
    outputs = protocol.model_outputs(0, "class", args, splits, tmp_path)
    assert outputs["labels"] == sorted(outputs["intents"]["known"] + [protocol.OOS_CLASS])
    rows = {row["score"]: row for row in protocol.arm_rows("class", 0, outputs, args)}
    assert "oos class" in rows and 0 <= rows["oos class"]["recall_id"] <= 1
    assert rows["oos class"]["recall_id"] == rows["oos class"]["recall_id_half"]  # tested on the untouched half


def test_distill_measures_each_models_student(protocol, tiny_bert, tiny_data, tmp_path):
    splits = load_splits(str(tiny_data))
    args = Namespace(known=0.5, method="lora", base_model=str(tiny_bert), epochs=1, frozen_base=False, distill=0)
    outputs = protocol.model_outputs(0, "label", args, splits, tmp_path)
    # --distill: the measured model is the teacher's student, the teacher (trained above) is not trained again
    args = Namespace(**{**vars(args), "distill": 1, "distill_epochs": 1})
    teacher = (tmp_path / "run-label-0" / "metrics.json").stat().st_mtime_ns
    student = protocol.model_outputs(0, "label", args, splits, tmp_path)
    assert (tmp_path / "run-label-0" / "metrics.json").stat().st_mtime_ns == teacher
    assert json.loads((tmp_path / "distill1-label-0" / "metrics.json").read_text())["layers"] == 1
    assert (tmp_path / "outputs-distill1-label-0.npz").is_file()
    assert student["labels"] == outputs["labels"]
    assert not np.array_equal(student["features/test"], outputs["features/test"])
    rows = protocol.arm_rows("label", 0, student, args)
    assert {row["method"] for row in rows} == {"lora distilled to 1 layers"} and any(row["score"] == "knn contrast" for row in rows)
