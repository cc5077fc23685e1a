"""The data tools: ``audit`` (label errors, conflicting duplicates, thin intents), ``discover`` (new
intents in out-of-scope traffic) and ``select`` (what to label next)."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from bankintent import cli
from bankintent.discover import cluster, keywords, representatives, terms
from bankintent.selection import margins, rank
from conftest import tiny_options, write_csv


def _rows(path):
    with open(path, newline="") as handle:
        return [(r["text"], r["category"]) for r in csv.DictReader(handle)]


def test_a_clear_label_error_is_flagged_where_the_intent_s_own_queries_are_surer_still():
    """Small, clean data: each intent's queries get 0.95 for it, so confident learning's threshold for
    intent 0 is 0.95 and three queries labelled 1 that the other folds give 0.85 to intent 0 were not
    counted by either rule; the threshold's cap counts them, least likely label first."""
    from bankintent.audit import likely_label_errors

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    probabilities = np.full((90, 3), 0.025)
    probabilities[np.arange(90), y] = 0.95
    planted = [31, 40, 52]
    for row, given in zip(planted, (0.1, 0.05, 0.12)):
        probabilities[row] = [0.85, given, 0.15 - given]
    probabilities += rng.uniform(0, 0.001, probabilities.shape)
    probabilities /= probabilities.sum(1, keepdims=True)
    ranked, quality = likely_label_errors(y, probabilities)
    assert ranked == [40, 31, 52] and quality[40] == pytest.approx(0.05, abs=0.002)


def test_a_label_the_other_folds_all_but_rule_out_is_flagged_though_no_intent_is_confident():
    """A newcomer's 7 intents of 17 queries: the probe, regularised, gives soft probabilities (each
    intent's own queries about 0.55), so no intent reached its threshold and cleanlab flagged nothing,
    though two queries got 0.05 for their label and about 0.5 for another. Below chance (1/7) with another
    intent first, they are flagged; a query merely unsure of its label (0.2) is not."""
    from bankintent.audit import likely_label_errors

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(7), 17)
    probabilities = np.full((119, 7), 0.45 / 6)
    probabilities[np.arange(119), y] = 0.55
    probabilities[3] = [0.05, 0.5, 0.09, 0.09, 0.09, 0.09, 0.09]  # labelled 0, about intent 1
    probabilities[20] = [0.3, 0.06, 0.4, 0.06, 0.06, 0.06, 0.06]  # labelled 1, about intent 2
    probabilities[40] = [0.35, 0.05, 0.2, 0.1, 0.1, 0.1, 0.1]  # labelled 2: unsure, not ruled out
    probabilities += rng.uniform(0, 0.001, probabilities.shape)
    probabilities /= probabilities.sum(1, keepdims=True)
    ranked, _ = likely_label_errors(y, probabilities)
    assert ranked == [3, 20]
    two = np.array([[0.7, 0.3], [0.3, 0.7], [0.52, 0.48]] * 10)  # two intents: below chance is merely a near miss
    assert likely_label_errors(np.array([0, 1, 1] * 10), two)[0] == []


