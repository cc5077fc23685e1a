"""The report renders from tiny runs (a two-run sweep and a single run) with every section, and each
trained model folder gets a model card."""

import base64
import json
import logging
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import bankintent
from bankintent import Predictor, resolve_config, train
from bankintent.errors import BankintentError, ConfigError, DataError
from bankintent.evaluation import PREDICTION_COLUMNS, evaluate_run, summary_lines
from bankintent.model_card import fallback_text
from bankintent.modeling import MARKER
from bankintent.predict import model_folder
from bankintent.report import FIGURES, Run, collect, f1_figure, run_evaluation, write_report
from bankintent.results import learning_curves_figure, write_history
from bankintent.sweep import read_sweep, run_folder, train_command, write_results
from conftest import tiny_options

SECTIONS = ["## Data set", "## Results", "### Method comparison", "### LoRA hyperparameters", "## Learning curves",
            "## Calibration and the out-of-scope fallback", "## Error analysis", "### Most confused intents", "### Most confused pairs", "### Per-intent F1 (worst 15 highlighted)",
            "### Accuracy by query length", "## What the adapter costs", "## How each run was made"]


@pytest.fixture(scope="module")
def tiny_sweep(tiny_bert, tiny_data, tmp_path_factory):
    """A sweep folder made by the sweep's own functions, its runs trained in this process."""
    out = tmp_path_factory.mktemp("sweep")
    options = tiny_options(tiny_bert, tiny_data, out)
    del options["output"]
    runs = [{"name": "lpft", "options": {"method": "lpft"}},
            {"name": "linear-probe", "tables": ["methods", "hyperparameters"], "options": {"method": "linear-probe"}}]
    (out / "sweep.yaml").write_text(yaml.safe_dump({"base": options, "runs": runs}))
    _, specs = read_sweep(out / "sweep.yaml")
    for spec in specs:
        folder = run_folder(out, spec.name, 42)
        train(resolve_config(None, **spec.options, seed=42, output=str(folder)))
        (folder / "command.txt").write_text(shlex.join(train_command(spec.options, 42, folder)))
    write_results(out, specs, "bankintent sweep --config sweep.yaml --output " + str(out))
    return out


def test_report_has_every_section_and_embeds_its_figures(tiny_sweep, tiny_bert, tiny_data, tmp_path):
    single = tmp_path / "single"
    train(resolve_config(None, method="lora", lr=1e-3, **tiny_options(tiny_bert, tiny_data, single)))
    html_path, md_path = write_report([tiny_sweep, single], tmp_path / "report")
    md = md_path.read_text()
    for section in SECTIONS:
        assert f"\n{section}\n" in md, section

    assert "| train | 72 | 4 |" in md and "| test | 20 | 4 |" in md  # 80 rows, 10% validation; 20 test rows
    lpft = json.loads((tiny_sweep / "runs/lpft/seed-42/metrics.json").read_text())
    assert f"| lpft | mean | 1 (single seed) | {100 * lpft['val_accuracy']:.2f}% | {100 * lpft['test_accuracy']:.2f}% |" in md
    assert "| single | lora |" in md  # the run outside the sweep gets its own row
    assert f"Base model: `{tiny_bert}`." in md  # which encoder: runs on other bases differ in cost and accuracy
    best = max([lpft, json.loads((tiny_sweep / "runs/linear-probe/seed-42/metrics.json").read_text()),
                json.loads((single / "metrics.json").read_text())], key=lambda m: m["val_accuracy"])
    assert f"accuracy {best['test_accuracy']:.2%})" in md
    assert md.count("`bankintent train ") == 3 and f"bankintent train --config {single}/config.yaml" in md
    # calibration and the fallback of every run, from its metrics.json
    for m, name in ((lpft, "lpft"), (json.loads((single / "metrics.json").read_text()), "single")):
        assert f"| {name} (seed 42) | {m['temperature']:.3g}" in md
        assert m["oos_coverage_target"] <= m["oos_val_coverage"] <= 1  # the threshold answers at least its target
        assert (f"| {m['oos_score']} | {m['oos_score_reason']} | {m['oos_threshold']:.4g} | "
                f"{m['oos_val_coverage']:.1%} ({m['oos_coverage_target']:.1%}) | {m['test_answered']:.1%} |") in md  # and on test
    assert lpft["val_warning"].startswith("the validation split is thin") and f"Note: {lpft['val_warning']}." in md

    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(figures) == 6 and "figures/coverage.png" in figures
    assert all((tmp_path / "report" / f).stat().st_size > 5000 for f in figures)
    html = html_path.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 6 and 'src="figures/' not in html
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    assert "<table>" in html and "&lt;=5 words" in html  # tables rendered, text escaped
    # a report of another run into the same folder replaces it, and leaves none of the earlier figures it has not
    assert sorted(f.removeprefix("figures/") for f in figures) == sorted(FIGURES)  # the names it may remove: its own
    (tmp_path / "report" / "figures" / "logo.png").write_bytes(b"mine")
    probe = shutil.copytree(tiny_sweep / "runs" / "linear-probe" / "seed-42", tmp_path / "probe")  # the report writes its predictions
    md = write_report([probe], tmp_path / "report")[1].read_text()
    now = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(now) < 6 and sorted(f"figures/{p.name}" for p in (tmp_path / "report" / "figures").iterdir()) == sorted(now + ["figures/logo.png"])


def test_runs_without_their_model_are_tabled_but_not_analysed(tiny_sweep, tmp_path):
    """Run records copied from another machine (no weights, no predictions) join the tables; the error
    analysis takes the best run whose model is here, and with none the report says so in one line."""
    import shutil

    records = tmp_path / "records"
    shutil.copytree(tiny_sweep / "runs" / "lpft" / "seed-42", records, ignore=shutil.ignore_patterns("adapter", "*_predictions.csv"))
    metrics = json.loads((records / "metrics.json").read_text())
    (records / "metrics.json").write_text(json.dumps({**metrics, "val_accuracy": 1.0}))  # the best by validation
    with pytest.raises(ConfigError, match="none of the 1 run.s. has its model folder or saved test predictions"):
        write_report([records], tmp_path / "none")
    probe = shutil.copytree(tiny_sweep / "runs" / "linear-probe" / "seed-42", tmp_path / "probe")  # the report writes its predictions
    md = write_report([records, probe], tmp_path / "some")[1].read_text()
    assert "| records | lpft | 100.00% |" in md and "Run `probe (seed 42)` (the only run whose model is here)" in md


