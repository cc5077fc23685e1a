"""Bayesian hyperparameter search with Optuna: ``bankintent search --method lpft --trials N --storage
sqlite:///DIR/study.db``.

Each trial is the command ``bankintent train ... --output DIR/trial-N`` (a child process, as in a
sweep) with hyperparameters drawn by the TPE sampler: learning rate, LoRA r, alpha and dropout,
epochs and target modules (attention only, or attention and feed-forward). The objective is
validation accuracy. After every epoch the child's checkpoint reports the epoch's validation
accuracy to the study; a trial the median pruner judges poor is stopped there (SIGTERM: the child
saves a checkpoint and exits) and marked pruned.

The study lives in its SQLite file: running the command again continues it up to ``--trials``
finished trials in all, drawing new points (the sampler is seeded by the trials already run), and
only with the options it started with (another data set would make its trials incomparable); a trial
left running by an interrupted search is marked failed and retried with the same hyperparameters.
At the end ``search.md`` and ``search.json`` give the best trial, the importance of each
hyperparameter (Optuna's default evaluator) and every trial; the best trial's test accuracy is read
once, there, and never used by the search.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState
from tqdm import tqdm
from transformers import AutoConfig

from bankintent.config import (AUTO, LORA_METHODS, METHODS, check_output_folder, differences, for_data, read_yaml, recorded_path,
                               resolve_config)
from bankintent.data import Splits, data_changes, data_record, run_splits
from bankintent.errors import ConfigError
from bankintent.launch import stop_children
from bankintent.modeling import resolve_base_model, target_modules_for
from bankintent.results import markdown_table, write_json
from bankintent.sweep import PATH_FLAGS, start_run, train_command

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
PATH_OPTIONS = tuple(PATH_FLAGS.values())  # compared, and passed to the trials, absolute (recorded_path)
TARGETS = ("attention", "attention+ffn")
UNTUNED = {  # methods with nothing for the search to draw
    "linear-probe": "the linear probe has no learning rate or epochs to search (training chooses its C on validation itself)",
}


def study_folder(storage: str) -> Path:
    if not storage.startswith("sqlite:///"):
        raise ConfigError(f"--storage {storage!r}: expected sqlite:///PATH/study.db")
    return Path(storage.removeprefix("sqlite:///")).parent


# Learning-rate ranges, a decade or more either side of the recipes' rates: LoRA's low-rank updates
# take rates that would wreck a model whose every weight moves (the study's grids chose 5e-4 to 1e-3 for
# LoRA, 1e-4 for full fine-tuning), so the full-weight methods search a range of their own.
LR_RANGE = (1e-5, 2e-3)
MIN_IMPORTANCE_TRIALS = 5  # finished trials before optuna.importance is reported
FULL_WEIGHT_LR_RANGE = (5e-6, 3e-4)


def suggest(trial: optuna.Trial, method: str) -> dict:
    """The search space: learning rate and epochs, and the LoRA options for the LoRA methods."""
    low, high = LR_RANGE if method in LORA_METHODS else FULL_WEIGHT_LR_RANGE
    options = {"lr": trial.suggest_float("lr", low, high, log=True), "epochs": trial.suggest_int("epochs", 1, 3)}
    if method in LORA_METHODS:
        options["lora_r"] = trial.suggest_categorical("lora_r", [4, 8, 16, 32])
        options["lora_alpha"] = trial.suggest_categorical("lora_alpha", [8, 16, 32, 64])
        options["lora_dropout"] = trial.suggest_float("lora_dropout", 0.0, 0.2)
        options["target_modules"] = trial.suggest_categorical("target_modules", list(TARGETS))
    return options


def target_modules(choice: str, base_model: str) -> list[str]:
    """``attention``: the four attention projections; ``attention+ffn``: those and the feed-forward pair."""
    names = target_modules_for(AutoConfig.from_pretrained(resolve_base_model(base_model)).model_type)
    return names[:4] if choice == "attention" else names


def _epoch_accuracies(checkpoints: Path) -> dict[int, float]:
    """Validation accuracy per finished epoch, from the newest checkpoint's trainer_state.json."""
    states = sorted(checkpoints.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return {}
    try:
        history = json.loads(states[-1].read_text())["log_history"]
    except (OSError, ValueError, KeyError):  # being written right now: read it at the next poll
        return {}
    return {int(round(e["epoch"])): e["eval_accuracy"] for e in history if "eval_accuracy" in e}


def run_trial(trial: optuna.Trial, command: list[str], run_dir: Path, bar: tqdm | None = None) -> float:
    """Run one trial's training (from its checkpoint, where an interrupted trial of the same
    hyperparameters left one in ``run_dir``); report each epoch's validation accuracy (and show it on
    the search's ``bar``: the trial's own output goes to its train.log); stop it if pruned."""
    reported: set[int] = set()
    child = start_run(command, run_dir, resume=(run_dir / "checkpoints").is_dir())
    if bar is not None:
        bar.set_postfix_str(f"trial {trial.number} training ({run_dir}/train.log)")
    try:  # Ctrl-C or SIGTERM: the trial's training stops at a checkpoint, which the trial run again continues
        while child.poll() is None:
            time.sleep(POLL_SECONDS)
            for epoch, accuracy in sorted(_epoch_accuracies(run_dir / "checkpoints").items()):
                if epoch in reported:
                    continue
                reported.add(epoch)
                trial.report(accuracy, epoch)
                if bar is not None:
                    bar.set_postfix_str(f"trial {trial.number}: epoch {epoch} validation accuracy {accuracy:.4f}")
                if trial.should_prune():
                    stop_children([child])  # the child saves a checkpoint and stops
                    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                    raise optuna.TrialPruned(f"validation accuracy {accuracy:.4f} after epoch {epoch}")
    except KeyboardInterrupt:
        stop_children([child])
        trial.set_user_attr("interrupted", True)
        raise
    if child.returncode != 0 or not (run_dir / "metrics.json").is_file():
        raise ConfigError(f"trial {trial.number} failed (exit status {child.returncode}); see {run_dir}/train.log")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the model folder is kept, the optimizer states not
    return json.loads((run_dir / "metrics.json").read_text())["val_accuracy"]


def _retry_interrupted(study: optuna.Study) -> None:
    """Queue again the hyperparameters of the trials an interrupted search left: stopped by Ctrl-C or
    SIGTERM (failed, marked ``interrupted``), or still RUNNING where the search was killed outright (one
    search runs a study at a time); the trial run again continues in the same folder, from its
    checkpoint where it has one. The study records which trials it retried, so each is retried once."""
    retried = set(study.user_attrs.get("retried", []))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if trial.number in retried or trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted"):
            continue
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
        folder = trial.user_attrs.get("run_dir")
        study.enqueue_trial(trial.params, user_attrs={"run_dir": folder} if folder else None)
        retried.add(trial.number)
        log.warning("trial %d was interrupted; it runs again with the same hyperparameters%s", trial.number,
                    f", from its checkpoint in {folder}" if folder and (Path(folder) / "checkpoints").is_dir() else "")
    study.set_user_attr("retried", sorted(retried))


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C as failed, with the traceback of where the stop fell, and
    then its value (None); the command says the stop and how to go on in one line instead."""

    def __init__(self):
        super().__init__()
        self.stopped = None  # the message that follows the stopped trial's

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None and issubclass(record.exc_info[0], KeyboardInterrupt):
            self.stopped = str(record.getMessage()).split(" failed with parameters")[0] + " failed with value None."
            return False
        return record.getMessage() != self.stopped


def _study_names(storage: str) -> list[str]:
    """The studies ``storage`` holds; none where its file is not there yet."""
    if not Path(storage.removeprefix("sqlite:///")).is_file():
        return []
    return optuna.get_all_study_names(storage)


def _check_same_options(study: optuna.Study, fixed: dict, splits: Splits, storage: str) -> None:
    """Record the options every trial shares and what the data holds in a new study; refuse to resume
    one with other options (another data set, method or config) or on data changed in place since: its
    trials would be compared as if alike. Paths are compared absolute: the same data named from
    another folder is the same option."""
    recorded = study.user_attrs.get("options")
    wanted = json.loads(json.dumps(fixed, default=str))
    if recorded is None:
        study.set_user_attr("options", wanted)
    else:  # a study recorded before paths were made absolute: its relative paths read from here
        recorded = {key: recorded_path(key, value) if key in PATH_OPTIONS else value for key, value in recorded.items()}
        if recorded != wanted:
            raise ConfigError(f"{storage}: the study's trials ran with other options ({differences(recorded, wanted)}); give a new "
                              f"--storage for these")
    was, now = study.user_attrs.get("data"), data_record(splits)
    changed = was and data_changes(was, now)
    if was is None:
        study.set_user_attr("data", now)
    elif changed:
        raise ConfigError(f"{splits.source}: the data changed since the study started ({changed}); its trials would be compared "
                          f"with trials on other data: restore it, or give a new --storage")


def run_search(method: str | None = None, trials: int = 20, storage: str = "", output: str | Path | None = None,
               config_file: str | Path | None = None, **overrides) -> dict:
    """Run the study up to ``trials`` finished (complete or pruned) trials; write and return the summary.
    ``method``: the config file's, else ``auto``, the method ``train`` would choose for the data (``for_data``)."""
    method = method or (read_yaml(config_file).get("method") if config_file else None) or AUTO
    out = (Path(output) if output else study_folder(storage)).resolve()  # the trials' folders are recorded absolute: the
    check_output_folder(out)  # study continued from another folder finds them (a relative one trained an interrupted trial anew)
    if method in UNTUNED:
        raise ConfigError(f"--method {method}: {UNTUNED[method]}; search one of {', '.join(m for m in METHODS if m not in UNTUNED)}")
    base = resolve_config(config_file, method=method, **overrides)  # validates the options before any trial
    splits = run_splits(base)  # and the data, before any trial trains
    if not len(splits.validation):
        suffix = Path(splits.notes["train_file"]).suffix
        raise ConfigError(f"{splits.source}: no validation split (small data trains on every row), and the search chooses on "
                          f"validation accuracy; give --data a folder holding train{suffix} and a validation file (valid{suffix})")
    if method == AUTO:
        base = for_data(base, splits.few_examples)
        method = base.method
        log.info("method: %s (the one train chooses for this data)", method)
    others = [name.removeprefix("bankintent-") for name in _study_names(storage) if name != f"bankintent-{method}"]
    if others:
        log.warning("%s also holds a study of %s; this search is of %s (--method %s continues that one)", storage,
                    " and ".join(others), method, others[0])
    fixed = {**(read_yaml(config_file) if config_file else {}), "method": method, **overrides}
    fixed = {k: recorded_path(k, v) if k in PATH_OPTIONS else v for k, v in fixed.items() if v is not None and k not in ("output", "seed")}
    study_folder(storage).mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(
            study_name=f"bankintent-{method}", storage=storage, load_if_exists=True, direction="maximize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        )
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise ConfigError(f"--storage {storage}: cannot open the study's database ({str(exc.orig or exc).splitlines()[0]}); "
                          f"expected sqlite:///PATH/study.db") from None
    _check_same_options(study, fixed, splits, storage)
    _retry_interrupted(study)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    # seeded by the trials already started, so that a resumed study draws new points rather than the first ones again
    # (an interrupted trial's are queued again, not drawn again)
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials))

    training: list[Path] = []  # the folder of the trial in training, which a Ctrl-C stops

    def objective(trial: optuna.Trial) -> float:
        options = {**fixed, **suggest(trial, method)}
        if "target_modules" in options and isinstance(options["target_modules"], str):
            options["target_modules"] = target_modules(options["target_modules"], base.base_model)
        run_dir = Path(trial.user_attrs.get("run_dir") or out / f"trial-{trial.number}")  # an interrupted trial's, run again
        training[:] = [run_dir]
        command = train_command(options, base.seed, run_dir)
        trial.set_user_attr("command", shlex.join(command))
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            value = run_trial(trial, command, run_dir, bar)
        except optuna.TrialPruned:
            training.clear()  # ended: a Ctrl-C from here on falls between trials
            raise
        training.clear()
        return value

    if trials > done:
        quiet = _NoInterruptTraceback()
        logging.getLogger("optuna.study._optimize").addFilter(quiet)
        bar = tqdm(total=trials, initial=done, desc="search", unit="trial")  # a trial's epochs shown as they finish
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its line per trial would break the bar; search.md lists them
        try:
            study.optimize(objective, n_trials=trials - done, callbacks=[_trial_ended(bar)])
        except KeyboardInterrupt:
            if not training:
                raise KeyboardInterrupt("interrupted between trials; run the same command again to continue the study") from None
            kept = (training[0] / "checkpoints").is_dir()
            raise KeyboardInterrupt(f"interrupted: the trial in training stopped {'at a checkpoint' if kept else 'before its first checkpoint'}; "
                                    f"run the same command again to continue the study (that trial first, "
                                    f"{'from its checkpoint' if kept else 'from its start'})") from None
        finally:
            bar.close()
            optuna.logging.set_verbosity(verbosity)
            logging.getLogger("optuna.study._optimize").removeFilter(quiet)
    return write_summary(study, out, storage)


