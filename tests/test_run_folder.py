"""The run folder: `train` refuses to overwrite a run unless told to (issue 12, item 2), leaves nothing
behind when it fails before training, records an absolute data path (item 8) and writes every file
with the same permissions."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
import yaml

from bankintent import resolve_config, train
from bankintent.errors import BankintentError, ConfigError, DataError
from bankintent.evaluation import evaluate_run
from bankintent.sweep import start_run
from conftest import tiny_options, write_csv


def _train(tiny_bert, data, out, **extra):
    return train(resolve_config(None, **{"method": "linear-probe", **tiny_options(tiny_bert, data, out), **extra}))


@pytest.fixture()
def previous_run(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    _train(tiny_bert, tiny_data, out)
    (out / "test_evaluation.json").write_text('{"accuracy": 0.99}')  # what `evaluate` wrote about this model
    return out


def test_an_existing_run_is_refused_without_overwrite(tiny_bert, tiny_data, previous_run):
    before = (previous_run / "adapter" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"run: output folder holds a finished run \(adapter, .*\); pass --overwrite to replace "
                                          r"it, or choose another --output \(in Python: overwrite=True, output=...\)") as error:
        _train(tiny_bert, tiny_data, previous_run, seed=7)  # finished: no --resume offered, there is nothing to continue
    assert "\n" not in str(error.value)
    (previous_run / "metrics.json").rename(previous_run / "metrics.json.bak")  # stopped before its end: --resume continues it
    with pytest.raises(ConfigError, match=r"run: output folder is not empty \(adapter, .*\); pass --overwrite to replace it, "
                                          r"--resume to continue its training, or choose another --output \(in Python: "
                                          r"overwrite=True, resume=True, output=...\)"):
        _train(tiny_bert, tiny_data, previous_run, seed=7)
    (previous_run / "metrics.json.bak").rename(previous_run / "metrics.json")
    assert (previous_run / "adapter" / "model.safetensors").read_bytes() == before


def test_overwrite_replaces_the_whole_run(tiny_bert, tiny_data, previous_run, tmp_path):
    outside = tmp_path / "keep-me"
    outside.mkdir()
    (outside / "precious.txt").write_text("x")
    (previous_run / "link").symlink_to(outside)  # a link inside the run folder: removed, never followed
    (previous_run / "command.txt").write_text("bankintent train ...")  # a launcher's file: kept
    _train(tiny_bert, tiny_data, previous_run, overwrite=True, method="lora")
    assert not (previous_run / "test_evaluation.json").exists() and not (previous_run / "link").exists()
    assert (outside / "precious.txt").read_text() == "x"
    assert (previous_run / "command.txt").is_file()
    assert json.loads((previous_run / "metrics.json").read_text())["method"] == "lora"
    assert (previous_run / "adapter" / "adapter_model.safetensors").is_file() and not (previous_run / "adapter" / "model.safetensors").exists()
    # the run's config.yaml is the command to make it again, not to empty it again: --overwrite is not recorded
    saved = yaml.safe_load((previous_run / "config.yaml").read_text())
    assert (saved["overwrite"], saved["resume"]) == (False, False)
    (previous_run / "test_evaluation.json").write_text('{"accuracy": 0.99}')
    with pytest.raises(ConfigError, match="output folder holds a finished run"):
        train(resolve_config(previous_run / "config.yaml"))
    assert (previous_run / "test_evaluation.json").is_file()


def test_overwrite_empties_only_a_run_folder(tiny_bert, tiny_data, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    for overwrite in (True, False):  # --overwrite is refused, and not offered
        with pytest.raises(ConfigError, match=r"home: output folder holds files that are not a run's \(thesis.tex\); choose another "
                                              r"--output \(in Python: output=...\) or empty it yourself$"):
            _train(tiny_bert, tiny_data, tmp_path / "home", overwrite=overwrite)
    assert (tmp_path / "home" / "thesis.tex").read_text() == "years of work"


def test_a_launchers_files_do_not_make_the_folder_non_empty(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.log").write_text("")  # `bankintent train ... > run/train.log`
    _train(tiny_bert, tiny_data, out)
    assert (out / "metrics.json").is_file() and (out / "train.log").is_file()


def test_a_run_that_fails_before_training_leaves_no_folder(tiny_bert, tiny_data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    write_csv(bad / "train.csv", [("only one", "a")] * 3 + [("x", "b")])
    out = tmp_path / "new" / "run"
    with pytest.raises(DataError):
        _train(tiny_bert, bad, out)
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="unknown augment 'nonsense'"):
        _train(tiny_bert, tiny_data, out, augment="nonsense")
    assert not (tmp_path / "new").exists()


def test_overwrite_with_bad_data_keeps_the_previous_run(tiny_bert, previous_run, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.csv").write_text("text,label\nx,a\n")
    with pytest.raises(DataError, match="missing column"):
        _train(tiny_bert, bad, previous_run, overwrite=True)
    assert (previous_run / "adapter" / "model.safetensors").is_file() and (previous_run / "test_evaluation.json").is_file()


def test_ctrl_c_before_training_starts_keeps_the_previous_run_and_says_run_again(tiny_bert, tiny_data, previous_run,
                                                                                 monkeypatch):
    """Stopped while the data or the base model loads, --overwrite has not emptied the folder: its
    finished run is intact, and --resume would do nothing there, so the message says to run again."""
    import bankintent.training
    from bankintent.errors import TrainingInterrupted

    def interrupted(cfg, processes):
        raise KeyboardInterrupt

    monkeypatch.setattr(bankintent.training, "_resolve", interrupted)
    with pytest.raises(TrainingInterrupted, match="before training started, the output folder as it was: run the same") as stop:
        _train(tiny_bert, tiny_data, previous_run, overwrite=True)
    assert not stop.value.resumable
    assert (previous_run / "adapter" / "model.safetensors").is_file() and (previous_run / "metrics.json").is_file()


def test_ctrl_c_in_python_says_how_to_go_on_and_is_no_exception_a_notebook_swallows(tiny_bert, tiny_data, tmp_path, monkeypatch):
    """Stopped after the run folder started (in the stages that keep no checkpoint, here): from Python
    too, the stop says what the folder holds and how to go on, and ``except Exception`` does not take it."""
    import bankintent.training
    from bankintent.errors import TrainingInterrupted

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bankintent.training, "prepare_splits", interrupted)
    with pytest.raises(TrainingInterrupted) as stop:
        try:
            _train(tiny_bert, tiny_data, tmp_path / "run")
        except Exception:  # a notebook's loop over runs
            pytest.fail("the stop was taken for a failed run")
    assert str(stop.value) == (f"interrupted. Stopped before the run's first checkpoint: nothing to continue from; bankintent train "
                               f"--config {tmp_path / 'run'}/config.yaml --resume (in Python: train(output={str(tmp_path / 'run')!r}, "
                               f"resume=True)) starts it again from the beginning")
    assert stop.value.resumable and isinstance(stop.value, KeyboardInterrupt)


def test_resume_removes_the_previous_models_evaluation(tiny_bert, tiny_data, previous_run):
    (previous_run / "metrics.json").unlink()  # written last: without it the run did not finish
    _train(tiny_bert, tiny_data, previous_run, resume=True)
    assert not (previous_run / "test_evaluation.json").exists() and (previous_run / "validation_coverage.csv").is_file()


def test_after_ctrl_c_the_note_and_the_model_loaders_say_what_the_folder_holds(tmp_path):
    """Ctrl-C before the first checkpoint (the contrastive pair training, the probe) leaves nothing to
    continue from: the note says --resume starts again, and predict on the run folder says it has no
    model yet rather than "not a model folder"."""
    from bankintent.errors import ModelError
    from bankintent.predict import Predictor
    from bankintent.training import interrupted_note

    run = tmp_path / "my runs" / "run"  # a space in the path: the command printed is quoted, to paste as it is
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: contrastive\n")
    (run / "checkpoints" / "contrastive").mkdir(parents=True)
    assert "nothing to continue from" in interrupted_note(run) and "starts it again from the beginning" in interrupted_note(run)
    with pytest.raises(ModelError, match=r"no model in this run folder yet .*interrupted.* --resume\)$"):
        Predictor.load(run)
    (run / "checkpoints" / "checkpoint-12").mkdir()
    (run / "checkpoints" / "checkpoint-12" / "trainer_state.json").write_text("{}")
    assert interrupted_note(run) == (f"Continue with: bankintent train --config '{run}/config.yaml' --resume (in Python: "
                                     f"train(output={str(run)!r}, resume=True))")


def test_a_run_on_two_processes_resumes_on_two(tmp_path, monkeypatch):
    """Stopped, a --nproc 2 run printed the resume command without --nproc, and that command continued in
    one process, each optimizer step on half the batch; now it says --nproc 2, and another count is refused."""
    from bankintent.training import check_same_processes, interrupted_note, record_processes

    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    record_processes(checkpoints, 2)
    check_same_processes(checkpoints, 1, run)  # stopped before its first checkpoint: it starts again, in any number
    (checkpoints / "checkpoint-5").mkdir()
    (checkpoints / "checkpoint-5" / "trainer_state.json").write_text("{}")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it in each process
    assert interrupted_note(run) == f"Continue with: bankintent train --nproc 2 --config {run}/config.yaml --resume"
    with pytest.raises(ConfigError, match=r"run: the run trained in 2 process\(es\) and would continue in 1, each optimizer step on "
                                          r"another batch; continue with: bankintent train --nproc 2 --config .*/run/config.yaml --resume$"):
        check_same_processes(checkpoints, 1, run)
    check_same_processes(checkpoints, 2, run)


def test_resume_on_a_finished_run_keeps_it(tiny_bert, tiny_data, previous_run, caplog):
    metrics = previous_run / "metrics.json"
    written = metrics.stat().st_mtime_ns
    assert _train(tiny_bert, tiny_data, previous_run, resume=True) == json.loads(metrics.read_text())
    assert metrics.stat().st_mtime_ns == written and (previous_run / "test_evaluation.json").is_file()
    assert "finished training already" in caplog.text and "--overwrite" in caplog.text


def test_resume_with_other_options_is_refused_finished_or_not(tiny_bert, tiny_data, previous_run, tmp_path):
    """Another --data (or --epochs) with --resume would be ignored by a finished run and mixed into an
    interrupted one; the same options, given again or through the run's config.yaml, resume."""
    other = tmp_path / "other"
    other.mkdir()
    write_csv(other / "train.csv", [(f"query {i} about {label}", label) for i in range(6) for label in "abc"])
    metrics = (previous_run / "metrics.json").read_text()
    for finished in (True, False):
        if not finished:
            (previous_run / "metrics.json").unlink()
        with pytest.raises(ConfigError, match=rf"run: --resume continues the run as its config.yaml records it, and options differ "
                                              rf"from it \(data {tiny_data.resolve()} -> {other.resolve()}; epochs 1 -> 3\); continue it "
                                              rf"with `bankintent train --config {previous_run}/config.yaml --resume`, or pass --overwrite"):
            _train(tiny_bert, other, previous_run, resume=True, epochs=3)
        assert (previous_run / "adapter" / "model.safetensors").is_file()
    (previous_run / "metrics.json").write_text(metrics)
    assert _train(tiny_bert, tiny_data, previous_run, resume=True)["data"] == str(tiny_data.resolve())  # the same options
    assert train(resolve_config(previous_run / "config.yaml", resume=True))["method"] == "linear-probe"


