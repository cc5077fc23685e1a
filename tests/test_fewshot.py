"""Few-shot (issue 15): data of a few examples per intent trains with the default command (no validation
split carved, choices cross-validated, calibration cross-fitted); ``--shots``; the ``contrastive`` method."""

import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from bankintent import Predictor, resolve_config, train
from bankintent.cli import build_parser, main
from bankintent.config import AUTO, for_data
from bankintent.errors import ConfigError, DataError
from bankintent.contrastive import PAIR_BUDGET, pairs, pairs_per_query
from bankintent.data import query_key, run_splits
from bankintent.training import CROSS_FITTED, CROSS_FITTED_OUT_OF_FOLD
from conftest import INTENTS, tiny_options, write_csv, write_tiny_data

OOS_FIELDS = ("oos_score", "oos_threshold", "oos_method")


@pytest.fixture(scope="module")
def three_shot(tmp_path_factory):
    """The 4 tiny intents with 3 training examples each (12 rows: the old code refused them)."""
    return write_tiny_data(tmp_path_factory.mktemp("three_shot"), 3)


def test_the_temperature_rule_counts_the_data_s_own_queries_not_the_copies_training_adds(tiny_bert, tmp_path):
    """47 queries given, a thin intent's repeated past 50, and a copy of a row: too few to fit a temperature
    by likelihood (docs/results/fewshot/levers/temperature-rule-own-queries)."""
    import csv

    (tmp_path / "data").mkdir()
    data = write_tiny_data(tmp_path / "data", 14)
    rows = list(csv.reader(open(data / "train.csv")))
    thin = [row for row in rows[1:] if row[1] == "top_up_failed"][:5]
    given = [row for row in rows[1:] if row[1] != "top_up_failed"] + thin + thin[:1]  # 48 rows, a copy among them
    write_csv(data / "train.csv", given)
    distinct = len({(query_key(text), label) for text, label in given})
    assert distinct < len(given) == 48
    metrics = train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, data, tmp_path / "run")))
    assert metrics["train_size"] >= 50 and metrics["temperature_rule"] == "accuracy"
    assert re.match(rf"\d+ training queries' out-of-fold probe logits, of which {distinct} the data's own queries, fewer than 50",
                    metrics["temperature_note"])


def test_three_examples_per_intent_train_with_lpft(tiny_bert, three_shot, tmp_path):
    metrics = train(resolve_config(None, method="lpft", **tiny_options(tiny_bert, three_shot, tmp_path, epochs=2, lr=5e-3)))
    assert metrics["method"] == "lpft" and metrics["val_size"] == 0
    assert metrics["train_size"] == 16 and metrics["intent_names_added"] == 4  # 12 rows and each intent's name
    assert metrics["validation"].startswith("none: small data (median 3 examples per intent")
    assert metrics["val_accuracy"] is None and metrics["test_accuracy"] is not None
    assert metrics["optimizer_steps"] == 2  # no early stopping: the recipe's 2 epochs of 1 step (12 rows, batches of 16)
    assert metrics["epochs_run"] == 2 and metrics["averaged_epochs"] == 2
    history = pd.read_csv(tmp_path / "history.csv")  # each epoch's training loss; no validation to score
    assert list(history.epoch) == [1, 2] and history.train_loss.notna().all() and history.val_accuracy.isna().all()
    assert (tmp_path / "learning_curves.png").is_file()
    assert metrics["probe_c_chosen"] == "by cross-validation on the training split" and metrics["probe_val_accuracy"] is None
    # calibration cross-fitted on halves of the training split: a working out-of-scope fallback
    assert metrics["calibration"] == CROSS_FITTED and metrics["oos_threshold"] is not None
    # the held half of the 11 distinct queries given (6; the one written twice, both its rows in one half): the intents'
    assert metrics["oos_coverage_queries"] == 7  # names are no customer's queries
    assert metrics["temperature_rule"] == "accuracy" and "fewer than 50" in metrics["temperature_note"]
    assert metrics["temperature_fitted_on"] == "training queries of the held half (trained on)"  # lpft fine-tunes its head after the probe
    result = Predictor.load(tmp_path).predict(["my card was stolen"])[0]
    assert result["closest_intent"] in INTENTS and all(result[k] is not None for k in OOS_FIELDS)
    assert (tmp_path / "adapter" / "README.md").is_file()


