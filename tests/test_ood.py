"""Out-of-scope scores, thresholds, the probe set and the ``out_of_scope`` answer of ``Predictor``."""

from __future__ import annotations

import csv
import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import BANKING77, tiny_options, write_csv
from sklearn.covariance import LedoitWolf

import bankintent
from bankintent import ood
from bankintent.calibration import coverage_report
from bankintent.errors import ConfigError, ModelError
from bankintent.predict import Predictor, softmax


def test_probe_set_is_a_few_hundred_distinct_queries_kept_apart_from_banking77():
    queries = ood.probe_set()
    assert 250 <= len(queries) <= 500
    assert len({q.lower() for q in queries}) == len(queries)
    assert not any(q.startswith("#") for q in queries)
    if (BANKING77 / "train.csv").is_file():
        banking = set()
        for split in ("train", "test"):
            with open(BANKING77 / f"{split}.csv", newline="") as handle:
                banking |= {row["text"].strip().lower() for row in csv.DictReader(handle)}
        assert not {q.lower() for q in queries} & banking


def test_mahalanobis_is_the_distance_to_the_nearest_centroid_under_the_shared_covariance():
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0, 0, 0], [5, 0, 0, 0], [0, 5, 0, 0]])
    mixing = rng.normal(size=(4, 4))
    labels = rng.integers(0, 3, 600)
    features = means[labels] + rng.normal(size=(600, 4)) @ mixing
    stats = ood.fit_mahalanobis(features, labels, 3)
    centroids = np.stack([features[labels == c].mean(0) for c in range(3)])
    precision = np.linalg.inv(LedoitWolf().fit(features - centroids[labels]).covariance_)
    queries = np.vstack([centroids[1], centroids[2] + 0.5, [40.0, -40, 10, 3]])
    direct = np.array([min((q - c) @ precision @ (q - c) for c in centroids) for q in queries])
    np.testing.assert_allclose(ood.mahalanobis(queries, stats), direct, rtol=1e-3, atol=1e-3)
    assert ood.mahalanobis(queries, stats)[0] == pytest.approx(0, abs=1e-3)
    assert ood.mahalanobis(queries, stats)[2] > 100


def test_mahalanobis_with_one_query_an_intent_uses_the_spread_of_all_queries():
    """Small data of two examples an intent leaves one in the half the detector is fitted on: no spread
    within an intent, a covariance of zeros, and training ended in numpy's LinAlgError."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 8))
    stats = ood.fit_mahalanobis(features, np.arange(5), 5)
    assert np.isfinite(stats["whitening"]).all()
    distances = ood.mahalanobis(np.vstack([features[2], features[2] + 10.0]), stats)
    assert distances[0] == pytest.approx(0, abs=1e-3) and distances[1] > 10
    one = ood.fit_mahalanobis(features[:1], np.zeros(1, dtype=int), 1)  # one query in all: Euclidean
    np.testing.assert_allclose(ood.mahalanobis(features[:1] + 2.0, one), [32.0], rtol=1e-4)


def test_training_embeddings_all_alike_fit_every_score():
    """Queries cut to no words (a max_length of 2) give every query one embedding: the background's
    covariance of zeros ended training in numpy's LinAlgError, after training, with nothing saved."""
    same = np.tile(np.random.default_rng(0).normal(size=(1, 8)), (6, 1))
    for features, labels in ((same, np.array([0, 0, 0, 1, 1, 1])), (same[:1], np.zeros(1, dtype=int))):
        stats = ood.fit(features, labels, 2)
        assert all(np.isfinite(value).all() for value in stats.values())
        ready = ood.for_scoring(stats)
        np.testing.assert_allclose(ood.relative_mahalanobis(np.vstack([same[:1], same[:1] + 2.0]), ready), [0.0, 0.0], atol=1e-3)
        assert ood.mahalanobis(same[:1] + 2.0, ready)[0] == pytest.approx(32.0, rel=1e-4)  # Euclidean: 8 dimensions of 2