def test_a_search_folder_brings_its_finished_trials_and_a_run_on_two_processes_its_command(tiny_sweep, tmp_path):
    import shutil

    search = tmp_path / "search"
    for number in (10, 2):  # trial-2 before trial-10; a trial without metrics.json (stopped) is left out
        shutil.copytree(tiny_sweep / "runs" / "lpft" / "seed-42", search / f"trial-{number}")
    (search / "trial-3").mkdir()
    (search / "trial-old").mkdir()  # not a trial's folder
    (search / "search.json").write_text('{"best_trial": 10}')
    ddp = shutil.copytree(tiny_sweep / "runs" / "lpft" / "seed-42", tmp_path / "ddp", ignore=shutil.ignore_patterns("command.txt"))
    metrics = json.loads((ddp / "metrics.json").read_text())
    (ddp / "metrics.json").write_text(json.dumps({**metrics, "world_size": 2}))
    runs, _ = collect([search, ddp])
    assert [r.name for r in runs] == ["search/trial-2", "search/trial-10", "ddp"]  # named apart from another search's trials
    assert runs[2].command == f"bankintent train --config {ddp / 'config.yaml'} --nproc 2"  # config.yaml does not record it
    md = write_report([search, ddp], tmp_path / "report")[1].read_text()
    assert "× 2 processes |" in md and "give it another `--output` to make the run again" in md
    test = f"{100 * metrics['test_accuracy']:.2f}%"  # shown for the trial the search chose, not for those it chose among
    rows = {line.split(" | ")[0].strip("| "): line for line in md.split("### Runs")[1].split("\n\n")[1].splitlines()[2:]}
    assert test in rows["search/trial-10"] and test not in rows["search/trial-2"] and test in rows["ddp"]
    assert "only the trial it chose shows its test scores" in md


def test_the_report_predicts_a_split_only_where_evaluate_has_not(tiny_sweep):
    """No run of the sweep was evaluated: the best one's test predictions are made once and kept, in
    the columns ``evaluate`` writes."""
    kept = [pd.read_csv(path) for path in tiny_sweep.glob("runs/*/seed-42/test_predictions.csv")]
    assert len(kept) == 1 and list(kept[0].columns) == PREDICTION_COLUMNS and len(kept[0]) == 20