@pytest.mark.e2e
def test_audit_finds_a_planted_label_error_a_conflicting_duplicate_and_a_thin_intent(banking77_subset, tmp_path):
    rows = _rows(banking77_subset / "train.csv")
    planted = next(i for i, (text, label) in enumerate(rows) if label == "exchange_rate")
    rows[planted] = (rows[planted][0], "card_arrival")  # an exchange-rate question labelled card_arrival
    copy_of = next(i for i, (_, label) in enumerate(rows) if label == "lost_or_stolen_card")
    rows.append((rows[copy_of][0], "top_up_failed"))  # the same text under another intent
    rows += [("How do I close my account?", "terminate_account"), ("Close my account please", "terminate_account")]
    rows.append(("my new card still has not arrived", "card_arival"))  # a label mistyped once: no fold can check it
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", rows)

    cli.main(["audit", "--data", str(data), "--output", str(tmp_path / "audit")])

    out = tmp_path / "audit"
    issues = pd.read_csv(out / "label_issues.csv")
    typo = issues.iloc[0]
    assert typo["rank"] == 1 and typo["label"] == "card_arival" and typo["suggested_label"] == "card_arrival" and typo["line"] == len(rows) + 1
    top = issues[issues["line"] == planted + 2].iloc[0]  # the header is line 1
    assert top["rank"] <= 4 and top["label"] == "card_arrival" and top["suggested_label"] == "exchange_rate"
    duplicates = pd.read_csv(out / "conflicting_duplicates.csv")
    assert {duplicates.iloc[0]["label_a"], duplicates.iloc[0]["label_b"]} == {"lost_or_stolen_card", "top_up_failed"}
    assert duplicates.iloc[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    intents = pd.read_csv(out / "intents.csv").set_index("intent")
    assert intents.loc["terminate_account", "examples"] == 2 and intents.loc["terminate_account", "flag"].startswith("thin")
    assert intents["flag"].fillna("").eq("").sum() == 5
    summary = json.loads((out / "audit.json").read_text())
    assert summary["queries"] == len(rows) and summary["intents"] == 7 and summary["thin_intents"] == 2
    pairs = pd.read_csv(out / "confused_pairs.csv")  # the command's line names the most confused pair, where overlaps show
    assert summary["most_confused"] == [pairs.intent_a[0], pairs.intent_b[0], int(pairs["count"][0])]
    markdown = (out / "summary.md").read_text()
    assert rows[planted][0][:40] in markdown and "<table>" in (out / "summary.html").read_text()
    assert (data / "train.csv").read_text().count("\n") == len(rows) + 1  # nothing changed in the data


def test_audit_errors_are_one_line(tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    with open(bad / "train.csv", "a") as handle:
        handle.write("where is my card,\"unclosed\n")
    with pytest.raises(SystemExit):
        cli.main(["audit", "--data", str(bad), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "train.csv: line 82: a double quote opens a text that is never closed" in error
    one = tmp_path / "one"
    one.mkdir()
    write_csv(one / "train.csv", [("hello", "greet"), ("hi", "greet")])
    with pytest.raises(SystemExit):
        cli.main(["audit", "--data", str(one), "--output", str(tmp_path / "out")])
    assert "at least 2 intents, found 1" in capsys.readouterr().err
    for threshold in ("-1", "2"):  # every pair is a near-duplicate at -1, none at 2: neither is a question worth asking
        with pytest.raises(SystemExit):
            cli.main(["audit", "--data", str(tiny_data), "--output", str(tmp_path / "out"), "--duplicate-threshold", threshold])
        assert f"--duplicate-threshold is a cosine similarity, above 0 and at most 1; got {float(threshold)}" in capsys.readouterr().err


def test_a_latin_1_locale_writes_utf_8_files(tiny_bert, tiny_data, tmp_path):
    """Under a Latin-1 locale, the audit's summary (its own '≥', an intent named 'frais_€') ended in a
    UnicodeEncodeError traceback: the package's text files are UTF-8 whatever the locale."""
    import subprocess
    import sys

    locales = tmp_path / "locales"
    locales.mkdir()
    built = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(locales / "en_US.ISO-8859-1")], capture_output=True)
    if built.returncode not in (0, 1) or not (locales / "en_US.ISO-8859-1").exists():  # 1: built, with warnings
        pytest.skip("no localedef to build a Latin-1 locale with")
    data = tmp_path / "données"
    shutil.copytree(tiny_data, data)
    with open(data / "train.csv", "a", encoding="utf-8") as handle:
        handle.write("".join(f"frais de tenue de compte {i} €,frais_€\n" for i in range(6)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING")}
    env.update(LOCPATH=str(locales), LANG="en_US.ISO-8859-1", LC_ALL="en_US.ISO-8859-1")
    out = tmp_path / "audité"
    done = subprocess.run([sys.executable, "-m", "bankintent.cli", "audit", "--data", str(data), "--output", str(out),
                           "--base-model", str(tiny_bert)], capture_output=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-2000:]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "≥" in summary and "frais_€" in summary


def test_audit_says_what_training_says_of_the_labels(tmp_path, caplog):
    """A label written 'Travel_Notice ' beside 'travel_notice': training warned of two intents that
    differ only in case, the audit listed the variant as a thin intent only."""
    from bankintent.audit import read_labelled

    write_csv(tmp_path / "train.csv", [(f"travel {i}", "travel_notice") for i in range(6)] + [(f"fee {i}", "fees") for i in range(6)]
              + [("going abroad", "Travel_Notice"), ("in spain next week", "Travel_Notice")])
    assert len(read_labelled(str(tmp_path)).examples) == 14  # read as training reads it, nothing dropped
    assert "labels 'Travel_Notice', 'travel_notice' differ only in case, accents or separators and train as 2 intents" in caplog.text
    caplog.clear()  # with a validation file, its rows are counted too, and the warning names both files
    write_csv(tmp_path / "valid.csv", [("travel soon", "travel_notice"), ("a fee", "fees"), ("off to rome", "travel_notce")])
    assert len(read_labelled(str(tmp_path)).examples) == 17
    assert (f"{tmp_path / 'train.csv'} and valid.csv: label 'travel_notce' (1 row) is spelt almost as 'travel_notice' (7 rows)"
            in caplog.text)


def test_thin_intents_of_few_shot_data_are_those_much_thinner_than_the_rest():
    from bankintent.audit import MIN_EXAMPLES, thin_floor

    assert thin_floor(pd.Series([117, 120, 30])) == 0.5 * 117 and thin_floor(pd.Series([12, 12, 14])) == MIN_EXAMPLES
    assert thin_floor(pd.Series([5, 6, 5, 7, 1])) == 2.5  # every intent under 8: only the one of 1 example is thin


def _blobs(rng, centres, per, noise=0.05):
    features = np.concatenate([c + noise * rng.standard_normal((per, len(c))) for c in centres])
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def test_two_planted_clusters_are_separated_and_stragglers_left_out():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:2]
    features = np.concatenate([_blobs(rng, centres, 20), np.eye(16)[5:7]])  # two stragglers far from both
    found = cluster(features, min_size=5)
    assert set(found[:20]) == {0} and set(found[20:40]) == {1} and list(found[40:]) == [-1, -1]
    texts = ["raise my card limit"] * 20 + ["change my home address"] * 20 + ["weather", "joke"]
    words = keywords(texts, found)
    assert any("limit" in w for w in words[0]) and any("address" in w for w in words[1]) and not set(words[0]) & set(words[1])


def test_copies_of_one_query_are_one_query_to_the_minimum_size():
    """Logs repeat a query: twelve copies of "hi" are one phrasing, not a group of twelve, while five
    distinct phrasings of one request are; rows of a cluster still count every copy."""
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:2]
    features = np.concatenate([np.repeat(centres[:1], 12, axis=0), _blobs(rng, centres[1:], 5)])
    keys = ["hi"] * 12 + [f"request {i}" for i in range(5)]
    assert list(cluster(features, min_size=5, keys=keys)) == [-1] * 12 + [0] * 5
    assert list(cluster(features, min_size=5)) == [0] * 12 + [1] * 5  # without keys every row is a query
    assert list(cluster(features, min_size=1, keys=keys)) == [0] * 12 + [1] * 5  # ordered by rows, copies counted
    found = cluster(features, min_size=1, keys=keys)
    texts = ["hi", "Hi", "HI"] * 4 + [f"request {i}" for i in range(5)]
    shown = representatives(texts, features, found, keys)  # one text of each query: "hi", "Hi" and "HI" are one
    assert shown[0] == ["hi"] and len(shown[1]) == 3 and all(text.startswith("request") for text in shown[1])


def test_keywords_leave_out_asking_words_and_a_plural_of_a_word_shown():
    texts = ["does my card work abroad", "does the card work in spain", "cards abroad", "did my card work abroad"] + ["home address"] * 4
    words = keywords(texts, np.array([0] * 4 + [1] * 4))
    assert "does" not in " ".join(words[0]) and "did" not in " ".join(words[0])
    assert "card" in words[0] and "cards" not in words[0]


def test_keywords_pair_only_neighbouring_words_of_one_query():
    """A pair of words is two neighbours in one query: not across queries ("limit limit"), a dropped
    stop word ("fee using" from "fee for using") or punctuation; contractions are not words ("didn",
    "won"); a term whose words are shown already is passed over."""
    assert terms("I didn't get a fee for using my card, top-up failed") == [
        "fee", "using", "card", "top-up", "failed", "top-up failed"]
    assert terms("don’t block my card's PIN at the café") == ["block", "card", "pin", "café", "card pin"]
    texts = ["my card limit", "limit is too low", "raise limit please", "card limit higher",
             "change my home address", "new address", "address changed", "update my address"]
    found = np.array([0] * 4 + [1] * 4)
    words = keywords(texts, found)
    assert words[0][0] == "limit" and "limit limit" not in words[0] and "address" in words[1]
    for k in (0, 1):  # each term shows a word the terms above it do not
        assert all(set(term.split()) - {w for above in words[k][:i] for w in above.split()} for i, term in enumerate(words[k]))
    words = keywords(["exchange rate", "the exchange rate", "exchange rate today", "home address"] * 2, np.array([0, 0, 0, 1] * 2))
    assert words[0][:2] == ["exchange", "exchange rate"] and "rate" not in words[0]  # ties in the terms' order


def test_select_prefers_uncertain_queries_spreads_them_and_is_deterministic():
    rng = np.random.default_rng(0)
    n = 100
    probabilities = np.full((n, 3), 0.0)
    probabilities[:, 0] = np.linspace(0.99, 0.6, n)  # margins fall along the rows...
    probabilities[:, 1] = 1 - probabilities[:, 0]
    probabilities[90:, :2] = [[0.5, 0.5]] * 10  # ...and the last 10 are the least certain, and near-copies
    features = rng.standard_normal((n, 8))
    features[90:] = features[90] + 1e-4 * rng.standard_normal((10, 8))
    picked = rank(probabilities, features, budget=5, seed=1)
    assert len(picked) == 5 and len(set(picked.tolist())) == 5
    assert sum(i >= 90 for i in picked) == 1  # one of the near-copies, not five
    assert all(margins(probabilities)[picked] <= np.sort(margins(probabilities))[15])  # from the 3 x 5 least certain
    assert picked[0] >= 90  # the least certain first
    assert np.array_equal(picked, rank(probabilities, features, budget=5, seed=1))
    assert list(rank(probabilities, features, budget=5, candidates=1)) == list(range(90, 95))  # uncertainty alone


@pytest.fixture(scope="module")
def subset_run(banking77_subset, tmp_path_factory):
    """A linear probe of the real embedded model on 5 Banking77 intents (seconds to train)."""
    out = tmp_path_factory.mktemp("subset_run")
    cli.main(["train", "--data", str(banking77_subset), "--method", "linear-probe", "--output", str(out), "--overwrite"])
    return out


@pytest.mark.e2e
def test_discover_separates_two_intents_the_model_never_saw(subset_run, tmp_path, capsys):
    from conftest import BANKING77

    unseen = ("apple_pay_or_google_pay", "terminate_account")  # not among the run's 5 intents
    rows = [row for row in _rows(BANKING77 / "test.csv") if row[1] in unseen]
    write_csv(tmp_path / "traffic.csv", rows)
    cli.main(["discover", str(subset_run), "--input", str(tmp_path / "traffic.csv"), "--output", str(tmp_path / "out"), "--all"])

    queries = pd.read_csv(tmp_path / "out" / "queries.csv")
    assert len(queries) == len(rows) and set(queries["text"]) == {text for text, _ in rows}
    queries["intent"] = queries["text"].map(dict(rows))
    for intent in unseen:  # most of each intent's queries share one cluster, which holds few of the other's
        main = queries[queries.intent == intent]["cluster"].mode()[0]
        members = queries[queries.cluster == main]
        assert main >= 0 and (members.intent == intent).mean() >= 0.9
        assert (queries[queries.intent == intent]["cluster"] == main).mean() >= 0.6
    clusters = pd.read_csv(tmp_path / "out" / "clusters.csv")
    assert clusters["size"].is_monotonic_decreasing and clusters["size"].min() >= 5
    assert any("pay" in k for k in clusters["keywords"]) and (tmp_path / "out" / "map.png").stat().st_size > 10_000
    found = json.loads((tmp_path / "out" / "discover.json").read_text())  # the counts add up
    assert found["in_clusters"] == clusters["size"].sum() == (queries["cluster"] >= 0).sum()
    assert found["in_clusters"] + found["unclustered"] == found["clustered_queries"] == len(rows)
    assert (f"every query grouped: {found['clusters']} candidate intents of {found['in_clusters']} queries, "
            f"{found['unclustered']} left unclustered") in capsys.readouterr().out


@pytest.mark.e2e
def test_select_cli_writes_a_deterministic_labelling_file(subset_run, banking77_subset, tmp_path):
    from conftest import BANKING77

    intents = {label for _, label in _rows(banking77_subset / "test.csv")}
    tested = [text for text, _ in _rows(banking77_subset / "test.csv")]  # the run's test queries, the first 20 of each intent
    new = [text for intent in sorted(intents) for text in [t for t, label in _rows(BANKING77 / "test.csv") if label == intent][20:40]]
    queries = tmp_path / "pool.txt"  # 100 new queries, then the run's test queries and a copy: left out
    queries.write_text("\n".join(new + tested[:5] + [new[0].upper()]) + "\n\n")
    for name in ("a.csv", "b.csv"):
        cli.main(["select", str(subset_run), "--input", str(queries), "--budget", "10", "--output", str(tmp_path / name)])
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert a.equals(b) and len(a) == 10 and list(a["rank"]) == list(range(1, 11))
    assert list(a.columns) == ["rank", "row", "text", "predicted_intent", "out_of_scope", "confidence", "margin", "label"]
    assert a["text"].is_unique and not set(a["text"]) & set(tested)
    from bankintent import Predictor

    answers = Predictor.load(subset_run).predict(list(a["text"]))  # the fallback's answer, beside the closest intent
    assert list(a["out_of_scope"]) == [x["out_of_scope"] for x in answers]
    assert list(a["predicted_intent"]) == [x["closest_intent"] for x in answers]
    from bankintent.selection import select

    summary = select(subset_run, queries, 10, tmp_path / "c.csv")
    assert summary["median_margin_selected"] < summary["median_margin_all"] and summary["queries"] == 100
    import json
    import shutil

    sharp = tmp_path / "sharp"  # a model right on every training query gets a sharp temperature: every margin rounds to 1
    shutil.copytree(subset_run, sharp)
    spec = json.loads((sharp / "adapter" / "bankintent.json").read_text())
    (sharp / "adapter" / "bankintent.json").write_text(json.dumps({**spec, "temperature": 1e-4}))
    select(sharp, queries, 10, tmp_path / "d.csv")
    texts = queries.read_text().split("\n")[:100]
    logits = Predictor.load(subset_run).outputs(texts)[0]
    uncertain = {texts[i] for i in np.argsort(margins(logits))[:30]}  # the 3 x 10 candidates: it took the file's first 30
    assert set(pd.read_csv(tmp_path / "d.csv")["text"]) <= uncertain


def test_select_leaves_out_every_query_the_run_s_data_labels(tiny_bert, tiny_data, tmp_path):
    """A --shots run trained on a draw of its training file: the rows it left undrawn are labelled all the
    same, and so are its test file's (labelled again and trained on, they would flatter the next evaluation)."""
    from bankintent import resolve_config, train
    from bankintent.data import query_key
    from bankintent.selection import labelled_queries

    train(resolve_config(None, method="linear-probe", shots=3, **tiny_options(tiny_bert, tiny_data, tmp_path / "run")))
    every = [text for name in ("train.csv", "test.csv") for text, _ in _rows(tiny_data / name)]
    assert labelled_queries(tmp_path / "run") == {query_key(text) for text in every} and len(every) == 100


def test_cli_defaults_match_the_modules():
    from bankintent import discover, ood

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    defaults = {a.dest: a.default for a in sub["discover"]._actions}
    assert defaults["distance_threshold"] == discover.DISTANCE_THRESHOLD and defaults["min_size"] == discover.MIN_SIZE
    oos = next(a for a in sub["predict"]._actions if a.dest == "oos_score")
    assert tuple(oos.choices) == tuple(ood.SCORES)


def test_select_and_discover_never_overwrite_labels_a_person_filled_in(tiny_probe_run, tiny_data, tmp_path, capsys, caplog):
    queries = tmp_path / "logs.txt"
    trained = pd.read_csv(tiny_data / "train.csv").text.tolist()[:3]  # labelled in the run's data already: never picked
    queries.write_text("\n".join([f"query number {i} about my card" for i in range(30)] + trained) + "\n")
    sheet = tmp_path / "to_label.csv"
    select = ["select", str(tiny_probe_run), "--input", str(queries), "--budget", "5", "--output", str(sheet)]
    with caplog.at_level(logging.INFO, logger="bankintent"):
        cli.main(select)
    assert not set(pd.read_csv(sheet).text) & set(trained) and "3 of its 33 queries are labelled in the run's data already" in caplog.text
    cli.main(select)  # an earlier sheet with nothing filled in is replaced: the retraining loop's rerun
    labelled = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    labelled.loc[0, "label"] = "card_arrival"
    labelled.to_csv(sheet, index=False)
    with pytest.raises(SystemExit) as stop:
        cli.main(select)
    assert stop.value.code == 2 and f"{sheet}: holds 1 label(s) filled in; choose another --output, or pass --overwrite" in capsys.readouterr().err
    assert pd.read_csv(sheet, dtype=str, keep_default_na=False).loc[0, "label"] == "card_arrival"
    with pytest.raises(SystemExit):  # the file of queries named as --output by mistake
        cli.main(["select", str(tiny_probe_run), "--input", str(queries), "--budget", "5", "--output", str(queries)])
    assert "the sheet to label is written as CSV" in capsys.readouterr().err and queries.read_text().startswith("query number 0")
    cli.main(select + ["--overwrite"])
    assert (pd.read_csv(sheet, dtype=str, keep_default_na=False)["label"] == "").all()

    out = tmp_path / "found"
    discover = ["discover", str(tiny_probe_run), "--input", str(queries), "--output", str(out), "--all", "--min-size", "2"]
    cli.main(discover)
    found = pd.read_csv(out / "queries.csv", dtype=str, keep_default_na=False)
    found.loc[0, "label"] = "new_intent"
    found.to_csv(out / "queries.csv", index=False)
    with pytest.raises(SystemExit):
        cli.main(discover)
    assert "queries.csv: holds 1 label(s) filled in" in capsys.readouterr().err
    cli.main(discover + ["--overwrite"])
    assert (pd.read_csv(out / "queries.csv", dtype=str, keep_default_na=False)["label"] == "").all()
    with pytest.raises(SystemExit):  # a file where a folder goes: one line, before the model loads
        cli.main(["discover", str(tiny_probe_run), "--input", str(queries), "--output", str(sheet)])
    assert f"{sheet}: exists and is not a folder" in capsys.readouterr().err
    for option, value, message in (("--min-size", "0", "--min-size must be at least 1, got 0"),
                                   ("--distance-threshold", "5", "a cosine distance, between 0 and 2; got 5.0")):
        with pytest.raises(SystemExit):
            cli.main(discover + [option, value])
        assert message in capsys.readouterr().err


def test_a_labelling_sheet_keeps_the_logs_ids_and_never_asks_again_for_what_the_data_labels(tiny_bert, tiny_data, tmp_path, capsys):
    """The sheets of select and discover carry the input's own columns (the log's id joins the labels
    back); rows the run's data labels out of scope are labelled already, so never picked; a sheet is
    CSV whatever --output is called; a missing --input is said before anything about --output. A
    customer's query a spreadsheet would run as a formula shows as text, and is read back as it was."""
    from bankintent.data import read_examples
    from bankintent import resolve_config, train

    data = tmp_path / "data"
    data.mkdir()
    oos = ["tell me a joke please", "what is the weather like today"]
    trained = pd.read_csv(tiny_data / "train.csv")
    pd.concat([trained, pd.DataFrame({"text": oos, "category": "out_of_scope"})]).to_csv(data / "train.csv", index=False)
    shutil.copy(tiny_data / "test.csv", data / "test.csv")
    run = tmp_path / "run"
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, data, run)))
    messages = [f"question {i} about my account and card" for i in range(9)] + ['=HYPERLINK("http://evil.example","card")'] + oos
    logs = tmp_path / "logs.csv"
    pd.DataFrame({"id": [f"c{i:03d}" for i in range(12)], "message": messages, "row": range(100, 112)}).to_csv(logs, index=False)
    sheet = tmp_path / "sheet.csv"
    select = ["select", str(run), "--input", str(logs), "--text-column", "message", "--budget", "12"]
    cli.main(select + ["--output", str(sheet)])
    picked = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    assert list(picked.columns) == ["rank", "row", "id", "input_row", "text", "predicted_intent", "out_of_scope", "confidence", "margin",
                                    "label"]
    assert len(picked) == 10 and not set(picked.text) & set(oos)  # labelled out of scope in the run's data: not asked again
    shown = dict(zip(messages, messages)) | {messages[9]: "'" + messages[9]}
    assert all(shown[messages[int(row) - 1]] == text and f"c{int(row) - 1:03d}" == id for row, id, text in zip(picked.row, picked.id, picked.text))
    picked.assign(label="card_arrival").to_csv(tmp_path / "labelled.csv", index=False)  # labelled, saved again
    assert sorted(read_examples(tmp_path / "labelled.csv", label_column="label").texts) == sorted(messages[:10])
    cli.main(select + ["--output", str(sheet)])  # its own sheet, with the input's columns among its own: replaced
    for output, said in ((tmp_path / "pick.jsonl", "pick.jsonl: the sheet to label is written as CSV; give --output a .csv name"),
                         (logs, "exists and is not a sheet this command wrote")):
        with pytest.raises(SystemExit):
            cli.main(select + ["--output", str(output)])
        assert said in capsys.readouterr().err and not (tmp_path / "pick.jsonl").exists()
    with pytest.raises(SystemExit):
        cli.main(["select", str(run), "--input", str(tmp_path / "nofile.txt"), "--budget", "3", "--output", str(logs)])
    assert "nofile.txt: file not found" in capsys.readouterr().err

    cli.main(["discover", str(run), "--input", str(logs), "--text-column", "message", "--output", str(tmp_path / "found"),
              "--all", "--min-size", "2"])
    found = pd.read_csv(tmp_path / "found" / "queries.csv", dtype=str, keep_default_na=False)
    assert list(found.columns[:4]) == ["cluster", "row", "id", "input_row"] and len(found) == 12
    assert all(shown[messages[int(row) - 1]] == text and f"c{int(row) - 1:03d}" == id for row, id, text in zip(found.row, found.id, found.text))


def test_a_sheet_keeps_the_input_columns_as_read(tmp_path):
    """JSONL rows with other keys each: an id stays the id (no 2.0, no lost digits), a nested value is
    JSON, a column named like the sheet's (or like an earlier renamed one) is renamed apart."""
    from bankintent.data import with_input_columns

    sheet = pd.DataFrame({"rank": [1, 2], "row": [1, 2], "text": ["a", "b"], "label": ["", ""]})
    others = [{"id": 9007199254740993, "row": 5, "input_row": 6, "meta": {"channel": "app"}}, {"id": 2}]
    with_input_columns(sheet, others).to_csv(tmp_path / "sheet.csv", index=False)
    read = pd.read_csv(tmp_path / "sheet.csv", dtype=str, keep_default_na=False)
    assert list(read.columns) == ["rank", "row", "id", "input_row", "input_input_row", "meta", "text", "label"]
    assert read.id.tolist() == ["9007199254740993", "2"] and read.input_row.tolist() == ["5", ""]
    assert read.meta.tolist() == ['{"channel": "app"}', ""]
    assert list(with_input_columns(sheet, [{}, {}]).columns) == list(sheet.columns)  # a .txt input: nothing added