def test_two_training_queries_fit_every_score():
    """Two intents of two queries: small data's half fitted on holds one row an intent, which LedoitWolf
    does not shrink at all; the covariance was singular and training ended in LinAlgError."""
    features = np.random.default_rng(0).normal(size=(2, 8))
    stats = ood.fit(features, np.array([0, 1]), 2)
    assert all(np.isfinite(value).all() for value in stats.values())
    distances = ood.mahalanobis(np.vstack([features[1], features[1] + 5.0]), ood.for_scoring(stats))
    assert distances[0] == pytest.approx(0, abs=1e-3) and distances[1] > 1


def test_knn_is_the_cosine_distance_to_the_nearest_training_embedding_both_centred():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8)) + 3.0  # a common direction, as mean-pooled embeddings share
    stats = ood.fit_knn(train)
    assert stats["knn_bank"].dtype == np.float16 and stats["knn_bank"].shape == (50, 8)
    np.testing.assert_allclose(stats["knn_centre"], train.mean(0), rtol=1e-5)
    centre = train.mean(0)
    queries = np.vstack([centre + (train[3] - centre) * 5.0, centre - (train[7] - centre), rng.normal(size=(1, 8)) + 3.0])
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    direct = 1 - (unit(queries - centre) @ unit(train - centre).T).max(1)
    assert not np.allclose(direct, 1 - (unit(queries) @ unit(train).T).max(1), atol=0.05)  # centring changes the scores
    np.testing.assert_allclose(ood.knn(queries, stats), direct, atol=2e-3)
    assert ood.knn(queries, stats)[0] == pytest.approx(0, abs=2e-3) and ood.knn(queries, stats)[1] > 0.05
    second = 1 - np.sort(unit(queries - centre) @ unit(train - centre).T, axis=1)[:, -2]
    np.testing.assert_allclose(ood.knn(queries, stats, k=2), second, atol=2e-3)
    ready = ood.for_scoring(stats)  # the bank in float32, transposed: the same scores
    assert ready["knn_bank_t"].flags.c_contiguous and ready["knn_bank_t"].shape == (8, 50)
    assert ready["knn_bank"] is stats["knn_bank"]  # as stored: one float32 copy of the bank, not two
    np.testing.assert_allclose(ood.knn(queries, ready), ood.knn(queries, stats), atol=1e-6)
    np.testing.assert_allclose(ood.knn(queries, ready, k=2), second, atol=2e-3)
    many = ood.fit_knn(rng.normal(size=(ood.KNN_BANK + 10, 4)))
    assert len(many["knn_bank"]) == ood.KNN_BANK
    before = {"knn_bank": unit(train).astype(np.float16)}  # a model folder saved before the centre: uncentred, as it was fitted
    np.testing.assert_allclose(ood.knn(queries, before), 1 - (unit(queries) @ unit(train).T).max(1), atol=2e-3)


def test_with_labels_the_knn_bank_holds_each_intents_k_means_prototypes():
    """Intent 0: 40 embeddings around 3 directions, summarised by KNN_PROTOTYPES centroids; intent 1:
    fewer examples than that, kept as they are. Same data and seed: the same bank."""
    rng = np.random.default_rng(1)
    directions = np.eye(8)[:3] * 10
    crowd = directions[rng.integers(0, 3, size=40)] + rng.normal(scale=0.1, size=(40, 8))
    few = rng.normal(size=(ood.KNN_PROTOTYPES - 2, 8))
    features, labels = np.vstack([crowd, few]), np.array([0] * 40 + [1] * len(few))
    stored = ood.fit_knn(features, labels, seed=0)["knn_bank"]
    bank = stored.astype(np.float32)
    assert stored.dtype == np.float16 and bank.shape == (2 * ood.KNN_PROTOTYPES - 2, 8)
    np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1, atol=1e-3)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    centre = features.mean(0)  # the bank is of centred embeddings
    np.testing.assert_allclose(bank[ood.KNN_PROTOTYPES:], unit(few - centre), atol=2e-3)  # a small intent keeps its own
    prototypes = bank[: ood.KNN_PROTOTYPES]
    assert ((unit(crowd - centre) @ prototypes.T).max(1) > 0.99).all()  # every query lies near a prototype of its intent
    assert len(np.unique((prototypes @ unit(directions - centre).T).argmax(1))) == 3  # each direction has prototypes
    assert not any((unit(crowd - centre) == p).all(1).any() for p in prototypes)  # centroids, not training rows
    np.testing.assert_array_equal(ood.fit_knn(features, labels, seed=0)["knn_bank"], stored)
    # a query between the two intents' clusters is further from the prototypes than the intents' own
    stats = ood.fit_knn(features, labels)
    assert ood.knn(directions[:1] + directions[1:2], stats)[0] > ood.knn(crowd[:5], stats).max()