def test_report_reuses_the_predictions_evaluate_wrote(tiny_bert, tiny_data, tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    train(**tiny_options(tiny_bert, tiny_data, run))
    summary = evaluate_run(run)
    assert summary["data"] == str(tiny_data / "test.csv")
    # another file evaluated into the run would take the place of its test results: refused, or elsewhere
    heldout = tmp_path / "heldout.csv"
    heldout.write_text((tiny_data / "test.csv").read_text() + "what's the weather,out_of_scope\ntell me a joke,out_of_scope\n")
    with pytest.raises(BankintentError, match=rf"test_evaluation.json: holds the evaluation of data {tiny_data / 'test.csv'}; pass --overwrite"):
        evaluate_run(run, data=str(heldout))
    with pytest.raises(ConfigError, match="heldout.csv: exists and is not a folder"):
        evaluate_run(run, output=heldout)
    assert evaluate_run(run, data=str(heldout), output=tmp_path / "elsewhere")["data"] == str(heldout)
    assert json.loads((run / "test_evaluation.json").read_text())["data"] == str(tiny_data / "test.csv")
    caplog.clear()
    heldout_summary = evaluate_run(run, data=str(heldout), overwrite=True)
    assert heldout_summary["data"] == str(heldout) and heldout_summary["queries"] == 20
    assert f"{heldout}: 10 of its 20 queries are also in train.csv (scored as if unseen)" in caplog.text
    # the report analyses the run's test.csv: it quotes nothing of heldout.csv's evaluation, and keeps its files
    written = (run / "test_predictions.csv").read_text()
    md = write_report([run], tmp_path / "mixed")[1].read_text()
    assert "heldout.csv" not in md and (run / "test_predictions.csv").read_text() == written
    part = tmp_path / "part.csv"  # other queries than test.csv's: the report predicts test.csv, and says where it keeps them
    part.write_text("".join((tiny_data / "test.csv").read_text().splitlines(keepends=True)[:11]))
    evaluate_run(run, data=str(part), overwrite=True)
    part_predictions = (run / "test_predictions.csv").read_text()
    md = write_report([run], tmp_path / "other")[1].read_text()
    assert f"accuracy {pd.read_csv(tmp_path / 'other' / 'test_predictions.csv').correct.mean():.2%}); predictions in " \
           f"`{tmp_path / 'other' / 'test_predictions.csv'}`" in md
    assert (run / "test_predictions.csv").read_text() == part_predictions and len(pd.read_csv(tmp_path / "other" / "test_predictions.csv")) == 20
    heldout_summary = evaluate_run(run, data=str(heldout), overwrite=True)
    caught = pd.read_csv(run / "test_out_of_scope.csv")  # which out-of-scope rows got through, and as what
    assert caught.text.tolist() == ["what's the weather", "tell me a joke"] and set(caught.columns) >= {"caught", "closest_intent", "oos_score"}
    assert caught.caught.mean() == heldout_summary["out_of_scope"]["oos_recall"]
    summary = evaluate_run(run, overwrite=True)
    probe = pd.read_csv(run / "test_out_of_scope.csv")  # no out-of-scope rows in this file: the built-in probe set's
    assert len(probe) == 298 and set(probe.file) == {"bankintent/resources/out_of_scope.txt"}
    written = (Path(bankintent.__file__).parent / "resources" / "out_of_scope.txt").read_text(encoding="utf-8").splitlines()
    assert [written[line - 1].strip() for line in probe.line] == probe.text.tolist()  # each query's line in the file
    table = pd.read_csv(run / "test_predictions.csv")
    assert list(table.columns) == PREDICTION_COLUMNS and len(table) == summary["queries"] == 20
    expected = Predictor.load(run).predict(table.text.tolist(), top_k=1)
    assert table.predicted.tolist() == [e["closest_intent"] for e in expected]
    assert table.answer.tolist() == [e["intent"] for e in expected]
    assert table.out_of_scope.tolist() == [e["out_of_scope"] for e in expected]
    assert table.confidence.to_numpy() == pytest.approx([e["top_k"][0]["confidence"] for e in expected], abs=1e-5)
    assert table.oos_score.to_numpy() == pytest.approx([e["oos_score"] for e in expected], rel=1e-4, abs=1e-5)
    assert table.correct.mean() == pytest.approx(summary["accuracy"])

    def no_prediction(*args, **kwargs):
        raise AssertionError("the report predicted the test split again")

    with monkeypatch.context() as patched:
        patched.setattr(Predictor, "load", no_prediction)
        md = write_report([run], tmp_path / "report")[1].read_text()
    assert f"predictions in `{run / 'test_predictions.csv'}`" in md and not (tmp_path / "report" / "test_predictions.csv").exists()
    answered = ~table.out_of_scope
    assert (f"on the test split (20 queries): the fallback answers {answered.mean():.1%} of them with an intent, "
            f"{table.correct[answered].mean():.2%} of those right (all queries answered: {table.correct.mean():.2%})") in md
    assert f"accuracy {summary['accuracy']:.2%})" in md

    # a model trained after the predictions were written: they are not reused, nor is the fallback's recall
    evaluation = json.loads((run / "test_evaluation.json").read_text())
    (run / "test_evaluation.json").write_text(json.dumps(evaluation | {"out_of_scope": {"oos_recall": 0.5}}))
    assert run_evaluation(Run("run", run, {}, ""), "test", 20, evaluation["data"])["out_of_scope"] == {"oos_recall": 0.5}
    assert run_evaluation(Run("run", run, {}, ""), "test", 20, "/elsewhere/heldout.csv") is None  # another file's evaluation
    assert run_evaluation(Run("run", run, {}, ""), "test", 19, evaluation["data"]) is None
    marker = model_folder(run) / MARKER
    later = (run / "test_predictions.csv").stat().st_mtime + 10
    os.utime(marker, (later, later))
    assert run_evaluation(Run("run", run, {}, ""), "test", 20, evaluation["data"]) is None
    write_report([run], tmp_path / "report")
    assert (run / "test_predictions.csv").stat().st_mtime > later - 10


def test_an_evaluation_of_another_model_is_not_replaced_silently(tiny_runs, tmp_path):
    evaluate_run(tiny_runs["bert"], output=tmp_path)
    with pytest.raises(BankintentError, match="test_evaluation.json: holds the evaluation of model .*bert.*; pass --overwrite"):
        evaluate_run(tiny_runs["distilbert"], output=tmp_path)
    assert evaluate_run(tiny_runs["distilbert"], output=tmp_path, overwrite=True)["model"].endswith("adapter")


def test_evaluate_data_works_where_the_training_data_has_moved(tiny_runs, tiny_data, tmp_path):
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(tiny_runs["bert"], moved)
    config = yaml.safe_load((moved / "config.yaml").read_text())
    (moved / "config.yaml").write_text(yaml.safe_dump({**config, "data": str(tmp_path / "gone")}))
    assert evaluate_run(moved, data=str(tiny_data / "test.csv"))["queries"] == 20


def test_the_report_and_the_model_card_name_the_thin_intents_alike():
    from bankintent.model_card import thin_intents_note

    assert thin_intents_note({"thin_intents": {}}) is None
    assert thin_intents_note({"thin_intents": {"moving_home": 6, "new_sim": 4}, "thin_intents_repeated": {"moving_home": 3}}) == (
        "2 intent(s) trained on far fewer queries than the median intent, and are recognised less often than the others: "
        "`new_sim` (4), `moving_home` (6). Their training queries were repeated (`moving_home` x3, `--thin-repeats`) to "
        "weigh nearer the others'. More examples of them are what helps most.")


def test_queries_per_intent_bars_hold_whole_counts():
    from bankintent.report import count_bins

    assert count_bins(pd.Series([10, 10, 10])).tolist() == [9.5, 10.5]  # every intent alike: one bar at 10
    edges = count_bins(pd.Series([1, 57, 100]))
    assert len(edges) - 1 <= 20 and edges[0] == 0.5 and edges[-1] >= 100.5 and set(np.diff(edges)) == {5.0}


def test_per_intent_f1_is_one_horizontal_bar_per_intent_worst_first():
    names = [f"intent_number_{i}_with_a_long_descriptive_name" for i in range(77)]
    f1 = np.linspace(1.0, 0.5, 77)
    fig = f1_figure(pd.DataFrame({"intent": names, "precision": f1, "recall": f1, "f1": f1, "support": 40}))
    [ax] = fig.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == names[::-1]  # full names, worst first
    bars = ax.patches
    assert len(bars) == 77 and [bar.get_width() for bar in bars] == pytest.approx(sorted(f1))
    assert bars[0].get_y() < bars[-1].get_y() and ax.yaxis_inverted()  # the worst bar at the top
    width, height = fig.get_size_inches()
    assert height > width  # tall enough for 77 readable names
    assert sum(bar.get_facecolor() == bars[0].get_facecolor() for bar in bars) == 15 and "worst 15 in red" in ax.get_title()
    perfect = f1_figure(pd.DataFrame({"intent": ["a", "b"], "precision": 1.0, "recall": 1.0, "f1": [1.0, 1.0], "support": 5}))
    assert len({bar.get_facecolor() for bar in perfect.axes[0].patches}) == 1 and "every one 1.00" in perfect.axes[0].get_title()


def test_a_split_without_errors_has_no_confusion_figure(tmp_path):
    from bankintent.report import _heatmap

    assert _heatmap(np.array([0, 1, 2]), np.array([0, 1, 2]), ["a", "b", "c"], tmp_path) == (
        "No confusions: every query was answered with its own intent.")
    assert not list(tmp_path.iterdir())
    assert _heatmap(np.array([0, 1, 2]), np.array([0, 2, 2]), ["a", "b", "c"], tmp_path).endswith("confusion_heatmap.png)")


@pytest.mark.parametrize("epochs", [1, 3, 12])
def test_learning_curves_have_whole_epochs(epochs, tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "val_accuracy": 1 - 1 / (e + 1)} for e in range(1, epochs + 1)]
    fig = learning_curves_figure(pd.DataFrame(history))
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks) and len(ticks) <= 11
    write_history(history, tmp_path)
    assert (tmp_path / "learning_curves.png").stat().st_size > 5000


