"""Temperature scaling, the expected calibration error, and the calibration written by training:
metrics.json fields, the accuracy-against-coverage table and curve."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_options

import bankintent
from bankintent import ood
from bankintent.calibration import _plot_coverage, coverage_report, expected_calibration_error, fit_temperature, temperature, temperature_problem
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
    assert {"oos_score", "oos_threshold", "oos_auroc_msp", "oos_auroc_mahalanobis", "oos_recall"} <= set(metrics)
    # the tiny data's intents are Banking77's: the built-in probe set is the out-of-scope set
    assert metrics["oos_examples"] == ood.PROBE_SET and metrics["oos_examples_size"] == len(ood.probe_set())
    # the probe set measures the fallback but does not choose the score: the protocol's default does
    assert metrics["oos_score"] == ood.DEFAULT_SCORE and metrics["oos_score_reason"] == ood.DEFAULT_REASON
    assert spec["oos_choice"] == {"reason": metrics["oos_score_reason"], "examples": ood.PROBE_SET, "examples_size": len(ood.probe_set()),
                                  "coverage": 0.75}


def test_a_tiny_validation_split_is_flagged_and_its_temperature_matches_the_accuracy(run):
    """8 validation queries (2 an intent): too few for the likelihood; the temperature makes the mean
    confidence the accuracy estimated with Laplace's rule, and metrics.json says so."""
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_size"] == 8 and metrics["val_min_per_intent"] == 2
    assert "4 of 4 intents have fewer than 5 validation queries" in metrics["val_warning"]
    assert metrics["temperature_fitted"] is True and metrics["temperature_rule"] == "accuracy"
    assert metrics["temperature_note"].startswith("8 validation queries, fewer than 50: set so that the mean confidence is the accuracy")
    assert "temperature_rule" in (run / "metrics.json").read_text() and metrics["temperature"] != 1.0


def test_temperature_uses_the_likelihood_only_where_it_can_choose():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    separable = rng.normal(size=(300, 3)) + 6 * np.eye(3)[labels]  # every query classified right
    # the likelihood on such a split: a temperature towards 0, every confidence 1.000
    assert softmax(separable[:9] / fit_temperature(separable[:9], labels[:9])).max(-1).min() > 0.9995
    assert temperature_problem(separable[:9], labels[:9]) == "9 validation queries, fewer than 50"
    assert "every one of the validation queries is classified right" in temperature_problem(separable, labels)
    noisy = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[labels]
    assert temperature_problem(noisy, labels) is None
    value, rule, note = temperature(noisy, labels)
    assert rule == "likelihood" and note is None and value == pytest.approx(fit_temperature(noisy, labels))
    # 54 queries of which 48 the data's own (the rest the intents' names): the own ones count
    # (docs/results/fewshot/levers/temperature-rule-own-queries)
    value, rule, note = temperature(noisy[:54], labels[:54], "training queries", given=48)
    assert rule == "accuracy" and note.startswith("54 training queries, of which 48 the data's own queries, fewer than 50: set so")
    assert temperature(noisy[:54], labels[:54], given=50)[1] == "likelihood"
    # 300 of 300 right: the mean confidence becomes 301/302, neither 1.000 nor the raw softmax's
    value, rule, note = temperature(separable, labels)
    assert rule == "accuracy" and "(300 right + 1) / (300 + 2) = 0.997" in note
    assert softmax(separable / value).max(-1).mean() == pytest.approx(301 / 302, abs=1e-6)
    # a probe too regularised to be sure of anything (confidences about 0.4), 9 of 10 right: 10/12 on average
    weak = 0.3 * (np.eye(3)[labels[:10]] + rng.normal(scale=0.1, size=(10, 3)))
    weak[0] = weak[0][[1, 2, 0]]  # one wrong
    right = int((weak.argmax(-1) == labels[:10]).sum())
    value, rule, note = temperature(weak, labels[:10])
    assert rule == "accuracy" and value < 1 and softmax(weak / value).max(-1).mean() == pytest.approx((right + 1) / 12, abs=1e-6)
    assert "not reached" not in note
    flat = 1e-4 * weak  # an untrained model's scores barely differ: even the lowest temperature leaves them near 1/3
    value, rule, note = temperature(flat, labels[:10])
    assert value == pytest.approx(0.01) and note.endswith(
        f"= {(right + 1) / 12:.3f}, not reached: the mean confidence is {softmax(flat / value).max(-1).mean():.3f} at temperature "
        f"0.01, the end of the range searched (the model's scores for the intents barely differ: it has learnt little)")
    assert temperature(weak[:0], labels[:0]) == (1.0, None, "not fitted: no validation queries")


def test_threshold_keeps_the_target_coverage_of_validation(run, tiny_data):
    splits = load_splits(str(tiny_data))
    predictor = Predictor.load(run)
    results = predictor.predict(splits.validation.texts)
    in_scope = np.mean([not r["out_of_scope"] for r in results])
    assert 0.75 <= in_scope < 0.75 + 1.5 / len(results)  # the smallest share >= the target (ties aside)