def test_an_intent_of_repeated_queries_keeps_its_distinct_embeddings_without_a_k_means_warning():
    """More rows than prototypes but fewer distinct ones (a file of repeated queries): the distinct
    embeddings are the bank, where k-means would warn that it found fewer clusters than asked for."""
    rng = np.random.default_rng(2)
    distinct = rng.normal(size=(3, 8))
    repeated = distinct[np.arange(2 * ood.KNN_PROTOTYPES) % 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bank = ood.fit_knn(repeated, np.zeros(len(repeated), dtype=int))["knn_bank"].astype(np.float32)
    assert bank.shape == (3, 8)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(np.sort(bank, axis=0), np.sort(unit(distinct - repeated.mean(0)), axis=0), atol=2e-3)


def test_knn_msp_adds_the_two_scores_standardised_on_in_scope_queries():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(40, 32))
    val_features, val_probs = train[:30] + 0.1 * rng.normal(size=(30, 32)), rng.dirichlet(np.ones(4), size=30)
    stats = ood.fit_knn(train)
    knn_val, msp_val = ood.knn(val_features, stats), 1 - val_probs.max(1)
    stats = ood.for_scoring({**stats, **ood.fit_combination(knn_val, msp_val)})
    combined = ood.score("knn+msp", val_probs, val_features, stats)
    expected = (knn_val - knn_val.mean()) / knn_val.std() + ood.COMBINED_WEIGHT * (msp_val - msp_val.mean()) / msp_val.std()
    np.testing.assert_allclose(combined, expected, rtol=1e-4, atol=1e-4)
    assert abs(combined.mean()) < 1e-4  # standardised on these very queries: centred on them
    # a query far from the training ones and hesitating between intents scores above every in-scope one
    far = ood.score("knn+msp", np.full((1, 4), 0.25), rng.normal(size=(1, 32)), stats)
    assert far[0] > combined.max()
    with pytest.raises(ModelError, match="knn_msp_scale"):
        ood.score("knn+msp", val_probs, val_features, ood.fit_knn(train))


def test_a_model_sure_of_every_validation_query_does_not_turn_a_99_percent_answer_away():
    """msp all but constant on validation (every query answered at 0.9999+): divided by its own tiny
    spread, a new query answered at 0.99 would score thousands of deviations out; msp's scale is at
    least MSP_STD_FLOOR, so it counts as one, like a kNN distance one deviation out."""
    knn_val = np.linspace(0.1, 0.3, 50)
    msp_val = np.full(50, 1e-5) + np.linspace(0, 1e-6, 50)
    stats = ood.fit_combination(knn_val, msp_val)
    assert stats["knn_msp_scale"][3] == pytest.approx(ood.MSP_STD_FLOOR)
    unsure = ood.combined(np.array([knn_val.mean()]), np.array([0.01]), stats)
    assert unsure[0] == pytest.approx(ood.COMBINED_WEIGHT * (0.01 - msp_val.mean()) / ood.MSP_STD_FLOOR, rel=1e-3) and unsure[0] < 1