def test_epochs_a_query_apart_do_not_fill_the_accuracy_axis():
    """Validation accuracies 94.01% and 94.11% (one query of 1,001) drawn on an axis of their own
    0.1 point looked like a climb; the axis spans at least 5 points."""
    history = [{"epoch": e, "train_loss": 0.3, "val_loss": 0.3, "val_accuracy": a} for e, a in [(1, 0.9401), (2, 0.9411), (3, 0.9401)]]
    accuracy_axis = learning_curves_figure(pd.DataFrame(history)).axes[1]
    low, high = accuracy_axis.get_ylim()
    assert high - low >= 0.05 and low < 0.9401 and 0.9411 < high <= 1.005
    spread = [{"epoch": e, "train_loss": 0.3, "val_loss": 0.3, "val_accuracy": a} for e, a in [(1, 0.4), (2, 0.9)]]
    assert learning_curves_figure(pd.DataFrame(spread)).axes[1].get_ylim() == pytest.approx((0.395, 0.905))
    for edge in ([1.0, 1.0], [0.99, 1.0], [0.0, 0.01]):  # near 0 or 100%: the window moved inside, as tall
        history = [{"epoch": e, "train_loss": 0.3, "val_loss": 0.3, "val_accuracy": a} for e, a in enumerate(edge, start=1)]
        low, high = learning_curves_figure(pd.DataFrame(history)).axes[1].get_ylim()
        assert high - low >= 0.05 and low >= -1e-9 and high <= 1.005 + 1e-9 and low <= min(edge) and max(edge) < high


def test_report_into_a_file_is_an_error(tmp_path):
    (tmp_path / "afile.txt").write_text("keep")
    with pytest.raises(ConfigError, match="afile.txt: exists and is not a folder"):
        write_report([tmp_path], tmp_path / "afile.txt")


def test_report_of_a_folder_without_runs_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not a training run .no metrics.json., a sweep .no sweep.yaml. nor a search .no search.json."):
        write_report([tmp_path], tmp_path / "report")
    with pytest.raises(ConfigError, match=r"nosuch: not found; give a training run's, a sweep's or a search's folder$"):  # a typo, said as one
        write_report([tmp_path / "nosuch"], tmp_path / "report")


def test_a_folder_that_holds_no_run_beside_runs_is_left_out_with_a_warning(tiny_sweep, tmp_path, caplog):
    """`bankintent report runs/*` takes in an export folder or a run stopped early: named and left out."""
    export = tmp_path / "demo-int8"
    export.mkdir()
    with caplog.at_level(logging.WARNING, logger="bankintent"):
        runs, _ = collect([tiny_sweep / "runs" / "linear-probe" / "seed-42", export])
    assert [run.label for run in runs] == ["linear-probe (seed 42)"]  # a sweep's run by its run's name
    assert f"{export}: not a training run (no metrics.json), a sweep (no sweep.yaml) nor a search (no search.json): left out of the report" in caplog.text
    (tmp_path / "stopped").mkdir()
    with pytest.raises(ConfigError, match="no finished runs in"):
        collect([export, tmp_path / "stopped"])


def test_a_temperature_note_is_said_once_below_the_calibration_table():
    from bankintent.report import _temperature

    notes: list[str] = []
    thin = {"temperature": 0.359, "temperature_note": "8 validation queries, fewer than 50"}
    assert [_temperature(m, notes) for m in (thin, thin, {"temperature": 1.2})] == ["0.359 [1]", "0.359 [1]", "1.2"]
    assert notes == ["8 validation queries, fewer than 50"]


def test_a_folder_of_every_weight_is_said_so_in_the_cost_and_results_tables():
    from bankintent.report import _share
    from bankintent.results import saved_size

    assert _share(2_170_000, 22_927_500) == "2.37%"
    assert _share(91_690_000, 22_742_500) == "all its weights, with the tokenizer"  # tokenizer and small files besides
    assert saved_size(1_470_000, 22_926_797) == "1.47 MB"  # an adapter
    assert saved_size(91_690_000, 22_742_500) == "91.69 MB (whole model)"  # full fine-tuning, the contrastive encoder
    assert saved_size(91_690_000, None) == "91.69 MB"  # an older results.csv without the parameter count