def test_evaluating_a_file_does_not_repeat_the_training_datas_notes(tiny_bert, tiny_data, tmp_path, caplog):
    """evaluate --data FILE reads the run's data again only to say which queries it trained on: the
    notes training gave on that data (a file named alone, duplicates) are not said again."""
    out = tmp_path / "run"
    _train(tiny_bert, tiny_data / "train.csv", out)
    assert "--data names one file" in caplog.text
    caplog.clear()
    from bankintent import evaluate  # the Python API, a Path as the data

    summary = evaluate(out, data=tiny_data / "test.csv")
    saved = json.loads((out / "test_evaluation.json").read_text())
    assert (summary["accuracy"], summary["queries"]) == (saved["accuracy"], saved["queries"]) and summary["queries"] > 0
    said = [record.getMessage() for record in caplog.records]
    assert not any("--data names one file" in line or "train.csv: " in line and "duplicated" in line for line in said)
    assert any("test.csv: " in line and "also in train.csv" in line for line in said)  # what is said of the file evaluated stays
    caplog.clear()
    with pytest.raises(BankintentError, match="no test file"):  # the run's own data, which has none: the error alone
        evaluate(out)
    assert not caplog.records
    assert json.dumps(summary, allow_nan=False)  # returned as written: None where a length bucket has no query, not NaN
    with pytest.raises(ConfigError, match=r"evaluate: unknown option\(s\) text_col \(text_column\?\)"):
        evaluate(out, data=tiny_data / "test.csv", text_col="text")
    with pytest.raises(ConfigError, match=r"^evaluate: split must be one of 'test', 'validation', got 'train'$"):
        evaluate(out, split="train")  # it evaluated the validation split and wrote train_evaluation.json
    import pandas as pd

    with pytest.raises(ConfigError, match=r"^evaluate: data must be a file of labelled queries \(.csv, .tsv, .jsonl or .parquet\), got "
                                          r"DataFrame; save it first, e.g. frame.to_csv\('held_out.csv', index=False\)$"):
        evaluate(out, data=pd.read_csv(tiny_data / "test.csv"))  # an OSError once; then train's advice, to save it as train.csv
    with pytest.raises(DataError, match=r"test.csv: line 1: missing column 'query' .*in Python\); every file of a data set uses the same names$"):
        evaluate(out, data=tiny_data / "test.csv", text_column="query")  # said in Python's words once, not twice
    other = tmp_path / "other.csv"
    other.write_text((tiny_data / "test.csv").read_text())
    with pytest.raises(BankintentError, match=r"pass --overwrite .*\(in Python each --flag is a keyword: .*--overwrite is overwrite=True\)"):
        evaluate(out, data=other)