def test_coverage_table_and_curve(run, tiny_data, tmp_path):
    table = pd.read_csv(run / "validation_coverage.csv")
    assert list(table.columns) == ["score", "coverage", "threshold", "kept", "accuracy", "oos_recall"]
    assert set(table.score) == set(ood.SCORES)
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
    assert 0 <= summary["oos_recall"] <= 1 and set(summary["auroc"]) == set(ood.SCORES)
    assert summary["oos_examples"] == ood.PROBE_SET and summary["oos_score_reason"] == ood.DEFAULT_REASON
    from PIL import Image

    width = Image.open(tmp_path / "test_coverage.png").size[0]  # 6.4 inches at 110 dpi a panel
    assert width > 1.5 * 6.4 * 110  # with out-of-scope examples (the probe set here), a second panel: caught against answered
    scores = predictor.oos_scores(softmax(logits / predictor.spec.temperature), features)
    aimed = summary["for_target"]  # evaluate's advice: the lowest threshold that answers the run's target share of these queries
    assert aimed["aim"] == predictor.spec.oos_choice["coverage"] and aimed["coverage"] == np.mean(scores <= aimed["threshold"])
    assert aimed["coverage"] >= aimed["aim"] > np.mean(scores < aimed["threshold"])  # the share it answers, not the aim
    for row in test_table.itertuples():  # a threshold copied from the table answers its row's share (rounded, it answered one less)
        again = Predictor.load(run, oos_score=row.score, oos_threshold=row.threshold)
        assert np.mean(again.oos_scores(softmax(logits / again.spec.temperature), features) <= again.oos_threshold) == row.kept


def test_a_fallback_that_answers_few_evaluated_queries_is_warned_about(run, tiny_data, tmp_path, caplog):
    """A threshold set on validation queries unlike those evaluated can turn most of them away; said
    aloud, not only as a coverage figure. The validation split itself and a fallback that answers are not."""
    splits = load_splits(str(tiny_data))
    texts = splits.test.texts + splits.test.texts  # 40 queries
    strict = Predictor.load(run, oos_threshold=-1e9)  # every query out of scope
    logits, features = strict.outputs(texts)
    correct = np.ones(len(texts), dtype=bool)
    coverage_report(strict, correct, logits, features, tmp_path, "test")
    assert "the out-of-scope fallback answers only 0.0% of these 40 in-scope test queries" in caplog.text
    assert f"{tmp_path / 'test_coverage.csv'} gives the one that answers each share of these queries: --oos-threshold" in caplog.text
    caplog.clear()
    coverage_report(strict, correct, logits, features, tmp_path, "validation")
    coverage_report(Predictor.load(run, oos_threshold=1e9), correct, logits, features, tmp_path, "test")
    assert "fallback answers only" not in caplog.text


def test_a_fallback_answering_significantly_fewer_than_its_target_is_warned_about(run, tiny_data, tmp_path, caplog):
    """The threshold was set to answer a share of validation (this run: 75%); answering 55% of 40
    evaluated queries is unlikely by chance (binomial test) and said, though above the 50% floor of
    the warning above."""
    from bankintent.calibration import scores_of

    splits = load_splits(str(tiny_data))
    texts = splits.test.texts + splits.test.texts  # 40 queries
    predictor = Predictor.load(run)
    assert predictor.spec.oos_choice["coverage"] == 0.75  # the target, recorded with the thresholds
    logits, features = predictor.outputs(texts)
    score = scores_of(predictor, logits, features)[1][predictor.oos_score]
    correct = np.ones(len(texts), dtype=bool)
    for answered, warned in ((22, True), (32, False)):  # each query twice: an even count
        caplog.clear()
        threshold = float(np.sort(score)[answered - 1])
        predictor.spec.oos_thresholds[predictor.oos_score] = predictor.oos_threshold = threshold  # as if trained so
        coverage_report(predictor, correct, logits, features, tmp_path, "test")
        said = (f"the out-of-scope fallback answers only {100 * answered / 40:.1f}% of these 40 in-scope test queries (its "
                f"threshold was set to answer 75% of the held-out in-scope queries at training)")
        assert (said in caplog.text) == warned, answered


def test_the_coverage_plot_marks_the_operating_point_and_says_why(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr("bankintent.calibration.plt.close", figures.append)
    scores = {"msp": np.linspace(0, 1, 20), "mahalanobis": np.linspace(0, 5, 20)}
    correct = np.array([True] * 15 + [False] * 5)
    point = {"oos_score": "mahalanobis", "threshold": 4.2, "coverage": 0.85, "accuracy_kept": 0.88,
             "oos_score_reason": "default: no out-of-scope examples"}
    _plot_coverage(correct, scores, tmp_path / "c.png", "validation", point)
    ax = figures[0].axes[0]
    assert "mahalanobis: default: no out-of-scope examples" in ax.get_title()
    marker = [line for line in ax.lines if line.get_label().startswith("operating point")]
    assert len(marker) == 1 and list(marker[0].get_xdata()) == [0.85] and list(marker[0].get_ydata()) == [0.88]
    assert "mahalanobis > 4.2 is out of scope" in marker[0].get_label()