def test_model_card_in_the_model_folder(tiny_sweep):
    run = tiny_sweep / "runs/lpft/seed-42"
    card = (run / "adapter/README.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-classification"
    # the user's own intents, not Banking77's: no banking claims, and the data named by its absolute path
    assert "banking" not in front["tags"] and "An intent classifier for chatbot queries:" in card
    assert "of a bank or payment app" not in card and "I lost my debit card" not in card
    assert f"differs from {metrics['data']}." in card and os.path.isabs(metrics["data"])
    # the tiny base is a local folder: no hub id in the metadata, no hub link, and where it is read from
    assert "base_model" not in front and "huggingface.co/" not in card
    assert f"fine-tuned from\n`{metrics['base_model']}` (a local folder)" in card
    assert f"The base model is read from its folder, `{metrics['base_model']}`" in card
    results = {r["dataset"]["split"]: r["metrics"][0]["value"] for r in front["model-index"][0]["results"]}
    assert results == {"validation": round(metrics["val_accuracy"], 4), "test": round(metrics["test_accuracy"], 4)}
    for heading in ("## Intended uses and limitations", "## How to use", "## Training data", "## Training procedure", "## Evaluation"):
        assert heading in card
    assert "Predictor.load" in card and "Model Card for Model ID" not in card  # not PEFT's generic card
    # the out-of-scope fallback as metrics.json has it, not the old "no none-of-these class"
    assert "no \"none of these\"" not in card
    assert "is answered `out_of_scope` when its out-of-scope score" in card
    n = metrics["oos_coverage_queries"]  # the tiny validation split: too few to set a threshold for 95%, and the card says so
    assert n < 19 and metrics["oos_coverage_expected"] == n / (n + 1)
    assert f"(`{metrics['oos_score']}`), is above {metrics['oos_threshold']:.4g} (a threshold set on the {n} validation queries, " \
           f"too few to answer 95% of new in-scope queries with an intent: it answers each of them, and {n / (n + 1):.1%} of new " \
           "ones on average, and between" in card
    assert f"Why this score: {metrics['oos_score_reason']}." in card
    assert metrics["val_warning"].startswith("the validation split is thin") and f"Note: {metrics['val_warning']}." in card
    assert f"- temperature {metrics['temperature']:.3g}" in card
    assert f"- out-of-scope score `{metrics['oos_score']}`, threshold {metrics['oos_threshold']:.4g}" in card
    assert metrics["thin_intents"] == {} and "far fewer training queries" not in card
    chose = "the temperature and" if metrics["averaged_epochs"] else "the epoch, the temperature"  # no epoch chosen where averaged
    assert f"The test split was evaluated once, after training; {chose}" in card and metrics["method"] == "lpft"

    from bankintent.model_card import model_card  # a new intent of few examples, and data without a test file
    cfg = resolve_config(run / "config.yaml")
    other = model_card(cfg, {**metrics, "thin_intents": {"crypto_purchase": 9}, "test_size": 0, "test_accuracy": None})
    assert ("Note: 1 intent(s) trained on far fewer queries than the median intent, and are recognised less often than the "
            "others: `crypto_purchase` (9).") in other
    assert "The test split was evaluated once" not in other and "The data had no test split" in other


def test_model_card_links_a_hub_base_model():
    from bankintent.model_card import _hub_id, _metadata

    cfg = resolve_config(None, base_model="distilbert-base-uncased")
    assert _hub_id(cfg.base_model) == "distilbert-base-uncased"
    assert _metadata(cfg, {"method": "lpft"})["base_model"] == "distilbert-base-uncased"


def test_model_card_of_a_model_without_fallback():
    assert fallback_text({}).startswith("Every query gets one of these intents: this model has no \"none of these\" answer")
    with_examples = fallback_text({"oos_score": "msp", "oos_threshold": 0.5, "oos_recall": 0.8, "oos_examples": "train.csv: 10 rows"})
    assert "catches 80.0% of the out-of-scope examples, train.csv: 10 rows." in with_examples and "optimistic" not in with_examples
    small = fallback_text({"oos_score": "knn+msp", "oos_threshold": 1.5, "validation": "none: small data (...)", "val_size": 0})
    assert "standardised on held-out training queries" in small and "standardised on the validation" not in small  # none
    answered = fallback_text({"oos_score": "msp", "oos_threshold": 0.5, "oos_coverage_target": 0.95, "oos_val_coverage": 0.963})
    assert "so that 95% of the validation queries are answered with an intent; it answers 96.3% of them)" in answered
    interval = fallback_text({"oos_score": "msp", "oos_threshold": 0.5, "oos_coverage_target": 0.95, "oos_val_coverage": 1.0,
                              "oos_coverage_interval": [0.895, 0.998], "oos_coverage_queries": 27, "oos_coverage_expected": 27 / 28})
    assert ("(a threshold set on the validation queries to answer 95% of new in-scope queries with an intent; it answers 100.0% "
            "of those 27, and between 89.5% and 99.8% of new queries like them (90% interval))") in interval
    served = fallback_text({"oos_score": "msp", "oos_threshold": 0.5, "oos_coverage_target": 0.95, "oos_val_coverage": 1.0,
                            "oos_coverage_interval": [0.895, 0.998], "oos_coverage_queries": 27, "test_answered": 0.917,
                            "oos_recall": 1.0, "oos_examples": "train.csv: 8 rows", "oos_recall_optimistic": True,
                            "test_oos_recall": 0.9375, "test_oos_examples": "test.csv: 16 rows"})
    assert "(90% interval); on the test file it answered 91.7% of the in-scope queries)" in served
    assert ("catches 100.0% of the out-of-scope examples, train.csv: 8 rows. The same examples chose the score, so that share is "
            "optimistic. On the test file's own, test.csv: 16 rows, it catches 93.8%.") in served  # said also beside the test's share
    chose = fallback_text({"oos_score": "msp", "oos_threshold": 0.5, "oos_recall": 0.8, "oos_examples": "train.csv: 10 rows",
                           "oos_recall_optimistic": True})
    assert "train.csv: 10 rows. The same examples chose the score, so that share is optimistic" in chose


def test_model_card_says_what_the_weights_are():
    """LoRA adapters merge onto the base; a model that trained every weight replaces them; a probe adds a head."""
    from bankintent import resolve_config
    from bankintent.model_card import _weights

    cases = [("lpft", 1.6, "LoRA weights and the head", "merged"), ("lpft-full", 100.0, "every encoder weight", "replace"),
             ("full", 100.0, "every encoder weight", "replace"), ("linear-probe", 0.1, "the head", "runs unchanged")]
    for method, share, holds, cost in cases:
        held, costs = _weights(method, resolve_config(None, method=method), {"trainable_pct": share})
        assert holds in held and cost in costs, method
    assert "student" in _weights("distill", resolve_config(None, method="lpft"), {"trainable_pct": 100.0})[0]


def test_report_of_a_few_shot_run_describes_the_data_it_trained_on(tiny_bert, tiny_data, tmp_path):
    """The report reads a run's splits as training did: a ``shots`` draw (3 of each intent's 20
    training rows here, so small data with no validation split) is what its data section counts."""
    run = tmp_path / "few"
    train(resolve_config(None, method="linear-probe", shots=3, **tiny_options(tiny_bert, tiny_data, run)))
    md = write_report([run], tmp_path / "report")[1].read_text()
    assert "| train | 12 | 4 |" in md and "| validation |" not in md and "| test | 20 | 4 |" in md
    assert "Training queries per intent: min 3, median 3, max 3" in md
    assert ("Validation split: none: small data (median 3 examples per intent, fewer than 20, and no validation file): every row "
            "trains, choices are cross-validated; the training split is a draw of 3 example(s) per intent (seed 42).") in md


def test_data_without_a_test_file_is_not_said_to_have_one(tiny_bert, tiny_data, tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text((tiny_data / "train.csv").read_text() + ",card_arrival\n")  # a row without text
    run = tmp_path / "run"
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, data, run)))
    assert "1 row(s) with an empty text skipped" in caplog.text
    caplog.clear()
    md = write_report([run], tmp_path / "report")[1].read_text()
    assert "The test file is only evaluated" not in md and "No test file: a run's test scores below are of the file" in md
    assert "empty text" not in caplog.text  # the data's notes, said by training, not again by the report