def test_a_thin_new_intent_is_said_and_weighed_nearer_the_others(tiny_bert, tiny_data, tmp_path, caplog):
    """A new intent of 8 examples among intents of 20: named in the log, metrics.json and the model card,
    and its training queries repeated (twice here: 18 // 7 for the median's 18 training queries)."""
    caplog.set_level(logging.INFO, logger="bankintent")
    data = tmp_path / "data"
    data.mkdir()
    rows = (tiny_data / "train.csv").read_text().splitlines()
    extra = [f"buy some bitcoin {i},buy_crypto" for i in range(8)]
    (data / "train.csv").write_text("\n".join(rows + extra) + "\n")
    metrics = _train(tiny_bert, data, tmp_path / "run")
    assert metrics["thin_intents"] == {"buy_crypto": 7} and metrics["thin_intents_repeated"] == {"buy_crypto": 2}
    assert "1 intent(s) have far fewer training queries than the median intent (18): 'buy_crypto': 7 (+1 held out for validation)" in caplog.text
    assert "thin intents: training queries repeated ('buy_crypto' x2)" in caplog.text
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert "`buy_crypto` (7). Their training queries were repeated (`buy_crypto` x2, `--thin-repeats`)" in card
    plain = _train(tiny_bert, data, tmp_path / "plain", thin_repeats=1)
    assert plain["thin_intents"] == {"buy_crypto": 7} and plain["thin_intents_repeated"] == {}
    assert metrics["train_size"] == plain["train_size"] + 7 == metrics["data_record"]["train"] + metrics["intent_names_added"] + 7  # copies too
    assert f"({metrics['data_record']['train']} training queries)" in card  # the data's own: the copies are said apart