def _trial_ended(bar: tqdm):
    """An optuna callback: the search's bar advanced, with how the trial ended and the best so far."""
    def ended(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        result = f"{trial.value:.4f}" if trial.state == TrialState.COMPLETE else trial.state.name.lower()
        try:
            best = f"; best: trial {study.best_trial.number}, {study.best_value:.4f}"
        except ValueError:  # no trial complete yet
            best = ""
        bar.set_postfix_str(f"trial {trial.number}: {result}{best}", refresh=False)
        bar.update()

    return ended


def write_summary(study: optuna.Study, out: Path, storage: str) -> dict:
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not finished:
        raise ConfigError(f"{storage}: no trial finished yet")
    best = study.best_trial
    importance = {}
    if len(finished) >= MIN_IMPORTANCE_TRIALS:  # fewer: every parameter comes out alike, which says nothing
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # optuna's own note that its quantiles select the same trials
                importance = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:
            log.warning("hyperparameter importance not available: %s", exc)
    best_metrics = json.loads((Path(best.user_attrs["run_dir"]) / "metrics.json").read_text())
    summary = {
        "study": study.study_name, "storage": storage,
        "best_trial": best.number, "best_params": best.params, "best_val_accuracy": best.value,
        "best_test_accuracy": best_metrics.get("test_accuracy"), "best_command": best.user_attrs["command"],
        "val_size": best_metrics.get("val_size"), "tied_with_best": sum(t.value == best.value for t in finished),
        "importance": importance,
        "trials": [{"number": t.number, "state": "INTERRUPTED" if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
                    else t.state.name, "value": t.value, "params": t.params,
                    "epochs_run": _epochs(t)} for t in study.get_trials(deepcopy=False)],
        "hardware": best_metrics.get("hardware"),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "search.json", summary)
    (out / "search.md").write_text(summary_markdown(summary), encoding="utf-8")
    print(summary_markdown(summary))
    return summary


def _epochs(trial: optuna.trial.FrozenTrial) -> int:
    """The epochs a trial trained: its run's ``epochs_run`` where it finished (``contrastive``'s epochs on
    pairs report no validation accuracy to the pruner: it said 0), else the epochs it reported before it
    was pruned or stopped."""
    metrics = Path(trial.user_attrs.get("run_dir") or "-") / "metrics.json"
    if metrics.is_file():
        return int(json.loads(metrics.read_text()).get("epochs_run", len(trial.intermediate_values)))
    return len(trial.intermediate_values)


def summary_markdown(summary: dict) -> str:
    params = sorted({p for t in summary["trials"] for p in t["params"]})
    rows = [{"Trial": t["number"], "State": t["state"].lower(), "Val Acc": "-" if t["value"] is None else f"{100 * t['value']:.2f}%",
             "Epochs run": t["epochs_run"], **{p: _fmt(t["params"].get(p)) for p in params}} for t in summary["trials"]]
    importance = [{"Hyperparameter": k, "Importance": f"{v:.3f}"} for k, v in summary["importance"].items()]
    test = summary["best_test_accuracy"]
    return "\n\n".join(filter(None, [
        f"# Hyperparameter search `{summary['study']}`",
        f"Storage `{summary['storage']}`; objective: validation accuracy; hardware: {summary['hardware']}.",
        f"Best trial {summary['best_trial']}: validation accuracy {100 * summary['best_val_accuracy']:.2f}%, "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in summary["best_params"].items()) + ".",
        _resolution(summary),
        f"Test accuracy of the best trial (read once, here): {'-' if test is None else f'{100 * test:.2f}%'}.",
        f"Command the best trial was trained with (into its own folder: give another `--output` to train it again): "
        f"`{summary['best_command']}`",
        "## Importance of each hyperparameter (optuna.importance)",
        markdown_table(importance, ["Hyperparameter", "Importance"]) if importance else
        f"Not given: fewer than {MIN_IMPORTANCE_TRIALS} finished trials, too few to tell the hyperparameters' effects apart.",
        "## Trials",
        markdown_table(rows, list(rows[0])),
    ])) + "\n"


def _resolution(summary: dict) -> str | None:
    """What a difference between trials can mean on this validation split: one query's worth, and how
    many finished trials tie with the best (the first of them is reported)."""
    size, tied = summary.get("val_size"), summary.get("tied_with_best") or 1
    if not size:
        return None
    return (f"One validation query is {100 / size:.2f} points ({size} queries)"
            + (f"; {tied} finished trials tie with the best, which is the first of them: the search could not tell them apart."
               if tied > 1 else "."))


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