def test_a_test_file_changed_since_training_is_said_to_be_where_the_report_analyses_it(tiny_bert, tiny_data, tmp_path):
    """The runs table's test scores are training's; the error analysis reads the test file as it is now:
    where the two differ, the report says so rather than give two accuracies of 'the test split'."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run = tmp_path / "run"
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, data, run)))
    md = write_report([run], tmp_path / "report")[1].read_text()
    assert "has changed since training" not in md
    lines = (data / "test.csv").read_text().splitlines()
    (data / "test.csv").write_text("\n".join(lines[:-4]) + "\n")  # 4 test queries fewer
    md = write_report([run], tmp_path / "report2")[1].read_text()
    assert "The test file has changed since training (20 queries then, 16 now): the scores in the runs table are training's" in md


def test_the_data_section_names_a_validation_file_even_where_it_has_moved():
    """Whether validation came from a file is what loading noted, not whether the path still exists
    where the report runs."""
    from types import SimpleNamespace

    from bankintent.report import _validation_note

    moved = SimpleNamespace(notes={"validation": "/gone/data/valid.csv", "validation_from_file": True})
    assert _validation_note(moved) == "the file `valid.csv`"
    carved = SimpleNamespace(notes={"validation": "a stratified 10% of train.csv (seed 42)", "validation_from_file": False,
                                    "shots": {"per_intent": 5, "seed": 43}})
    assert _validation_note(carved) == ("a stratified 10% of train.csv (seed 42); the training split is a draw of 5 example(s) "
                                        "per intent (seed 43)")


def test_evaluate_reads_out_of_scope_rows_under_the_label_the_user_names(tiny_runs, tiny_data, tmp_path):
    rows = pd.read_csv(tiny_data / "test.csv")
    oos = pd.DataFrame({"text": ["what is the weather in paris", "tell me a joke please"], "category": "OOS"})
    pd.concat([rows, oos]).to_csv(tmp_path / "held.csv", index=False)
    with pytest.raises(DataError, match=r"label 'OOS' never seen in training, nor on 1 more row\(s\) labelled so \(out-of-scope rows are read under the label "
                                        r"'out_of_scope'; --oos-label OOS reads these as such\)"):
        evaluate_run(tiny_runs["bert"], data=str(tmp_path / "held.csv"), output=tmp_path / "a")
    summary = evaluate_run(tiny_runs["bert"], data=str(tmp_path / "held.csv"), output=tmp_path / "b", oos_label="OOS")
    assert summary["queries"] == len(rows) and summary["out_of_scope"]["oos_examples_size"] == 2
    caught = pd.read_csv(tmp_path / "b" / "test_out_of_scope.csv")
    assert caught.line.tolist() == [len(rows) + 2, len(rows) + 3]  # their lines in held.csv, to join its other columns back by
    assert caught.file.tolist() == ["held.csv", "held.csv"]
    from bankintent.data import queries_digest, read_test_file  # the file's queries' digest: the report compares runs by it

    assert summary["data_sha256"] == queries_digest(*read_test_file(tmp_path / "held.csv", set(json.loads(
        (tiny_runs["bert"] / "adapter" / "labels.json").read_text())), oos_label="OOS"))
    assert pd.read_csv(tmp_path / "b" / "test_predictions.csv").line.tolist() == list(range(2, len(rows) + 2))
    with pytest.raises(BankintentError, match="--oos-label and --unseen-as-oos are for a file given with --data"):
        evaluate_run(tiny_runs["bert"], output=tmp_path / "c", oos_label="OOS")
    with pytest.raises(BankintentError, match=r"helt.csv: file not found$"):  # a mistyped name: not told the option is misplaced
        evaluate_run(tiny_runs["bert"], data=str(tmp_path / "helt.csv"), output=tmp_path / "c", unseen_as_oos=True)


def test_evaluate_reads_the_file_before_loading_the_model(tiny_runs, tmp_path, monkeypatch):
    (tmp_path / "held.csv").write_text("text,category\ni lost my card,lost_or_stolen_card\nmy card,never_trained\n")

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the file's bad row was said")

    monkeypatch.setattr("bankintent.evaluation.Predictor.load", loaded)
    with pytest.raises(DataError, match=r"held.csv: line 3: label 'never_trained' never seen in training"):
        evaluate_run(tiny_runs["bert"], data=str(tmp_path / "held.csv"), output=tmp_path / "out")


def test_evaluate_takes_the_rows_of_intents_the_model_never_saw_as_out_of_scope_when_asked(tiny_runs, tiny_data, tmp_path):
    rows = pd.read_csv(tiny_data / "test.csv")
    new = pd.DataFrame({"text": ["i want a mortgage", "what rate for a home loan", "remortgage my flat"], "category": "mortgage"})
    pd.concat([rows, new]).to_csv(tmp_path / "traffic.csv", index=False)
    with pytest.raises(DataError, match=r"label 'mortgage' never seen in training, nor on 2 more row\(s\) labelled so \(--unseen-as-oos counts the rows of intents"):
        evaluate_run(tiny_runs["bert"], data=str(tmp_path / "traffic.csv"), output=tmp_path / "a")
    summary = evaluate_run(tiny_runs["bert"], data=str(tmp_path / "traffic.csv"), output=tmp_path / "b", unseen_as_oos=True)
    assert summary["queries"] == len(rows) and summary["out_of_scope"]["oos_examples_size"] == 3
    assert "3 rows of 1 intent(s) the model never saw (mortgage)" in summary["out_of_scope"]["oos_examples"]
    assert "oos_recall_by_source" not in summary["out_of_scope"]  # one kind of out-of-scope rows
    chatter = pd.DataFrame({"text": ["what is the weather", "tell me a joke", "sing a song", "who won the match"], "category": "out_of_scope"})
    pd.concat([rows, new, chatter]).to_csv(tmp_path / "both.csv", index=False)  # chatter and a new intent: pooled, one hid the other
    both = evaluate_run(tiny_runs["bert"], data=str(tmp_path / "both.csv"), output=tmp_path / "both", unseen_as_oos=True)["out_of_scope"]
    caught = pd.read_csv(tmp_path / "both" / "test_out_of_scope.csv")
    assert list(both["oos_recall_by_source"].values()) == [caught.caught[:4].mean(), caught.caught[4:].mean()]
    assert both["oos_recall"] == pytest.approx((4 * caught.caught[:4].mean() + 3 * caught.caught[4:].mean()) / 7)
    assert list(both["oos_recall_by_source"]) == ["both.csv: 4 rows labelled 'out_of_scope'",
                                                  "both.csv: 3 rows of 1 intent(s) the model never saw (mortgage)"]
    caught = pd.read_csv(tmp_path / "b" / "test_out_of_scope.csv")
    assert caught.text.tolist() == new.text.tolist() and caught.line.tolist() == [len(rows) + 2 + i for i in range(3)]
    cased = rows.assign(category=rows.category.str.upper().str.replace("_", " "))  # 'CARD ARRIVAL' for card_arrival: no new intent
    pd.concat([cased, new]).to_csv(tmp_path / "cased.csv", index=False)  # its right answers were the fallback's misses
    with pytest.raises(DataError, match=rf"cased.csv: line 2: label '{cased.category[0]}' is the model's intent '{rows.category[0]}' "
                                        rf"written otherwise \({len(rows) - 1} more row\(s\) of this file likewise\); write the labels"):
        evaluate_run(tiny_runs["bert"], data=str(tmp_path / "cased.csv"), output=tmp_path / "c", unseen_as_oos=True)
    from bankintent.data import Examples, _check_written_otherwise

    _check_written_otherwise(Examples(["a", "b"], ["-1", "1.0"], [2, 3]), tmp_path / "ids.csv", {"1", "10"})  # ids: no guess
    new.to_csv(tmp_path / "new_intent.csv", index=False)  # only queries of the new intent: what the fallback catches of them
    summary = evaluate_run(tiny_runs["bert"], data=str(tmp_path / "new_intent.csv"), output=tmp_path / "b", unseen_as_oos=True,
                           overwrite=True)
    caught = pd.read_csv(tmp_path / "b" / "test_out_of_scope.csv")
    assert summary["queries"] == 0 and summary["out_of_scope"]["oos_recall"] == caught.caught.mean() and len(caught) == 3
    assert json.loads((tmp_path / "b" / "test_evaluation.json").read_text()) == summary
    assert not (tmp_path / "b" / "test_predictions.csv").exists()  # the earlier evaluation's files go with it
    pd.concat([new, chatter]).to_csv(tmp_path / "away.csv", index=False)  # out-of-scope rows alone, of both kinds: each kind's share
    away = evaluate_run(tiny_runs["bert"], data=str(tmp_path / "away.csv"), output=tmp_path / "away", unseen_as_oos=True)
    caught = pd.read_csv(tmp_path / "away" / "test_out_of_scope.csv")
    assert away["queries"] == 0 and list(away["out_of_scope"]["oos_recall_by_source"].values()) == [caught.caught[:4].mean(),
                                                                                                    caught.caught[4:].mean()]
    assert "away.csv: 4 rows labelled 'out_of_scope' (" in summary_lines(away, "test", tmp_path / "away")[0]


def test_evaluate_measures_another_fallback_into_a_folder_of_its_own(tiny_runs, tiny_data, tmp_path):
    trained = Predictor.load(tiny_runs["bert"])
    with pytest.raises(BankintentError, match="--oos-score and --oos-threshold measure another fallback than the trained one: give --output"):
        evaluate_run(tiny_runs["bert"], data=str(tiny_data / "test.csv"), oos_threshold=2 * trained.oos_threshold)
    summary = evaluate_run(tiny_runs["bert"], data=str(tiny_data / "test.csv"), output=tmp_path / "looser",
                           oos_score="msp", oos_threshold=0.9)
    kept = np.mean([not a["out_of_scope"] for a in Predictor.load(tiny_runs["bert"], oos_score="msp", oos_threshold=0.9).predict(
        pd.read_csv(tiny_data / "test.csv").text.tolist())])
    assert summary["out_of_scope"]["oos_score"] == "msp" and summary["out_of_scope"]["threshold"] == 0.9
    assert summary["out_of_scope"]["coverage"] == pytest.approx(kept) and summary["out_of_scope"].get("coverage_target") is None


def test_evaluate_measures_a_file_of_out_of_scope_queries_alone(tiny_runs, tmp_path, capsys):
    """Chatter measured apart from the in-scope traffic: no accuracy to give, the share caught."""
    from bankintent import cli

    pd.DataFrame({"text": ["what is the weather in paris", "tell me a joke please"], "category": "out_of_scope"}).to_csv(
        tmp_path / "chatter.csv", index=False)
    cli.main(["evaluate", str(tiny_runs["bert"]), "--data", str(tmp_path / "chatter.csv"), "--output", str(tmp_path / "e")])
    summary = json.loads((tmp_path / "e" / "test_evaluation.json").read_text())
    recall = summary["out_of_scope"]["oos_recall"]
    assert summary["queries"] == 0 and summary["out_of_scope"]["oos_examples_size"] == 2
    assert (f"test: no in-scope query; out-of-scope ({summary['out_of_scope']['oos_score']}, threshold "
            f"{summary['out_of_scope']['threshold']:.4g}): catches {recall:.1%} of chatter.csv: 2 rows labelled 'out_of_scope'"
            ) in capsys.readouterr().out


def test_an_intent_with_no_query_in_the_split_has_no_f1_rather_than_the_worst(tmp_path):
    from bankintent.evaluation import per_intent

    intents = per_intent([0, 0, 1, 1], [0, 2, 1, 1], ["a", "b", "never_asked"])  # one query of 'a' taken for never_asked
    assert list(intents.intent) == ["a", "b", "never_asked"]  # the absent intent last, not first
    absent = intents.set_index("intent").loc["never_asked"]
    assert absent.support == 0 and np.isnan(absent.f1) and np.isnan(absent.recall) and absent.precision == 0.0
    assert intents.set_index("intent").loc["a"].f1 == pytest.approx(2 / 3)
    unasked = per_intent([0, 1], [0, 1], ["a", "b", "new_intent"]).set_index("intent").loc["new_intent"]
    assert np.isnan(unasked.precision)  # given to no query: no precision, not a 0 that claims wrong answers
    from bankintent.evaluation import summary_lines

    lines = summary_lines({"queries": 2, "accuracy": 1.0, "macro_f1": 1.0, "intents_without_queries": ["new_intent"]}, "test", tmp_path)
    assert "1 of the model's intents have no query here (new_intent): their recall is not measured" in lines
    fallback = {"oos_score": "msp", "threshold": 0.5, "coverage": 0.75, "accuracy_kept": 1.0,
                "for_target": {"coverage": 0.75, "threshold": 0.42, "oos_recall": 1.0}}
    advice = {n: next(line for line in summary_lines({"queries": n, "accuracy": 1.0, "macro_f1": 1.0, "out_of_scope": fallback}, "test",
                                                     tmp_path) if "--oos-threshold 0.42" in line) for n in (4, 300)}
    assert advice[4].endswith("(set on 4 queries, it may answer a share many points off on new ones: set it on a few hundred)")
    assert advice[300].endswith("catching 100.0% of the out-of-scope examples")  # enough queries: no warning
    assert "answers 75.0% of these in-scope queries: --oos-threshold" in advice[300]  # its aim reached: not said twice
    fallback["for_target"] |= {"aim": 0.95, "coverage": 1.0}  # 14 queries: 13 answered is 92.9%, below the aim
    advice = next(line for line in summary_lines({"queries": 14, "accuracy": 1.0, "macro_f1": 1.0, "out_of_scope": fallback}, "test",
                                                 tmp_path) if "--oos-threshold 0.42" in line)
    assert "the threshold that answers 100.0% of these in-scope queries (the nearest to 95% that 14 queries allow): --oos" in advice
    from bankintent.ood import threshold_text  # 6 digits, not 17, rounded up: every query it answered is answered still

    assert [threshold_text(t) for t in (3.0888447761535645, -2.6532111, 1234567.89, 1e-9, 0.42)] == \
        ["3.08885", "-2.65321", "1234570", "0.000000001", "0.42"]
    from bankintent.evaluation import scores  # macro-F1 is the mean of the F1s the table has: never_asked's is none, not 0

    assert scores(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])) == {"accuracy": 0.75, "macro_f1": pytest.approx((2 / 3 + 1) / 2)}


def test_runs_of_other_intents_or_other_test_queries_are_said_not_to_compare(tmp_path):
    """A model before and after two new intents, each evaluated on its own file: both read 100%, and
    side by side they look alike; the report says they do not compare."""
    from bankintent.report import Run, _not_comparable

    v1 = Run("v1", tmp_path / "v1", {"num_labels": 8, "data": "data"}, "")
    v2 = Run("v2", tmp_path / "v2", {"num_labels": 10, "data": "data2"}, "")
    measured = {"v1": {"test_data": "heldout.csv"}, "v2": {"test_data": "heldout2.csv"}}
    assert _not_comparable([v1, v2], measured).startswith("**These runs differ in their intents and test queries** (intents: `v1` 8, `v2` 10)")
    same = Run("v1b", tmp_path / "v1b", {"num_labels": 8, "data": "data"}, "")
    assert _not_comparable([v1, same], {"v1": measured["v1"], "v1b": measured["v1"]}) == ""  # seeds of one recipe compare
    assert _not_comparable([v1, same], {"v1": {}, "v1b": {}}) == ""  # both tested on their data's test file
    few = Run("few", tmp_path / "few", {"num_labels": 8, "data": "data_few", "test_sha256": "ab"}, "")  # another folder, the same test file
    full = Run("full", tmp_path / "full", {"num_labels": 8, "data": "data_full", "test_sha256": "ab"}, "")
    assert _not_comparable([few, full], {}) == ""
    other = Run("other", tmp_path / "other", {"num_labels": 8, "data": "data_full", "test_sha256": "cd"}, "")
    assert _not_comparable([few, other], {}).startswith("**These runs differ in their test queries**")
    before = Run("before", tmp_path / "before", {"num_labels": 8, "data": "data_few"}, "")  # trained before digests were recorded
    assert _not_comparable([few, before], {}) == ""  # their data folders are compared, as then
    assert _not_comparable([v1, full], {"v1": {"test_data": "/x/held.csv", "test_sha256": "ab"}}) == ""  # evaluate --data's file: its digest


def test_runs_of_two_folders_named_alike_are_told_apart_not_averaged_as_seeds(tmp_path, monkeypatch):
    """`report A/run B/run`: two models, one name; their curves were averaged as one run's seeds, one cost
    row and one test score shown for both. A sweep's seeds keep their run's one name."""
    from bankintent import ood
    from bankintent.report import collect, measured_test

    def run_folder(folder, **metrics):
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"seed": 42, **metrics}))

    run_folder(tmp_path / "A" / "run", num_labels=4)
    run_folder(tmp_path / "B" / "run", num_labels=3, test_accuracy=None)
    for seed in (42, 43):
        run_folder(tmp_path / "sweep" / "runs" / "lora" / f"seed-{seed}", num_labels=4)
    monkeypatch.chdir(tmp_path)
    runs, _ = collect(["A/run", "B/run", "sweep/runs/lora/seed-42", "sweep/runs/lora/seed-43"])
    assert [r.name for r in runs] == ["A/run", "B/run", "lora", "lora"]
    (tmp_path / "B" / "run" / "test_evaluation.json").write_text(json.dumps(  # evaluate --data FILE of no out-of-scope row
        {"accuracy": 0.8, "out_of_scope": {"oos_examples": ood.PROBE_SET, "oos_recall": 0.88, "coverage": 0.9}}))
    measured = measured_test(runs[1])  # the probe set's recall is not the file's own ("caught on test")
    assert measured["test_accuracy"] == 0.8 and measured["test_oos_recall"] is None and measured["test_answered"] == 0.9


def test_runs_tied_on_validation_analyse_the_last_given(tmp_path):
    """v1, v2, v3 of a growing data set all at 100% validation accuracy: the first given was analysed,
    and the new intents of the later runs never showed. The last of the tied (most often the newest) is,
    and the others are named."""
    from bankintent.report import analysed_run

    runs = [Run(name, tmp_path / name, {"val_accuracy": accuracy, "seed": 42}, "") for name, accuracy in
            (("v1", 1.0), ("v2", 0.98), ("v3", 1.0))]
    chosen, why = analysed_run(runs)
    assert chosen.name == "v3" and why.endswith("tied with `v1 (seed 42)`: the last given")
    assert analysed_run(runs[:2])[0].name == "v1"  # no tie: the best