def test_config_records_absolute_paths_and_evaluate_works_elsewhere(tiny_bert, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_data.parent)
    out = tmp_path / "run"
    _train(os.path.relpath(tiny_bert), tiny_data.name, os.path.relpath(out))  # relative paths
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"] == str(tiny_data.resolve()) and os.path.isabs(saved["data"])
    assert saved["output"] == str(out.resolve()) and saved["base_model"] == str(tiny_bert.resolve())
    assert json.loads((out / "metrics.json").read_text())["data"] == str(tiny_data.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    summary = evaluate_run(out, "test")
    assert summary["queries"] == 20
    assert evaluate_run(out / "adapter", "test")["queries"] == 20  # the model folder: its run's config.yaml
    import shutil

    shutil.copytree(out / "adapter", tmp_path / "export")  # a model with no run around it: no data to default to
    with pytest.raises(BankintentError, match=r"export: no config.yaml to say what the model was trained on .*--data FILE"):
        evaluate_run(tmp_path / "export", "test")
    # an export names the model folder it was made from (export.json): while that run is here, its data is the export's
    (tmp_path / "export" / "export.json").write_text(json.dumps({"source": str((out / "adapter").resolve())}))
    assert evaluate_run(tmp_path / "export", "test")["queries"] == 20
    shutil.move(out, tmp_path / "moved")  # the run gone (the export on another machine): nothing to default to again
    with pytest.raises(BankintentError, match=r"export: no config.yaml to say what the model was trained on .*--data FILE"):
        evaluate_run(tmp_path / "export", "test")
    out = tmp_path / "moved"
    # the tiny test queries leave length buckets empty (accuracy NaN): the file is still strict JSON, with null
    strict = json.loads((out / "test_evaluation.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert any(row["accuracy"] is None for row in strict["accuracy_by_length"])


def test_a_model_whose_intents_are_not_its_datas_is_refused_in_one_line(previous_run):
    """The intents of a model trained on ids, renamed by hand in labels.json: evaluate ended in a KeyError
    traceback, reading the run's data with labels the model no longer had."""
    labels = previous_run / "adapter" / "labels.json"
    names = json.loads(labels.read_text())
    labels.write_text(json.dumps([f"intent {name}" for name in names]))
    with pytest.raises(DataError, match=r"adapter: the model's intents are not those of the data read \(.*tiny_data.*; the model only: "
                                        r"'intent card_arrival', 'intent exchange_rate', 'intent lost_or_stolen_card', ...; the data only: "
                                        r"'card_arrival', 'exchange_rate', 'lost_or_stolen_card', ...\); was the data or the model") as exc:
        evaluate_run(previous_run, "test", overwrite=True)
    assert "\n" not in str(exc.value)


def test_banking77_stays_a_name_in_config(tiny_bert, tmp_path, monkeypatch):
    from bankintent.training import saved_config

    cfg = resolve_config(None, data="banking77", output=str(tmp_path))
    assert saved_config(cfg).data == "banking77" and cfg.data == "banking77"


def test_model_files_have_the_permissions_of_the_other_files(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    train(resolve_config(None, method="lpft", **tiny_options(tiny_bert, tiny_data, out)))
    expected = stat.S_IMODE((out / "config.yaml").stat().st_mode)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.relative_to(out).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
            if stat.S_IMODE(p.stat().st_mode) != expected} == {}


def test_the_sweep_starts_a_fresh_run_with_overwrite(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("bankintent.sweep.subprocess.Popen", lambda args, **kwargs: started.append(args))
    start_run(["bankintent", "train", "--output", str(tmp_path / "a")], tmp_path / "a")
    start_run(["bankintent", "train", "--output", str(tmp_path / "b")], tmp_path / "b", resume=True)
    assert started[0][-1] == "--overwrite" and started[1][-1] == "--resume"


def test_metrics_record_the_users_validation_file_and_the_rows_skipped(tiny_bert, tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = (tiny_data / "train.csv").read_text().splitlines()
    (data / "train.csv").write_text("\n".join(rows[:5] + ['"   ",card_arrival'] + rows[5:]) + "\n")  # one blank query
    write_csv(data / "valid.csv", [("where is my new card", "card_arrival"), ("exchange rates today", "exchange_rate"),
                                   ("my card was stolen", "lost_or_stolen_card"), ("top up failed again", "top_up_failed")])
    metrics = _train(tiny_bert, data, tmp_path / "run")
    assert metrics["empty_rows_skipped"] == 1 and metrics["train_size"] == 80 and metrics["val_size"] == 4
    assert metrics["validation"] == str(data / "valid.csv") and metrics["val_min_per_intent"] == 1
    with pytest.raises(DataError, match=r"train.csv: line 6: empty text"):
        _train(tiny_bert, data, tmp_path / "strict", strict_data=True)
    assert not (tmp_path / "strict").exists()


def test_train_options_override_the_config_they_come_with(tiny_bert, tiny_data, tmp_path):
    import bankintent

    cfg = resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, tmp_path / "from_config"))
    metrics = bankintent.train(cfg, output=str(tmp_path / "given"), seed=7)  # as flags override a config file
    assert metrics["seed"] == 7 and (tmp_path / "given" / "metrics.json").is_file() and not (tmp_path / "from_config").exists()
    with pytest.raises(ConfigError, match="unknown option"):
        bankintent.train(cfg, sed=7)