def test_the_default_method_is_contrastive_for_small_data_and_lpft_otherwise(tiny_bert, three_shot, tmp_path):
    auto = resolve_config(None, lr=1e-3)
    assert auto.method == AUTO
    small, large = for_data(auto, few_examples=True), for_data(auto, few_examples=False)
    assert (small.method, small.epochs, small.average_weights, small.lr) == ("contrastive", 1, False, 1e-3)  # lr was given
    assert large == resolve_config(None, method="lpft", lr=1e-3)
    assert for_data(resolve_config(None, method="lora"), few_examples=True).method == "lora"  # a named method is kept
    metrics = train(resolve_config(None, **tiny_options(tiny_bert, three_shot, tmp_path, epochs=None)))
    assert metrics["method"] == "contrastive" and metrics["val_size"] == 0
    assert resolve_config(tmp_path / "config.yaml").method == "contrastive"  # the run's config says what ran


@pytest.mark.parametrize("setting, per_intent, added", [("auto", 3, 4), ("off", 3, 0), ("auto", 30, 0), ("on", 30, 4)])
def test_intent_names_join_the_training_queries_of_small_data(setting, per_intent, added, tiny_bert, tmp_path):
    """``auto`` adds each intent's name as a training query where the training split's median intent
    has fewer than 20 queries (3 here; 27 of 30 after the validation split is not)."""
    data = write_tiny_data(tmp_path, per_intent)
    metrics = train(resolve_config(None, method="linear-probe", intent_names=setting, **tiny_options(tiny_bert, data, tmp_path / "run")))
    assert metrics["intent_names_added"] == added and metrics["train_size"] + metrics["val_size"] == 4 * per_intent + added
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert ("added each intent's name as a query in words (4: `--intent-names`)" in card) == bool(added)
    assert f"({metrics['train_size'] - added} training queries)" in card  # the data's own, the names said apart


def test_small_training_file_beside_a_validation_file_chooses_on_it(tiny_bert, three_shot, tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text((three_shot / "train.csv").read_text())
    write_csv(data / "valid.csv", [(text, intent) for intent, texts in INTENTS.items() for text in texts])
    assert run_splits(resolve_config(None, data=str(data))).few_examples  # the auto method's contrastive, with a validation file too
    assert not run_splits(resolve_config(None, data=str(tiny_data))).few_examples  # 20 an intent: lpft
    metrics = train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, data, tmp_path / "run", probe_c=[0.1, 10.0])))
    assert metrics["val_size"] == 16 and metrics["val_accuracy"] is not None and "calibration" not in metrics
    assert metrics["probe_c_chosen"] == "on the validation split" and metrics["probe_val_accuracy"] == metrics["val_accuracy"]


def test_shots_flag_draws_k_per_intent(tiny_bert, tiny_data, tmp_path):
    args = build_parser().parse_args(["train", "--output", "o", "--shots", "5", "--shots-seed", "7"])
    assert (args.shots, args.shots_seed) == (5, 7)
    metrics = train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, tmp_path, shots=5, shots_seed=7)))
    assert metrics["shots"] == {"per_intent": 5, "seed": 7, "rows": 20, "of_rows": 80}
    assert metrics["train_size"] == 24 and metrics["intent_names_added"] == 4  # the draw and each intent's name
    assert metrics["val_size"] == 0  # 5 per intent is small data: no validation split carved
    default = train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, tmp_path / "default", shots=5, seed=3)))
    assert default["shots"]["seed"] == 3  # without --shots-seed, the run's seed draws