def test_relative_mahalanobis_is_the_nearest_intents_distance_minus_the_backgrounds():
    """Ren et al. (2021): the squared Mahalanobis distance to the nearest intent (shared covariance) minus
    that to one Gaussian of all training embeddings. A query far along a direction every intent varies
    in (the first axis, wide for all) loses that distance again; one between two intents keeps it.
    Plain Mahalanobis ranks them the other way round."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 40)
    centres = np.array([[0, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]], dtype=float)
    features = centres[labels] + rng.normal(size=(120, 4)) * [6.0, 1.0, 1.0, 0.3]
    stats = ood.fit(features, labels, 3)
    queries = np.array([[30.0, 0, 0, 0], [0, 2, 2, 0], [0, 4, 0, 0]])
    within = LedoitWolf().fit(features - centres[labels]).precision_
    background = LedoitWolf().fit(features)
    nearest = np.min([np.einsum("ij,jk,ik->i", queries - c, within, queries - c) for c in features_means(features, labels)], axis=0)
    to_background = np.einsum("ij,jk,ik->i", queries - background.location_, background.precision_, queries - background.location_)
    rmd = ood.relative_mahalanobis(queries, stats)
    np.testing.assert_allclose(rmd, nearest - to_background, rtol=1e-3, atol=0.05)  # float32 scoring
    assert rmd[1] > 5 > 0 > rmd[0] and rmd[2] < 0  # between intents; along the shared axis; an intent's centre
    plain = ood.mahalanobis(queries, stats)
    assert plain[0] > 2 * plain[1]
    # knn+msp+rmd: knn+msp plus RMD_WEIGHT times rmd standardised on the in-scope (validation) queries,
    # where positive: the query far along the shared axis, whose rmd is below the in-scope queries' mean, is
    # scored by knn+msp alone, not pulled into scope by it
    probs = rng.dirichlet(np.ones(3), size=120)
    stats = ood.for_scoring({**stats, **ood.fit_scales(probs, features, stats)})
    rmd_val = ood.relative_mahalanobis(features, stats)
    expected = ood.score("knn+msp", probs, features, stats) + ood.RMD_WEIGHT * np.maximum((rmd_val - rmd_val.mean()) / rmd_val.std(), 0)
    np.testing.assert_allclose(ood.score("knn+msp+rmd", probs, features, stats), expected, rtol=1e-4, atol=1e-4)
    far = np.full((3, 3), 1 / 3)
    assert ood.relative_mahalanobis(queries[:1], stats)[0] < rmd_val.mean()
    np.testing.assert_allclose(ood.score("knn+msp+rmd", far[:1], queries[:1], stats), ood.score("knn+msp", far[:1], queries[:1], stats), rtol=1e-6)
    assert ood.score("knn+msp+rmd", far[1:2], queries[1:2], stats)[0] > ood.score("knn+msp", far[1:2], queries[1:2], stats)[0]
    with pytest.raises(ModelError, match="background"):
        ood.score("knn+msp+rmd", probs, features, {k: v for k, v in stats.items() if k != "background"})


def test_every_score_at_once_equals_each_alone_and_takes_the_knn_distance_once(monkeypatch):
    """Calibration scores the validation queries and the examples with every score; the kNN product,
    the dearest part, is shared by three of them and is computed once."""
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], 30)
    features = np.eye(3, 8)[labels] * 3 + rng.normal(size=(90, 8))
    probs = rng.dirichlet(np.ones(3), size=90)
    stats = ood.fit(features, labels, 3)
    stats = ood.for_scoring({**stats, **ood.fit_scales(probs, features, stats)})
    alone = {name: ood.score(name, probs, features, stats) for name in ood.SCORES}
    calls = []
    real_knn = ood.knn
    monkeypatch.setattr(ood, "knn", lambda *args, **kwargs: calls.append(1) or real_knn(*args, **kwargs))
    together = ood.scores(list(ood.SCORES), probs, features, stats)
    assert len(calls) == 1 and set(together) == set(ood.SCORES)
    for name in ood.SCORES:
        np.testing.assert_allclose(together[name], alone[name], rtol=1e-6, err_msg=name)
    assert not np.allclose(together["knn+msp+rmd"], together["knn+msp"])
    with pytest.raises(ConfigError, match="unknown out-of-scope score"):
        ood.scores(["msp", "energy?"], probs, features, stats)


def features_means(features: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    return [features[labels == c].mean(0) for c in np.unique(labels)]


def test_embedding_scores_rank_a_far_away_query_above_the_training_queries(tiny_bert, tiny_data, tmp_path):
    """On the tiny random model only the embedding scores can be asked this: its classifier's
    probabilities carry no meaning (msp is checked on set probabilities above)."""
    run = tmp_path / "run"
    bankintent.train(**tiny_options(tiny_bert, tiny_data, run, method="linear-probe"))
    predictor = Predictor.load(run)
    in_scope = ["i lost my card", "my top-up failed", "what exchange rate do you use", "where is my new card"]
    far = "zxqv blorp 1234 %%% quantum chromodynamics lattice"
    logits, features = predictor.outputs(in_scope + [far])
    probs = softmax(logits / predictor.spec.temperature)
    for name in ("mahalanobis", "knn"):  # knn+msp: its msp half means nothing here (test above)
        values = predictor.oos_scores(probs, features, name)
        assert values[-1] > values[:-1].max(), name


def test_examples_choose_the_score_that_catches_the_most_of_them_at_the_threshold():
    val = np.linspace(0, 1, 101)
    # "msp": every example a little above the middle of the in-scope scores (a fair AUROC, none caught
    # at 95% coverage); "knn": half far above (caught), half below everything (a worse AUROC)
    val_scores = {"msp": val, "knn": val}
    examples = {"msp": np.full(10, 0.6), "knn": np.r_[np.full(5, 2.0), np.full(5, -1.0)]}
    assert ood.auroc(val, examples["msp"]) > ood.auroc(val, examples["knn"])
    assert ood.choose(val_scores, examples, 0.95) == "knn"
    # the same share caught: the better AUROC; the same scores: the default
    examples = {"msp": np.r_[np.full(5, 2.0), np.full(5, 0.6)], "knn": examples["knn"]}
    assert ood.choose(val_scores, examples, 0.95) == "msp"
    same = {name: val for name in (ood.DEFAULT_SCORE, "msp")}
    assert ood.choose(same, {name: np.full(3, 0.5) for name in same}, 0.95) == ood.DEFAULT_SCORE


def test_scores_thresholds_and_auroc():
    probs = np.array([[0.9, 0.1], [0.5, 0.5]])
    np.testing.assert_allclose(ood.score("msp", probs, None, {}), [0.1, 0.5])
    with pytest.raises(ModelError, match="ood.safetensors"):
        ood.score("mahalanobis", probs, np.zeros((2, 3)), {})
    with pytest.raises(ConfigError, match="unknown out-of-scope score 'energy'"):
        ood.score("energy", probs, None, {})
    scores = np.arange(100) / 100
    threshold = ood.threshold_for_coverage(scores, 0.95)
    assert (scores <= threshold).mean() == 0.95
    assert ood.threshold_for_coverage(scores, 1.0) == 0.99
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="oos_coverage"):
            ood.threshold_for_coverage(scores, bad)
    assert ood.auroc(np.array([0.1, 0.2]), np.array([0.3, 0.9])) == 1.0
    assert ood.auroc(np.array([0.1, 0.5]), np.array([0.3, 0.9])) == 0.75


def test_training_threshold_answers_its_coverage_of_new_queries_within_the_interval():
    """Set on n validation scores, the threshold answers at least the target share of new scores drawn
    from the same distribution on average (the plain quantile answers about 1/n less), and that share lies
    in the 90% interval nine times in ten; with too few validation queries it answers all of them."""
    rng = np.random.default_rng(0)
    n, draws = 27, 4000
    shares, plain = np.empty(draws), np.empty(draws)
    for i in range(draws):  # uniform scores: the share of new queries at most a threshold is the threshold
        scores = rng.random(n)
        shares[i] = ood.threshold_for_new_queries(scores, 0.95)
        plain[i] = ood.threshold_for_coverage(scores, 0.95)
    assert shares.mean() >= 0.95 > plain.mean() + 0.02  # 27/28 against 26/28
    low, high = ood.coverage_interval(n, 0.95)
    assert 0.88 < low < 0.91 and high > 0.99
    assert 0.88 < ((shares >= low) & (shares <= high)).mean() < 0.92
    assert ood.new_query_rank(1001, 0.95) == 952 and ood.new_query_rank(19, 0.95) == 19 and ood.new_query_rank(20, 0.95) == 20
    assert ood.threshold_for_new_queries(np.arange(9.0), 0.95) == 8.0  # 9 queries: the highest
    for n, expected in ((100, 96 / 101), (8, 8 / 9)):  # uncapped: at least the target; too few queries: n / (n + 1), short of it
        simulated = np.mean([ood.threshold_for_new_queries(rng.random(n), 0.95) for _ in range(draws)])
        assert ood.expected_coverage(n, 0.95) == expected and abs(simulated - expected) < 0.005
    narrow = ood.coverage_interval(1001, 0.95)
    assert narrow[0] > 0.93 and narrow[1] < 0.97


def test_coverage_curve_drops_the_least_confident_first():
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    correct = np.array([True, True, False, False])
    rows = {row["coverage"]: row for row in ood.coverage_curve(scores, correct, np.array([0.25, 0.35, 0.5]), coverages=(1.0, 0.5))}
    assert rows[1.0]["accuracy"] == 0.5 and rows[1.0]["oos_recall"] == 1 / 3
    assert rows[0.5]["accuracy"] == 1.0 and rows[0.5]["threshold"] == 0.2 and rows[0.5]["oos_recall"] == 1.0
    no_examples = ood.coverage_curve(scores, correct, None, coverages=(1.0,))
    assert np.isnan(no_examples[0]["oos_recall"]) and no_examples[0]["accuracy"] == 0.5


@pytest.fixture(scope="module")
def run(tiny_bert, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ood_run") / "run"
    bankintent.train(**tiny_options(tiny_bert, tiny_data, out, method="linear-probe"))
    return out


def test_threshold_returns_out_of_scope_where_it_should(run):
    texts = ["where is my new card", "what exchange rate do you use", "my card was stolen"]
    predictor = Predictor.load(run)
    logits, features = predictor.outputs(texts)
    scores = predictor.oos_scores(softmax(logits / predictor.spec.temperature), features, "mahalanobis")
    order = np.argsort(scores)
    middle = float((scores[order[1]] + scores[order[2]]) / 2)  # the highest-scoring query alone crosses it
    plain = Predictor.load(run, oos_threshold=1e30).predict(texts)  # no query is out of scope
    results = Predictor.load(run, oos_score="mahalanobis", oos_threshold=middle).predict(texts)
    for i, (result, reference) in enumerate(zip(results, plain)):
        assert {"text", "intent", "confidence", "out_of_scope", "oos_score", "oos_threshold", "closest_intent", "top_k"} <= set(result)
        assert result["top_k"] == reference["top_k"] and result["closest_intent"] == reference["intent"]
        assert result["out_of_scope"] == (i == order[2])
        assert result["confidence"] == (None if i == order[2] else reference["confidence"])
        assert result["intent"] == ("out_of_scope" if i == order[2] else reference["intent"])
        assert not reference["out_of_scope"] and reference["intent"] == reference["top_k"][0]["intent"]
    everything = Predictor.load(run, oos_score="msp", oos_threshold=-1.0).predict(texts)
    assert [r["intent"] for r in everything] == ["out_of_scope"] * 3
    with pytest.raises(ConfigError, match="unknown out-of-scope score"):
        Predictor.load(run, oos_score="distance")


def test_the_model_folder_carries_the_default_score_and_thresholds(run):
    spec = json.loads((run / "adapter" / "bankintent.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert spec["oos_score"] == metrics["oos_score"]
    assert metrics[f"oos_auroc_{metrics['oos_score']}"] == max(metrics[f"oos_auroc_{s}"] for s in ood.SCORES)
    assert set(spec["oos_thresholds"]) == set(ood.SCORES)
    assert spec["oos_thresholds"][spec["oos_score"]] == metrics["oos_threshold"]
    assert (run / "adapter" / "ood.safetensors").is_file()
    predictor = Predictor.load(run)
    assert (predictor.oos_score, predictor.oos_threshold) == (spec["oos_score"], metrics["oos_threshold"])
    assert 0 <= metrics["oos_recall"] <= 1 and metrics["oos_examples_size"] == len(ood.probe_set())
    assert metrics["oos_recall_optimistic"] is False  # the probe set measures, it does not choose


@pytest.mark.e2e
def test_real_model_sends_unrelated_queries_to_the_fallback(banking77_subset, tmp_path):
    """5 Banking77 intents, 1 epoch of the default recipe on the embedded MiniLM."""
    out = tmp_path / "run"
    metrics = bankintent.train(data=str(banking77_subset), output=str(out), epochs=1, probe_c=[10.0])
    assert metrics[f"oos_auroc_{metrics['oos_score']}"] > 0.9
    assert metrics["oos_recall"] > 0.7
    results = Predictor.load(out).predict(["what's the weather like in Paris tomorrow", "tell me a joke",
                                           "my card still hasn't arrived", "I lost my card yesterday"])
    assert [r["out_of_scope"] for r in results] == [True, True, False, False]
    assert [r["intent"] for r in results[2:]] == ["card_arrival", "lost_or_stolen_card"]


def test_banking77_like_intents():
    assert ood.banking77_like(["card_arrival", "exchange_rate"])
    assert not ood.banking77_like(["card_arrival", "loan_info"]) and not ood.banking77_like([])
    assert len(ood.banking77_intents()) == 77


# A bank's own intents, which some probe-set queries ("how do I open a joint account", "what time does
# the branch open", "how do I apply for a mortgage") belong to.
CUSTOM = {
    "loan_info": ["how do I apply for a mortgage", "what is the interest rate on a personal loan", "can I borrow money",
                  "loan repayment options", "how much can I borrow for a house"],
    "open_account": ["how do I open a joint account", "I want to open a savings account", "open a new account please",
                     "what do I need to open an account", "can I open an account online"],
    "branch_hours": ["what time does the branch open", "when does the branch close", "is the branch open on saturday",
                     "branch opening hours", "are you open on sundays"],
}


def _custom_data(folder, oos_rows=()):
    rows = [(f"{prefix}{text}", intent) for intent, texts in CUSTOM.items() for text in texts for prefix in ("", "hi ")]
    write_csv(folder / "train.csv", rows + [(text, "out_of_scope") for text in oos_rows])
    return folder


def test_custom_intents_are_not_judged_against_the_banking_probe_set(tiny_bert, tmp_path):
    probe = {q.lower() for q in ood.probe_set()}
    assert {"how do i apply for a mortgage", "what time does the branch open on saturday",
            "how do i open a joint account with my wife"} <= probe  # the overlap this test is about
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    metrics = bankintent.train(**tiny_options(tiny_bert, _custom_data(data), out, method="linear-probe"))
    assert metrics["oos_examples"] == "none" and metrics["oos_examples_size"] == 0
    assert metrics["oos_score"] == ood.DEFAULT_SCORE and metrics["oos_score_reason"] == ood.DEFAULT_REASON + ood.NO_EXAMPLES
    assert metrics["oos_auroc_msp"] is None and metrics["oos_auroc_mahalanobis"] is None and metrics["oos_recall"] is None
    assert metrics["oos_threshold"] is not None  # the fallback still works, at the coverage rule's threshold
    table = pd.read_csv(out / "validation_coverage.csv")
    assert table.oos_recall.isna().all()
    predictor = Predictor.load(out)
    logits, features = predictor.outputs(["open a new account please"])
    summary = coverage_report(predictor, np.array([True]), logits, features, tmp_path / "eval", "test")
    assert summary["oos_examples_size"] == 0 and summary["oos_recall"] is None and summary["auroc"] == {}


def test_user_out_of_scope_examples_choose_the_score(tiny_bert, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _custom_data(data, ["what's the weather tomorrow", "tell me a joke", "who won the football", "play some music"])
    (tmp_path / "more.txt").write_text("book a flight to Rome\nhow tall is the Eiffel Tower\n")
    in_scope = [(text, intent) for intent, texts in CUSTOM.items() for text in texts]
    write_csv(data / "test.csv", in_scope + [("recommend a film", "out_of_scope"), ("what's the capital of Peru", "out_of_scope")])
    out = tmp_path / "run"
    metrics = bankintent.train(**tiny_options(tiny_bert, data, out, method="linear-probe", oos_file=str(tmp_path / "more.txt")))
    caught = [a["out_of_scope"] for a in Predictor.load(out).predict(["recommend a film", "what's the capital of Peru"])]
    answers = Predictor.load(out).predict([text for text, _ in in_scope])  # what the service gives the in-scope test queries
    answered = np.array([not a["out_of_scope"] for a in answers])
    right = answered & np.array([a["closest_intent"] == intent for a, (_, intent) in zip(answers, in_scope)])
    assert metrics["test_answered"] == answered.mean() and metrics["test_answered_right"] == right.mean()
    assert metrics["test_served_accuracy"] == pytest.approx((right.sum() + sum(caught)) / (len(in_scope) + 2))
    assert f"answered with an intent {answered.mean():.1%} of the time and with the right one {right.mean():.1%}" in (
        out / "adapter" / "README.md").read_text()
    assert metrics["test_oos_recall"] == np.mean(caught) and metrics["test_oos_examples"] == "test.csv: 2 rows labelled 'out_of_scope'"
    assert f"On the test file's own, test.csv: 2 rows labelled 'out_of_scope', it catches {np.mean(caught):.1%}." in (
        out / "adapter" / "README.md").read_text()  # held out: not the examples that chose the score
    from bankintent.report import write_report

    report = write_report([out], tmp_path / "report")[1].read_text()
    assert re.search(r"\| Out-of-scope examples \| Caught \| Caught on test \|", report)
    assert re.search(rf"\| \d+\.\d% \* \| {100 * np.mean(caught):.1f}% \|", report)  # optimistic, then held out
    assert metrics["oos_examples"] == "train.csv: 4 rows labelled 'out_of_scope'; more.txt: 2 queries"
    assert metrics["oos_examples_size"] == 6 and metrics["num_labels"] == 3  # out_of_scope is not an intent
    auroc = {name: metrics[f"oos_auroc_{name}"] for name in ood.SCORES}
    assert all(0 <= v <= 1 for v in auroc.values())
    assert metrics["oos_score_reason"] == f"catches the most of {metrics['oos_examples']} at the threshold"
    assert metrics["oos_recall_optimistic"] is True  # the same examples chose the score
    assert metrics["oos_recall"] in {k / 6 for k in range(7)}
    assert json.loads((out / "adapter" / "labels.json").read_text()) == ["branch_hours", "loan_info", "open_account"]
    from bankintent.evaluation import evaluate_run  # evaluate measures on the same examples: it says so too

    write_csv(data / "test.csv", in_scope)  # no out-of-scope row
    summary = evaluate_run(out, output=tmp_path / "evaluation")
    assert summary["out_of_scope"]["oos_examples_size"] == 6 and summary["out_of_scope"]["oos_recall_optimistic"] is True
