"""Temperature scaling, the expected calibration error, and the calibration written by training:
metrics.json fields, the accuracy-against-coverage table and curve."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_options

import bankintent
from bankintent.calibration import coverage_report, expected_calibration_error, fit_temperature
from bankintent.data import load_splits
from bankintent.predict import Predictor, softmax


def test_expected_calibration_error_of_a_known_case():
    probs = np.array([[0.9, 0.1]] * 10)
    labels = np.array([0] * 8 + [1] * 2)  # 90% confident, 80% right
    assert expected_calibration_error(probs, labels) == pytest.approx(0.1)
    assert expected_calibration_error(np.array([[1.0, 0.0]] * 4), np.zeros(4, dtype=int)) == pytest.approx(0.0)


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(5000, 6))
    probs = softmax(logits / 2.5)
    labels = np.array([rng.choice(6, p=p) for p in probs])
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.08)
    assert expected_calibration_error(softmax(logits / temperature), labels) < expected_calibration_error(softmax(logits), labels)


@pytest.fixture(scope="module")
def run(tiny_bert, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration_run") / "run"
    bankintent.train(**tiny_options(tiny_bert, tiny_data, out, method="linear-probe", oos_coverage=0.75))
    return out


def test_training_writes_calibration_and_out_of_scope_metrics(run):
    metrics = json.loads((run / "metrics.json").read_text())
    spec = json.loads((run / "adapter" / "bankintent.json").read_text())
    assert metrics["temperature"] == spec["temperature"] > 0
    assert 0 <= metrics["val_ece_after"] <= 1 and 0 <= metrics["val_ece_before"] <= 1
    assert metrics["oos_coverage_target"] == 0.75
    assert {"oos_score", "oos_threshold", "oos_auroc_msp", "oos_auroc_mahalanobis", "oos_probe_recall"} <= set(metrics)


def test_threshold_keeps_the_target_coverage_of_validation(run, tiny_data):
    splits = load_splits(str(tiny_data))
    predictor = Predictor.load(run)
    results = predictor.predict(splits.validation.texts)
    in_scope = np.mean([not r["out_of_scope"] for r in results])
    assert 0.75 <= in_scope < 0.75 + 1.5 / len(results)  # the smallest share >= the target (ties aside)


def test_coverage_table_and_curve(run, tiny_data, tmp_path):
    table = pd.read_csv(run / "validation_coverage.csv")
    assert list(table.columns) == ["score", "coverage", "threshold", "kept", "accuracy", "probe_recall"]
    assert set(table.score) == {"msp", "mahalanobis"}
    assert (run / "validation_coverage.png").stat().st_size > 10_000
    for _, rows in table.groupby("score"):
        assert rows.kept.is_monotonic_decreasing and (rows.kept >= rows.coverage).all()
    splits = load_splits(str(tiny_data))
    predictor = Predictor.load(run)
    logits, features = predictor.outputs(splits.test.texts)
    correct = logits.argmax(-1) == np.array(splits.ids(splits.test))
    summary = coverage_report(predictor, correct, logits, features, tmp_path, "test")
    test_table = pd.read_csv(tmp_path / "test_coverage.csv")
    full = test_table[(test_table.score == "msp") & (test_table.coverage == 1.0)].iloc[0]
    expected_accuracy = np.mean(predictor.logits(splits.test.texts).argmax(-1) == np.array(splits.ids(splits.test)))
    assert full.accuracy == pytest.approx(expected_accuracy) and full.kept == 1.0
    assert summary["oos_score"] == predictor.oos_score and summary["threshold"] == predictor.oos_threshold
    assert 0 <= summary["probe_recall"] <= 1 and set(summary["auroc"]) == {"msp", "mahalanobis"}
    assert (tmp_path / "test_coverage.png").is_file()