def test_a_label_with_one_example_is_a_one_line_error(tiny_bert, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", [("where is my card", "card_arrival"), ("card not here", "card_arrival"), ("i lost it", "lost")])
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", str(data), "--base-model", str(tiny_bert), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("error: ") and "label 'lost' has 1 example; every intent needs at least 2" in err[0]
    assert not (tmp_path / "run").exists()


def test_pairs_are_same_intent_seeded_and_counted():
    texts = ["a1", "a2", "a3", "b1", "b2", "c1"]
    labels = ["a", "a", "a", "b", "b", "c"]
    anchors, positives = pairs(texts, labels, 3, seed=0)
    intent = dict(zip(texts, labels))
    assert len(anchors) == 5 * 3  # c has one query: no pair
    assert all(intent[a] == intent[p] and a != p for a, p in zip(anchors, positives))
    assert Counter(anchors) == {"a1": 3, "a2": 3, "a3": 3, "b1": 3, "b2": 3}
    assert pairs(texts, labels, 3, seed=0) == (anchors, positives) and pairs(texts, labels, 3, seed=1) != (anchors, positives)


def test_pairs_per_query_shares_out_a_budget_within_1_and_4():
    """By default training draws about PAIR_BUDGET pairs, so a 10-shot run trains on as many as a 5-shot
    one rather than twice as many; a tiny data set keeps 4 a query, a large one 1."""
    assert pairs_per_query(16) == 4 and pairs_per_query(PAIR_BUDGET // 4) == 4  # 5 examples of 77 intents and names: 462
    assert pairs_per_query(847) == 2  # 10 examples of 77 intents and their names
    assert pairs_per_query(PAIR_BUDGET) == 1 and pairs_per_query(10 * PAIR_BUDGET) == 1 and pairs_per_query(0) == 4
    with pytest.raises(ConfigError, match="pairs_per_example must be positive"):
        resolve_config(None, method="contrastive", pairs_per_example=0)


def test_pairs_per_example_given_overrides_the_budget(tiny_bert, three_shot, tmp_path):
    metrics = train(resolve_config(None, method="contrastive", pairs_per_example=1,
                                   **tiny_options(tiny_bert, three_shot, tmp_path, lr=1e-3, batch_size=8)))
    assert metrics["contrastive_pairs"] == 12 + 4 and metrics["contrastive_pairs_per_query"] == 1


def test_two_examples_per_intent_train(tiny_bert, tmp_path):
    """The detector's half of two examples an intent holds one query an intent: training ended in
    numpy's LinAlgError (a covariance of zeros) after the whole run."""
    (tmp_path / "two").mkdir()
    data = write_tiny_data(tmp_path / "two", 2)
    metrics = train(resolve_config(None, method="linear-probe", intent_names="off", **tiny_options(tiny_bert, data, tmp_path / "run")))
    assert metrics["train_size"] == 8 and metrics["oos_threshold"] is not None
    answers = Predictor.load(tmp_path / "run").predict(["my card was stolen"])
    assert all(answers[0][k] is not None for k in OOS_FIELDS)


def test_contrastive_with_no_pair_to_train_on_is_the_linear_probe(tiny_bert, tmp_path, caplog):
    """One example per intent beside a validation file (names not added): no pair, so the encoder is the
    base's. The run said it had trained an epoch and saved the whole unchanged encoder beside the head."""
    (tmp_path / "one_shot").mkdir()
    data = write_tiny_data(tmp_path / "one_shot", 1)
    (tmp_path / "one_shot_valid").mkdir()
    (data / "valid.csv").write_text((write_tiny_data(tmp_path / "one_shot_valid", 3, seed=5) / "train.csv").read_text())
    options = tiny_options(tiny_bert, data, tmp_path / "run", lr=1e-3, batch_size=8)
    metrics = train(resolve_config(None, method="contrastive", intent_names="off", **options))
    assert "no pair to train on; the linear probe only" in caplog.text
    assert metrics["contrastive_pairs"] == 0 and metrics["epochs_run"] == 0 and metrics["trainable_pct"] < 1
    assert set(load_file(tmp_path / "run" / "adapter" / "model.safetensors")) == {"head.weight", "head.bias"}


def test_contrastive_trains_saves_loads_and_predicts(tiny_bert, three_shot, tmp_path):
    metrics = train(resolve_config(None, method="contrastive", **tiny_options(tiny_bert, three_shot, tmp_path, lr=1e-3, batch_size=8)))
    assert metrics["contrastive_pairs"] == (12 + 4) * 4 and metrics["contrastive_steps"] == 8  # 12 rows and 4 intent names
    assert metrics["contrastive_pairs_per_query"] == 4  # pairs_per_query(16): the default
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 0  # one epoch of pairs; the probe keeps no epoch
    assert metrics["trainable_pct"] == 100.0 and metrics["oos_threshold"] is not None
    assert not (tmp_path / "checkpoints").exists()
    saved = load_file(tmp_path / "adapter" / "model.safetensors")
    base = load_file(tiny_bert / "model.safetensors")
    name = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(saved[name], base[name.removeprefix("encoder.")])  # the encoder was fine-tuned
    assert {"head.weight", "head.bias"} <= set(saved)
    predictor = Predictor.load(tmp_path)
    assert predictor.spec.method == "contrastive"
    results = predictor.predict(["my card was stolen", "what exchange rate"], top_k=2)
    assert [len(r["top_k"]) for r in results] == [2, 2]
    assert all(r[k] is not None for r in results for k in OOS_FIELDS)
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "contrastive fine-tuning of the encoder" in card
    # small data: the calibration error is measured on queries the encoder trained on, and the card says so
    assert "(optimistic: the encoder trained on those queries; `bankintent evaluate RUN --data FILE`" in card
    assert json.loads((tmp_path / "metrics.json").read_text())["ece_optimistic"] is True


def test_a_small_data_run_without_a_test_file_is_evaluated_on_a_file_given_with_data(tiny_bert, three_shot, tmp_path, capsys):
    """Small data trains on every row: with no test.csv there is no split left to measure the model on,
    so evaluate says how to measure it (a file of labelled queries, --data FILE) instead of sending the
    user from --split test to --split validation and back, and then measures it on that file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text((three_shot / "train.csv").read_text())
    run = tmp_path / "run"
    metrics = train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, data, run)))
    # the probe is the final head: the temperature is fitted on its out-of-fold logits (too few here)
    assert metrics["calibration"] == CROSS_FITTED_OUT_OF_FOLD
    card = (run / "adapter" / "README.md").read_text()
    assert "expected calibration error on the training queries' out-of-fold probe logits" in card
    assert "optimistic: the encoder trained" not in card  # the encoder is the base's: out-of-fold logits are a probe's that never saw the query
    assert metrics["ece_optimistic"] is False
    # the card says what small data did, not what a validation split would have done
    assert "no validation split to choose an epoch on" in card and "held-out training queries (small data" in card
    assert "selected on validation" not in card and "chosen on validation" not in card
    assert metrics["temperature_fitted_on"] == "training queries' out-of-fold probe logits"
    assert metrics["temperature_note"].startswith("16 training queries' out-of-fold probe logits, fewer than 50: set so that")
    capsys.readouterr()
    predictor = Predictor.load(run)
    assert predictor.predict([]) == []  # nothing to answer, rather than numpy's error from inside
    with pytest.raises(DataError, match="no texts given"):
        predictor.probabilities([])
    for split in ("test", "validation"):
        with pytest.raises(SystemExit) as stop:
            main(["evaluate", str(run), "--split", split])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert stop.value.code != 0 and len(errors) == 1 and "Traceback" not in err
        assert "evaluate a file of labelled queries the model has not seen with --data FILE" in errors[0] and "--split" not in errors[0]
    report = tmp_path / "report"
    with pytest.raises(SystemExit):
        main(["report", str(run), "--output", str(report)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"bankintent evaluate {run} --data FILE" in errors[0] and not report.exists()
    held = write_csv(tmp_path / "held.csv", [(text, intent) for intent, texts in INTENTS.items() for text in texts]
                     + [("what is the weather tomorrow", "out_of_scope")])
    main(["evaluate", str(run), "--data", str(held)])
    summary = json.loads((run / "test_evaluation.json").read_text())
    assert summary["split"] == "test" and summary["queries"] == 16  # the out-of-scope row measures the fallback instead
    predictions = pd.read_csv(run / "test_predictions.csv")
    assert predictions.line.tolist() == list(range(2, 18))  # each query's line in held.csv (its header: line 1)
    intents = pd.read_csv(run / "test_per_intent.csv").set_index("intent")  # what each intent's users get, the fallback counted
    for intent, rows in predictions.groupby("label"):
        assert intents.answered[intent] == pytest.approx((~rows.out_of_scope).mean(), abs=1e-4)
        assert intents.answered_right[intent] == pytest.approx((rows.answer == intent).mean(), abs=1e-4)
    bins = np.minimum((predictions.confidence * 15).apply(np.ceil).astype(int) - 1, 14)  # ECE's 15 bins, (lo, hi]
    gaps = predictions.groupby(bins).apply(lambda b: len(b) * abs(b.correct.mean() - b.confidence.mean()))
    assert summary["ece"] == pytest.approx(gaps.sum() / 16, abs=1e-6)
    main(["report", str(run), "--output", str(report)])  # the report analyses the queries evaluate measured
    md = (report / "report.md").read_text()
    assert "| test | 16 | 4 |" in md
    # the runs table shows what evaluate measured, and says where it comes from
    accuracy = f"{summary['accuracy']:.2%}"
    assert f"| run | linear-probe | - | {accuracy} |" in md and "Test accuracy and macro-F1 of `run` (16 queries of `held.csv`): measured after training" in md
    assert "has changed since" not in md and metrics["data_record"]["train"] == 12  # 3 examples of 4 intents, as read
    assert f"(95.0%) | {100 * summary['out_of_scope']['coverage']:.1f}% |" in md  # the share evaluate's file got answered
    with open(data / "train.csv", "a") as rows:  # a labelled sheet merged in place, for a second run: the report read it as the first's
        rows.write("".join(f"travel abroad {i},travel_notice\n" for i in range(3)))
    main(["report", str(run), "--output", str(tmp_path / "report-after")])
    assert ("The data has changed since run `run (seed 42)`, analysed below, trained on it (then 12 training and 0 validation queries of 4 "
            "intents, now 15 and 0 of 5): the tables here are of the data as it is now.") in (tmp_path / "report-after" / "report.md").read_text()
    typo = write_csv(tmp_path / "typo.csv", [("where is my new card", "card_arival")])
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), "--data", str(typo)])
    assert f"{typo}: line 2: label 'card_arival' never seen in training" in capsys.readouterr().err


def test_with_small_data_a_trained_encoder_keeps_the_default_score_and_says_its_coverage_is_optimistic(tiny_bert, three_shot, tmp_path,
                                                                                                       caplog):
    """Small data sets the thresholds on training queries: with the encoder fine-tuned on them, the
    user's out-of-scope rows would choose the score whose threshold is most wrongly tight (a newcomer's
    Mahalanobis turned away a third of new in-scope queries while claiming 97% answered); with a
    frozen encoder (linear-probe) they still choose."""
    import shutil

    from bankintent import ood

    caplog.set_level("INFO")
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(three_shot / "test.csv", data / "test.csv")
    chatter = pd.DataFrame({"text": ["tell me a joke", "what's the weather", "do you do mortgages", "who won the match"],
                            "category": "out_of_scope"})
    pd.concat([pd.read_csv(three_shot / "train.csv"), chatter]).to_csv(data / "train.csv", index=False)
    tuned = train(resolve_config(None, method="contrastive", **tiny_options(tiny_bert, data, tmp_path / "tuned", lr=1e-3, batch_size=8)))
    assert tuned["oos_score"] == ood.DEFAULT_SCORE and tuned["oos_score_reason"] == ood.DEFAULT_REASON + ood.TRAINED_ON
    assert tuned["oos_coverage_optimistic"] is True and tuned["oos_recall_optimistic"] is False
    said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("out-of-scope: knn"))
    assert "they also chose the score" not in said  # the log agrees with metrics.json
    card = (tmp_path / "tuned" / "adapter" / "README.md").read_text()
    assert "queries the encoder trained on: it turns away more new in-scope queries than that" in card
    said = next(r for r in caplog.records if r.getMessage().startswith("the out-of-scope threshold, set for"))  # the log as the card
    assert said.levelname == "WARNING" and said.getMessage().startswith(
        "the out-of-scope threshold, set for 95% of in-scope queries, answers 100.0% of the 7 training queries of the held half "
        "(trained on), too few to leave one out: new in-scope queries lie farther from what the encoder learned")
    assert "interval" not in said.getMessage() and "bankintent evaluate RUN --data FILE" in said.getMessage()
    low, high = tuned["oos_coverage_interval"]  # from the held half's queries
    assert tuned["oos_coverage_queries"] == 7 and 0.5 < low < high < 1  # the held half of the rows given, not the intents' names
    assert tuned["oos_coverage_expected"] == 7 / 8  # too few to set a threshold for 95%: it answers each of them
    assert ("too few to answer 95% of new in-scope queries with an intent: it answers each of them, and 87.5% of new ones on "
            "average, queries the encoder trained on") in card and "90% interval" not in card  # trained on: no interval for new ones
    probe = train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, data, tmp_path / "probe")))
    assert probe["oos_score_reason"].startswith("catches the most of train.csv: 4 rows") and probe["oos_coverage_optimistic"] is False
    assert "they also chose the score" in [r.getMessage() for r in caplog.records if r.getMessage().startswith("out-of-scope: ")][-1]
