"""A search of three trials on a tiny model, interrupted and resumed from its SQLite file."""

import json
import shutil

import optuna
import pytest

from bankintent.errors import ConfigError
from bankintent.search import run_search, suggest, target_modules


def test_search_resumes_from_its_sqlite_study(tiny_bert, tiny_data, tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path}/study.db"
    data = shutil.copytree(tiny_data, tmp_path / "data")  # changed below
    options = {"base_model": str(tiny_bert), "data": str(data), "batch_size": 16, "max_length": 24, "probe_c": [1.0]}
    # an earlier search was killed during its first trial, whose hyperparameters were these
    study = optuna.create_study(study_name="bankintent-lpft", storage=storage, direction="maximize")
    interrupted = {"lr": 1e-3, "epochs": 1, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "attention"}
    study.enqueue_trial(interrupted)
    suggest(study.ask(), "lpft")

    first = run_search("lpft", trials=2, storage=storage, **options)
    trials = optuna.load_study(study_name="bankintent-lpft", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params == interrupted  # retried with the same hyperparameters
    assert first["best_val_accuracy"] == max(t.value for t in trials[1:])
    finished = (tmp_path / "trial-1" / "metrics.json").stat().st_mtime_ns

    summary = run_search("lpft", trials=3, storage=storage, **options)  # one more trial, the others kept
    trials = optuna.load_study(study_name="bankintent-lpft", storage=storage).get_trials()
    assert len(trials) == 4 and trials[3].state.name in ("COMPLETE", "PRUNED")
    assert trials[3].params not in (trials[1].params, trials[2].params)  # a new point, not the first draw again
    with pytest.raises(ConfigError, match=r"study.db: the study's trials ran with other options \(max_train_samples \(not given\) -> 60\); "
                                          r"give a new --storage"):
        run_search("lpft", trials=4, storage=storage, **options, max_train_samples=60)
    assert (tmp_path / "trial-1" / "metrics.json").stat().st_mtime_ns == finished
    monkeypatch.chdir(tmp_path / "trial-1")  # the same data named from another folder is the same study
    assert run_search("lpft", trials=3, storage=storage, **{**options, "data": "../data"})["best_trial"] == summary["best_trial"]
    with open(data / "train.csv", "a") as handle:  # a row added in place: the next trials would train on other data
        handle.write("one more query,card_arrival\n")
    with pytest.raises(ConfigError, match=r"data: the data changed since the study started \(then \d+ training and \d+ validation "
                                          r"queries of 4 intents, now .*\); its trials would be compared .* give a new --storage"):
        run_search("lpft", trials=4, storage=storage, **options)
    best = json.loads((tmp_path / f"trial-{summary['best_trial']}" / "metrics.json").read_text())
    assert summary["best_test_accuracy"] == best["test_accuracy"] and summary["best_val_accuracy"] == best["val_accuracy"]
    assert "--lora-r" in summary["best_command"] and f"--output {tmp_path}/trial-{summary['best_trial']}" in summary["best_command"]
    md = (tmp_path / "search.md").read_text()
    assert f"Test accuracy of the best trial (read once, here): {100 * best['test_accuracy']:.2f}%" in md
    tied = sum(t.value == summary["best_val_accuracy"] for t in trials if t.state.name == "COMPLETE")
    assert f"One validation query is {100 / best['val_size']:.2f} points ({best['val_size']} queries)" in md
    assert (f"{tied} finished trials tie with the best" in md) == (tied > 1)
    assert "## Importance of each hyperparameter" in md and "| 3 | " in md
    assert summary["importance"] == {} and "Not given: fewer than 5 finished trials" in md  # 3: every parameter would weigh alike


@pytest.mark.parametrize("method", ["lpft", "lpft-full", "full", "contrastive"])
def test_learning_rate_range_per_method(method):
    """Every weight moving takes far lower rates than LoRA: the full-weight methods never draw LoRA's highest."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rates = [suggest(study.ask(), method)["lr"] for _ in range(200)]
    lora = method == "lpft"
    assert max(rates) > 1e-3 if lora else max(rates) <= 3e-4
    assert min(rates) >= (1e-5 if lora else 5e-6)


def test_target_module_choices(tiny_bert, tiny_distilbert):
    assert target_modules("attention", str(tiny_bert)) == ["query", "key", "value", "attention.output.dense"]
    assert target_modules("attention+ffn", str(tiny_distilbert))[-2:] == ["ffn.lin1", "ffn.lin2"]


def test_storage_must_be_sqlite(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="expected sqlite:///"):
        run_search("lpft", trials=1, storage=f"{tmp_path}/study.db")
    with pytest.raises(ConfigError, match=r"--storage sqlite:///.*: cannot open the study's database \(unable to open database file\)"):
        run_search("lpft", trials=1, storage=f"sqlite:///{tmp_path}/", data=str(tiny_data))  # a folder, not a file


def test_what_cannot_be_searched_is_refused_before_any_trial(tmp_path):
    from conftest import write_csv

    with pytest.raises(ConfigError, match="--method linear-probe: the linear probe has no learning rate or epochs to search"):
        run_search("linear-probe", trials=1, storage=f"sqlite:///{tmp_path}/a/study.db")
    few = tmp_path / "few"
    few.mkdir()
    write_csv(few / "train.csv", [(f"query {i} about {label}", label) for label in ("card", "loan") for i in range(4)])
    with pytest.raises(ConfigError, match="few: no validation split .small data trains on every row., and the search chooses on"):
        run_search("lpft", trials=1, storage=f"sqlite:///{tmp_path}/b/study.db", data=str(few))
    assert not (tmp_path / "b").exists()  # refused before the study was made


@pytest.mark.parametrize("checkpoint", [True, False])
def test_ctrl_c_says_whether_the_trial_in_training_kept_a_checkpoint(tiny_bert, tiny_data, tmp_path, monkeypatch, checkpoint):
    """The stop message said "stopped at a checkpoint" where the trial's own log said it had stopped
    before its first one (nothing to continue from)."""
    import bankintent.search

    def stopped(trial, command, run_dir, bar):  # the trial's training, stopped by Ctrl-C after what it left
        (run_dir / "checkpoints").mkdir(parents=True) if checkpoint else run_dir.mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(bankintent.search, "run_trial", stopped)
    said = "at a checkpoint; .* from its checkpoint" if checkpoint else "before its first checkpoint; .* from its start"
    with pytest.raises(KeyboardInterrupt, match=rf"interrupted: the trial in training stopped {said}\)$"):
        run_search("lpft", trials=1, storage=f"sqlite:///{tmp_path}/study.db", base_model=str(tiny_bert), data=str(tiny_data))


def test_auto_searches_the_method_train_chooses_for_the_data(tiny_bert, tmp_path, monkeypatch, caplog):
    """A few examples per intent with a validation file: train chooses contrastive, and the search drew
    lpft's options (its default method), so its best command was not the recipe train would run."""
    import bankintent.search
    from conftest import write_csv

    few = tmp_path / "few"
    few.mkdir()
    for name, count in (("train", 8), ("valid", 3)):
        write_csv(few / f"{name}.csv", [(f"{name} query {i} about {label}", label) for label in ("card", "loan") for i in range(count)])
    commands = []

    def stopped(trial, command, run_dir, bar):
        commands.append(command)
        raise KeyboardInterrupt

    monkeypatch.setattr(bankintent.search, "run_trial", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_search(trials=1, storage=f"sqlite:///{tmp_path}/study.db", base_model=str(tiny_bert), data=str(few))
    assert commands[0][commands[0].index("--method") + 1] == "contrastive"
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path}/study.db") == ["bankintent-contrastive"]
    config = tmp_path / "lpft.yaml"  # a config's method is the search's when --method is not given
    config.write_text("method: lpft\n")
    with pytest.raises(KeyboardInterrupt):
        run_search(trials=1, storage=f"sqlite:///{tmp_path}/study.db", config_file=config, base_model=str(tiny_bert), data=str(few))
    assert commands[1][commands[1].index("--method") + 1] == "lpft"
    assert "study.db also holds a study of contrastive; this search is of lpft (--method contrastive continues that one)" in caplog.text


def test_ctrl_c_between_trials_is_said_so(tiny_bert, tiny_data, tmp_path, monkeypatch):
    import bankintent.search

    monkeypatch.setattr(bankintent.search, "run_trial", lambda trial, command, run_dir, bar: 0.5)

    def stop_after(bar):
        def ended(study, trial):
            raise KeyboardInterrupt
        return ended

    monkeypatch.setattr(bankintent.search, "_trial_ended", stop_after)
    with pytest.raises(KeyboardInterrupt, match=r"^interrupted between trials; run the same command again to continue the study$"):
        run_search("lpft", trials=2, storage=f"sqlite:///{tmp_path}/study.db", base_model=str(tiny_bert), data=str(tiny_data))


def test_a_study_named_by_a_relative_path_continues_from_another_folder(tiny_bert, tiny_data, tmp_path, monkeypatch):
    """The trials' folders are recorded absolute: continued from another folder, the summary read
    ``study/trial-0/metrics.json`` from there (a traceback), and an interrupted trial trained anew elsewhere."""
    import bankintent.search

    def trained(trial, command, run_dir, bar):
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"val_accuracy": 0.5, "test_accuracy": 0.25, "val_size": 4, "epochs_run": 3}))
        return 0.5

    monkeypatch.setattr(bankintent.search, "run_trial", trained)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    options = {"base_model": str(tiny_bert), "data": str(tiny_data)}
    run_search("lpft", trials=1, storage="sqlite:///study/study.db", **options)
    monkeypatch.chdir(tmp_path / "other")
    summary = run_search("lpft", trials=2, storage="sqlite:///../study/study.db", **options)
    folders = [t.user_attrs["run_dir"] for t in optuna.load_study(study_name="bankintent-lpft", storage="sqlite:///../study/study.db").trials]
    assert folders == [str(tmp_path / "study" / "trial-0"), str(tmp_path / "study" / "trial-1")] and summary["best_test_accuracy"] == 0.25
    assert [t["epochs_run"] for t in summary["trials"]] == [3, 3]  # the runs' epochs, where none was reported to the pruner
    assert "| Trial | State | Val Acc | Epochs run |" in (tmp_path / "study" / "search.md").read_text()


