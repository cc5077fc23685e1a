"""Training survives interruption: SIGKILL mid-epoch then --resume, and Ctrl-C saving a checkpoint."""

import json
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bankintent import resolve_config, train
from bankintent.errors import ConfigError
from conftest import tiny_options, write_tiny_data
from bankintent.training import SaveOnInterrupt, TrainingClock, elapsed_before, last_checkpoint, restore_early_stopping

EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """4 intents, 150 queries each: 135 steps an epoch at batch 4, long enough to be stopped inside one."""
    return write_tiny_data(tmp_path_factory.mktemp("resume_data"), 150, seed=2)


def _options(tiny_bert, data, out: Path) -> dict:
    return tiny_options(tiny_bert, data, out, epochs=EPOCHS, batch_size=4, early_stopping_patience=5)


def _cli_args(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return args


def _start(options: dict, *extra: str, preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bankintent.cli", "train", "--method", "lora", *_cli_args(options), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


def _wait_for_checkpoint(out: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any((out / "checkpoints").glob("checkpoint-*")):
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.05)
    time.sleep(0.2)  # into the next epoch


@pytest.fixture(scope="module")
def reference(tiny_bert, data, tmp_path_factory) -> dict:
    return train(resolve_config(None, method="lora", **_options(tiny_bert, data, tmp_path_factory.mktemp("ref"))))


def test_sigkill_then_resume_matches_uninterrupted_run(reference, tiny_bert, data, tmp_path):
    options = _options(tiny_bert, data, tmp_path)
    process = _start(options)
    _wait_for_checkpoint(tmp_path, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (tmp_path / "metrics.json").exists()
    resumed = _start(options, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_epoch"] == reference["best_epoch"]
    assert abs(metrics["val_accuracy"] - reference["val_accuracy"]) <= 0.002
    assert metrics["epochs_run"] == EPOCHS
    assert not (tmp_path / "checkpoints").exists()  # finished: nothing left to resume


def test_ctrl_c_inside_an_epoch_then_resume_trains_what_the_run_would_have(tiny_bert, tiny_data, tmp_path, monkeypatch):
    """The second epoch stopped midway and resumed: its order is drawn as it was, and the weights are the
    uninterrupted run's. The resumed epoch was shuffled anew: some queries trained twice, others never."""
    from safetensors.torch import load_file

    from bankintent.errors import TrainingInterrupted

    options = tiny_options(tiny_bert, tiny_data, tmp_path, epochs=2, batch_size=4, average_weights=True)  # both epochs count
    whole = train(resolve_config(None, method="lora", **{**options, "output": str(tmp_path / "whole")}))
    stop_at = whole["optimizer_steps"] * 3 // 4  # inside the second epoch
    stop = SaveOnInterrupt.on_step_end

    def stopped(self, args, state, control, **kwargs):
        self.interrupted = self.interrupted or state.global_step == stop_at  # as Ctrl-C sets it
        return stop(self, args, state, control, **kwargs)

    monkeypatch.setattr(SaveOnInterrupt, "on_step_end", stopped)
    with pytest.raises(TrainingInterrupted, match=f"interrupted at step {stop_at}"):
        train(resolve_config(None, method="lora", **{**options, "output": str(tmp_path / "cut")}))
    monkeypatch.setattr(SaveOnInterrupt, "on_step_end", stop)
    train(resolve_config(None, method="lora", resume=True, **{**options, "output": str(tmp_path / "cut")}))
    weights = [load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("whole", "cut")]
    assert weights[0].keys() == weights[1].keys() and all(weights[0][k].equal(weights[1][k]) for k in weights[0])


def test_a_stop_at_an_epochs_last_step_still_evaluates_that_epoch():
    """Ctrl-C during an epoch's last step: that epoch is whole, so it is evaluated (and the checkpoint
    saved with its evaluation); --resume then goes on as the uninterrupted run does. Mid-epoch, not."""
    from transformers import TrainerControl, TrainerState

    callback = SaveOnInterrupt()
    callback.interrupted = True
    for epoch, evaluated in ((3.0, True), (2.0 + 1 / 3, False)):
        control = TrainerControl(should_evaluate=True)
        callback.on_epoch_end(None, TrainerState(epoch=epoch), control)
        assert control.should_evaluate is evaluated


def test_training_that_fails_gives_ctrl_c_back(tiny_bert, tiny_data, tmp_path, monkeypatch):
    """An error inside training (out of memory, a full disk) ends it without the Trainer's on_train_end:
    the Ctrl-C handler training installed was left in place, and a notebook's next Ctrl-C did nothing."""
    from transformers import Trainer

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory (planted)")

    monkeypatch.setattr(Trainer, "training_step", fail)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="planted"):
        train(resolve_config(None, method="lora", **tiny_options(tiny_bert, tiny_data, tmp_path / "run")))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_resume_keeps_the_early_stopping_count(tmp_path):
    """An epoch without improvement before the stop still counts after --resume (the uninterrupted run
    stops where the resumed one does); the checkpoint's other saved flags ("stop training") are not taken."""
    from transformers import EarlyStoppingCallback, TrainerState

    saved = EarlyStoppingCallback(early_stopping_patience=2)
    saved.early_stopping_patience_counter = 1
    state = TrainerState(stateful_callbacks=[saved])
    state.save_to_json(str(tmp_path / "trainer_state.json"))
    fresh = EarlyStoppingCallback(early_stopping_patience=2)
    restore_early_stopping(fresh, tmp_path)
    assert fresh.early_stopping_patience_counter == 1 and fresh.early_stopping_patience == 2


def test_a_resumed_run_counts_the_training_time_before_the_stop(tmp_path):
    import time as clock

    from transformers import TrainerControl, TrainerState

    (tmp_path / "checkpoint-7").mkdir()
    args = type("Args", (), {"output_dir": str(tmp_path)})()
    TrainingClock(clock.perf_counter() - 30.0, before=12.0).on_save(args, TrainerState(global_step=7), TrainerControl())
    assert 42.0 <= elapsed_before(tmp_path / "checkpoint-7") < 45.0  # 12 s of an earlier session and 30 s of this one
    assert elapsed_before(None) == 0.0 and elapsed_before(tmp_path / "missing") == 0.0


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])  # 128 + the signal, as a shell says it
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tiny_bert, data, tmp_path, signum, code):
    options = _options(tiny_bert, data, tmp_path)
    process = _start(options)
    _wait_for_checkpoint(tmp_path, process)
    before = {p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")}
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code
    assert "checkpoint saved" in err and f"--config {tmp_path}/config.yaml --resume" in err
    assert "Traceback" not in err
    after = {p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")}
    assert after - before, "Ctrl-C should add a checkpoint at the step where it stopped"
    if signum == signal.SIGTERM:
        return
    resumed = subprocess.run([sys.executable, "-m", "bankintent.cli", "train", "--config", str(tmp_path / "config.yaml"), "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == EPOCHS


def test_sigterm_before_the_first_checkpoint_says_so_like_ctrl_c(tiny_bert, data, tmp_path):
    """SIGTERM (kill, docker stop) in the contrastive pair training, which keeps no checkpoint: the run
    says it stopped and that --resume starts it again, as Ctrl-C does, rather than ending without a word."""
    options = {**_options(tiny_bert, data, tmp_path), "pairs_per_example": 400}  # minutes of pair training: stopped well inside it
    process = subprocess.Popen([sys.executable, "-m", "bankintent.cli", "train", "--method", "contrastive", *_cli_args(options)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "config.yaml").is_file():  # the run folder started: the pair training is next
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.05)
    time.sleep(1.0)
    assert process.poll() is None, "the pair training ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]  # 128 + SIGTERM, as a shell reports it; Ctrl-C gives 130
    assert "Stopped before the run's first checkpoint: nothing to continue from" in err and "Traceback" not in err
    assert not (tmp_path / "metrics.json").exists()


def _file_size_limit(limit: int):
    """In the child: files can not grow past ``limit`` bytes, as on a disk that fills up (writes fail
    with EFBIG instead of the process being killed by SIGXFSZ)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_while_checkpointing_gives_one_line_error_and_resume_finishes(tiny_bert, tiny_data, tmp_path):
    # the tiny model's checkpoint holds files of 37 kB (adapter) and 700 kB (tokenizer.json): the first
    # checkpoint is cut short while being written
    options = tiny_options(tiny_bert, tiny_data, tmp_path, epochs=2)
    process = _start(options, preexec_fn=_file_size_limit(60_000))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2
    assert "Traceback" not in err
    [message] = re.findall(r"error: .*", err)  # one line (after the progress bar's control characters)
    assert message.startswith(f"error: {tmp_path}: writing failed (File too large)")
    assert message.endswith(f"bankintent train --config {tmp_path}/config.yaml --resume")
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "adapter").exists()
    cut_short = list((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert cut_short and last_checkpoint(tmp_path / "checkpoints", remove_incomplete=False) is None

    resumed = _start(options, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "is incomplete" in err
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == 2


def _stopped_after_training(monkeypatch, options: dict) -> None:
    """Train with Ctrl-C arriving once the training steps are done (while calibrating): the checkpoints stay."""
    import bankintent.training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(bankintent.training, "calibrate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(resolve_config(None, **options))


def test_a_run_early_stopping_had_ended_resumes_without_another_epoch(tiny_bert, tmp_path, monkeypatch):
    """Ctrl-C after early stopping ended the training (while the detector is fitted): --resume finishes
    the run as the uninterrupted one, with no epoch it never trained."""
    (tmp_path / "data").mkdir()
    data = write_tiny_data(tmp_path / "data", 40, seed=3)
    options = {**tiny_options(tiny_bert, data, tmp_path / "whole"), "method": "lpft", "epochs": 8, "lr": 5e-2,
               "early_stopping_patience": 1, "average_weights": False}
    whole = train(resolve_config(None, **options))
    assert whole["epochs_run"] < 8  # early stopping ended it: the case to resume
    cut = {**options, "output": str(tmp_path / "cut")}
    _stopped_after_training(monkeypatch, cut)
    assert (tmp_path / "cut" / "checkpoints" / "data.json").is_file()
    resumed = train(resolve_config(None, output=str(tmp_path / "cut"), resume=True))  # the run's config.yaml gives the rest
    assert (resumed["epochs_run"], resumed["best_epoch"]) == (whole["epochs_run"], whole["best_epoch"])
    assert resumed["val_accuracy"] == whole["val_accuracy"]


def test_data_changed_in_place_is_refused_on_resume(tiny_bert, tmp_path, monkeypatch):
    """Rows added to the training file after an interruption: the resumed run would train the rest on
    other data than its checkpoint's (or crash on a new intent's head size); refused, until restored."""
    (tmp_path / "data").mkdir()
    data = write_tiny_data(tmp_path / "data", 30, seed=4)
    options = {**tiny_options(tiny_bert, data, tmp_path / "run"), "method": "lpft", "epochs": 2}
    _stopped_after_training(monkeypatch, options)
    original = (data / "train.csv").read_text()
    for added in ("a new query about my card,card_arrival\n", "crypto please,buy_crypto\ncrypto now,buy_crypto\n"):
        (data / "train.csv").write_text(original + added)
        with pytest.raises(ConfigError, match=r"the data changed since this run started \(then \d+ training and \d+ validation "
                                              r"queries of 4 intents, now .*an interrupted run continues on the data it started with"):
            train(resolve_config(None, output=str(tmp_path / "run"), resume=True))
    (data / "train.csv").write_text(original)
    assert train(resolve_config(None, output=str(tmp_path / "run"), resume=True))["epochs_run"] == 2


def test_resume_of_a_folder_holding_no_run_is_refused_before_anything_starts(tiny_bert, tiny_data, tmp_path):
    """A mistyped run folder with --resume started a whole training on the default data."""
    missing = tmp_path / "runs" / "nosuch"
    with pytest.raises(ConfigError, match=r"nosuch: no run to resume \(no config.yaml there\)"):
        train(resolve_config(None, **tiny_options(tiny_bert, tiny_data, missing), resume=True))
    assert not (tmp_path / "runs").exists()