def test_a_trial_stopped_by_ctrl_c_runs_again_once_in_its_folder(tmp_path):
    """Ctrl-C fails the trial in optuna's books: its hyperparameters are queued again with its folder
    (whose checkpoint the trial run again continues), once; a trial failed otherwise is not retried."""
    from bankintent.search import _retry_interrupted

    study = optuna.create_study(study_name="bankintent-lpft", storage=f"sqlite:///{tmp_path}/study.db", direction="maximize")
    stopped, broken = study.ask(), study.ask()
    params = suggest(stopped, "lpft")
    suggest(broken, "lpft")
    stopped.set_user_attr("run_dir", str(tmp_path / "trial-0"))
    stopped.set_user_attr("interrupted", True)
    for trial in (stopped, broken):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    _retry_interrupted(study)
    _retry_interrupted(study)  # a second start of the search queues nothing more
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs == {"run_dir": str(tmp_path / "trial-0")}
    assert waiting[0].system_attrs["fixed_params"] == params


def test_the_stopped_trials_traceback_is_not_logged_and_search_takes_the_data_flags_of_train():
    import logging
    import sys

    from bankintent import cli
    from bankintent.search import _NoInterruptTraceback

    def record(message, exc_info=None):
        return logging.LogRecord("optuna", logging.WARNING, __file__, 1, message, None, exc_info)

    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        stopped = record("Trial 4 failed with parameters: {} because of the following error: KeyboardInterrupt().", sys.exc_info())
    quiet = _NoInterruptTraceback()
    assert not quiet.filter(stopped) and not quiet.filter(record("Trial 4 failed with value None."))
    assert quiet.filter(record("Trial 5 failed with value None.")) and quiet.filter(record("Trial 6 finished with value: 0.9"))
    args = cli.parse(cli.build_parser(), ["search", "--storage", "sqlite:///s.db", "--text-column", "utterance", "--label-column",
                                          "intent", "--oos-label", "none"])
    assert (args.text_column, args.label_column, args.oos_label) == ("utterance", "intent", "none")
