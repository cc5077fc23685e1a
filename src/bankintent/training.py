"""Training: one function, ``train(cfg)``, for every method.

    data -> base model (+ linear probe for lpft / lpft-full / linear-probe) -> LoRA or full fine-tuning with the
    Hugging Face Trainer (dynamic padding, length-grouped batches, early stopping on validation
    accuracy, per-epoch checkpoints) -> the best epoch (or, with ``average_weights``, the mean of the
    epochs' weights) is saved -> validation and test are evaluated from the saved folder, exactly as
    ``bankintent predict`` will see it.

The Trainer also brings mixed precision on a GPU and data-parallel training under torchrun or
``accelerate launch`` with no code of ours.

``rdrop`` (R-Drop) replaces the cross-entropy by ``rdrop_loss`` (``RDropTrainer``).

``contrastive`` (few-shot) fine-tunes the encoder on pairs of same-intent queries first
(``bankintent.contrastive``), then fits the linear probe on its embeddings.

Small data (``Splits.small_data``: no validation file and too few examples per intent to carve a
validation split from, see ``bankintent.data``): every row trains and no choice rests on a
validation split. The probe's C is cross-validated on the training split; the fine-tuning methods
run their recipe's epochs with no early stopping (the last epoch, or the epochs' mean, is kept); the
calibration is cross-fitted: the training rows the data gave (not the intents' names or copies training
adds) are cut in two stratified halves (``split_seed``),
the out-of-scope statistics (kNN bank, centroids) are fitted on one and the temperature and the
thresholds on the other's queries, which are not in the bank but were trained on, so the threshold
errs towards sending in-scope queries out of scope. Where the probe is the final head
(``contrastive``, ``linear-probe``), its out-of-fold logits of the training queries
(``probe.out_of_fold_logits``: each from a probe fitted without it) stand in for the model's: the
temperature is fitted on them, and the held half's give the probabilities its thresholds are set
on. For the fine-tuning methods the temperature is usually left unfitted. metrics.json says so
(``calibration``, ``temperature_fitted_on``) and has no validation accuracy.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from sklearn.model_selection import train_test_split
from transformers.utils import logging as hf_logging

from bankintent import contrastive, probe
from bankintent.calibration import OutOfFold, calibrate
from bankintent.config import (AUTO, MODEL_DIR, TrainConfig, check_output_folder, check_writable, differences, first_few, for_data,
                               read_yaml, recorded_path, unused_options)
from bankintent.data import (Examples, Splits, data_changes, data_record, distinct_queries, is_small, query_key, run_splits, test_digest,
                             thin_intents, thin_intents_warning, thin_validation, training_counts)
from bankintent.errors import TERMINATED, ConfigError, TrainingInterrupted
from bankintent.evaluation import evaluate_split, evaluation_files
from bankintent.model_card import write_model_card
from bankintent.modeling import (
    COLD_HEAD_SCALE,
    OOD_FILE,
    ModelSpec,
    add_lora,
    base_pooling,
    build_model,
    check_target_modules,
    check_tokenizer_fits,
    count_parameters,
    layer_index,
    load_tokenizer,
    long_queries_note,
    match_permissions,
    save_model,
    sentence_pooling,
    target_modules_for,
)
from bankintent.predict import Predictor
from bankintent.results import write_history, write_json
from bankintent.text import augment, intent_name_examples, preprocess

log = logging.getLogger(__name__)


class _AveragedNotBest(logging.Filter):
    """Early stopping without ``load_best_model_at_end`` is what ``average_weights`` asks for (the mean
    of the epochs' weights is kept, not the best epoch's): transformers' warning that "the best model
    will not be loaded" would read as a fault in every default run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "EarlyStoppingCallback without load_best_model_at_end" not in record.getMessage()


logging.getLogger("transformers.trainer_callback").addFilter(_AveragedNotBest())

# methods whose head starts from scratch, and those whose head starts as the linear probe
COLD_HEAD_METHODS = ("lora", "full", "lora-unfreeze")
PROBE_HEAD_METHODS = ("lpft", "lpft-full", "linear-probe", "contrastive")
PROBE_FINAL_METHODS = ("linear-probe", "contrastive")  # the probe is the final head: no fine-tuning after it
# how a write that found the disk full (or a file-size limit) reads: Python's OSError, and the plain
# exceptions that tokenizers, safetensors ("... (os error 28)") and torch.save ("file write failed") raise
_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_DISK_MESSAGES = tuple(os.strerror(e) for e in _FULL_DISK_ERRNOS) + ("file write failed",)


class GradualUnfreezing(TrainerCallback):
    """LoRA with gradual unfreezing (``lora-unfreeze``).

    Schedule: in epoch 1 the LoRA weights of the top ``per_epoch`` encoder layers train (with the
    head); each later epoch the next ``per_epoch`` layers below join, until all train. With the
    6-layer default and ``per_epoch=2`` over 4 epochs: layers 4-5, then 2-5, then 0-5, then 0-5.
    Frozen layers keep ``requires_grad`` (so the optimizer knows them and DDP all-reduces the same
    parameters each step): a hook zeroes their gradients as backward computes them, so that gradient
    clipping, which the Trainer does before any callback sees the step, measures the training layers'
    alone, and they are dropped before each optimizer step, which AdamW then skips.
    """

    def __init__(self, num_layers: int, per_epoch: int):
        self.num_layers, self.per_epoch = num_layers, per_epoch
        self.lowest, self._hooks = 0, []

    def lowest_trainable_layer(self, epoch: int) -> int:
        return max(0, self.num_layers - (epoch + 1) * self.per_epoch)

    def _layered(self, model) -> Iterator[tuple[int, nn.Parameter]]:
        for name, parameter in model.named_parameters():
            layer = layer_index(name)
            if layer is not None and parameter.requires_grad:
                yield layer, parameter

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._hooks = [parameter.register_hook(lambda grad, layer=layer: grad if layer >= self.lowest else torch.zeros_like(grad))
                       for layer, parameter in self._layered(model)]

    def on_step_begin(self, args, state, control, **kwargs):
        steps_per_epoch = max(1, math.ceil(state.max_steps / max(1, state.num_train_epochs)))
        self.lowest = self.lowest_trainable_layer(state.global_step // steps_per_epoch)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for layer, parameter in self._layered(model):
            if layer < self.lowest:
                parameter.grad = None

    def on_train_end(self, args, state, control, **kwargs):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def rdrop_loss(first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor, alpha: float,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """R-Drop's loss (Liang et al., 2021) for two dropout passes' logits of one batch: the mean of their
    cross-entropies plus ``alpha`` times the mean of KL(p1 || p2) and KL(p2 || p1), each summed over
    the intents and averaged over the batch."""
    ce = (nn.functional.cross_entropy(first, labels, label_smoothing=label_smoothing)
          + nn.functional.cross_entropy(second, labels, label_smoothing=label_smoothing)) / 2
    log_p, log_q = nn.functional.log_softmax(first, -1), nn.functional.log_softmax(second, -1)
    kl = (nn.functional.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
          + nn.functional.kl_div(log_p, log_q, log_target=True, reduction="batchmean")) / 2
    return ce + alpha * kl


class RDropTrainer(Trainer):
    """The Trainer with R-Drop (``rdrop`` > 0): each training batch goes through the model twice in one
    forward pass (the batch stacked on itself), so dropout drops different units in each copy, and the
    loss (``rdrop_loss``) also asks the two predictions to agree. Why: a model whose answer depends less
    on which units dropout removes is one whose train-time and test-time (no dropout) predictions agree.
    Evaluation is the plain Trainer's; label smoothing is the arguments' ``label_smoothing_factor``."""

    def __init__(self, *args, rdrop: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.rdrop = rdrop

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        logits = model(**{k: torch.cat([v, v]) for k, v in inputs.items() if k != "labels"}).logits
        first, second = logits.chunk(2)
        loss = rdrop_loss(first, second, labels, self.rdrop, self.args.label_smoothing_factor)
        return (loss, SequenceClassifierOutput(loss=loss, logits=first)) if return_outputs else loss


class WeightAveraging(TrainerCallback):
    """The mean of the trainable weights at the end of each epoch (``average_weights``; stochastic weight
    averaging, Izmailov et al., 2018, over the epochs of one linearly decaying run), which then replaces
    the best epoch's weights. Only the trainable weights are averaged (LoRA and the head for lpft: a
    small copy), where ``torch.optim.swa_utils.AveragedModel`` would copy the whole model. The mean travels
    with each checkpoint (``weight_average.safetensors``), so ``--resume`` continues it.

    Why lpft uses it: choosing the weights on one half of the validation split and scoring them on
    the other, the mean did better than the best epoch (``experiments/weight_averaging.py``; the
    figures are in docs/results/README.md)."""

    FILE = "weight_average.safetensors"

    def __init__(self):
        self.mean: dict[str, torch.Tensor] = {}
        self.count = 0

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if abs(state.epoch - round(state.epoch)) > 1e-6:  # an interrupted, partial epoch
            return
        self.count += 1
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.requires_grad:
                    weight = parameter.detach().float()
                    mean = self.mean.setdefault(name, torch.zeros_like(weight))
                    mean += (weight - mean) / self.count

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.count:
            folder = saved_checkpoint(args, state)
            save_file({n: t.contiguous().cpu() for n, t in self.mean.items()}, folder / self.FILE, metadata={"count": str(self.count)})
            match_permissions(folder)

    def restore(self, checkpoint: str) -> None:
        """Continue the mean saved with ``checkpoint`` (``--resume``)."""
        path = Path(checkpoint) / self.FILE
        if not path.is_file():
            log.warning("--resume: %s has no weight average; averaging the remaining epochs only", checkpoint)
            return
        with safe_open(path, "pt") as saved:
            self.count = int(saved.metadata()["count"])
            self.mean = {name: saved.get_tensor(name) for name in saved.keys()}

    def apply(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self.mean:
                    parameter.copy_(self.mean[name].to(parameter.device, parameter.dtype))


def saved_checkpoint(args, state) -> Path:
    """The folder of the checkpoint the Trainer has just saved (what ``on_save`` callbacks add to)."""
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def restore_early_stopping(callback: EarlyStoppingCallback, checkpoint: str | Path) -> int | None:
    """Give ``callback`` the count of epochs without improvement that ``checkpoint`` saved. The Trainer
    restores callbacks only with ``restore_callback_states_from_checkpoint``, which would also restore
    the control flags of the checkpoint, and a checkpoint saved by Ctrl-C holds "stop training".
    Returns the checkpoint's epoch where its count had reached the patience (early stopping had ended
    the training there, and Ctrl-C came after it: resumed, the run trains no further), else None."""
    saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    for name, value in ((saved.get("stateful_callbacks") or {}).get("EarlyStoppingCallback") or {}).get("attributes", {}).items():
        setattr(callback, name, value)
    stopped = callback.early_stopping_patience_counter >= callback.early_stopping_patience
    return round(saved.get("epoch") or 0) if stopped else None


class TrainingClock(TrainerCallback):
    """Each checkpoint records the training seconds spent up to it (``ELAPSED_FILE``), so that a resumed
    run's ``train_seconds`` counts the time before the interruption too (``elapsed_before``)."""

    def __init__(self, started: float, before: float = 0.0):
        self.started, self.before = started, before

    def on_save(self, args, state, control, **kwargs):
        folder = saved_checkpoint(args, state)
        if state.is_world_process_zero and folder.is_dir():
            (folder / ELAPSED_FILE).write_text(json.dumps({"seconds": self.before + time.perf_counter() - self.started}))


def elapsed_before(checkpoint: str | Path | None) -> float:
    """The training seconds ``checkpoint`` recorded (``TrainingClock``); 0 without a checkpoint or record."""
    path = Path(checkpoint) / ELAPSED_FILE if checkpoint else None
    return float(json.loads(path.read_text())["seconds"]) if path and path.is_file() else 0.0


class CheckpointPermissions(TrainerCallback):
    """safetensors writes its files owner-only (0600): give a checkpoint's files the permissions of the
    others (the umask's), as ``save_model`` does for the model folder."""

    def on_save(self, args, state, control, **kwargs):
        folder = saved_checkpoint(args, state)
        if state.is_world_process_zero and folder.is_dir():
            match_permissions(folder)


class StopRequest:
    """While installed, Ctrl-C (SIGINT) or SIGTERM sets ``interrupted`` rather than stopping in the middle
    of an optimizer step, so that the training loop can finish its step and save weights, optimizer and
    schedule that agree; a second one stops at once. Signals reach the main thread only: elsewhere
    installing changes nothing."""

    def __init__(self):
        self.interrupted = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGTERM:
            TERMINATED.set()
        if self.interrupted:  # a second Ctrl-C stops at once
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.interrupted = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


class SaveOnInterrupt(TrainerCallback, StopRequest):
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the current step, save a checkpoint there and
    stop; ``train`` then raises ``TrainingInterrupted`` and ``--resume`` continues from that step.
    Installed when training begins; its caller restores the handlers however training ends."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.install()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_rng = torch.get_rng_state()  # what the epoch's shuffle (the length-grouped sampler) draws from

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        """A stop inside an epoch: the random state the epoch's order was drawn from, with the checkpoint.
        The sampler draws the order of a resumed epoch before the Trainer restores the checkpoint's random
        state, so the resumed epoch was shuffled otherwise: the batches it skipped were not those trained."""
        folder = saved_checkpoint(args, state)
        if self.interrupted and state.is_world_process_zero and folder.is_dir() and abs((state.epoch or 0) - round(state.epoch or 0)) > 1e-6:
            torch.save(self.epoch_rng, folder / EPOCH_ORDER_FILE)

    def on_epoch_end(self, args, state, control, **kwargs):
        # no evaluation of a partial epoch: it is not a candidate for the best epoch. An epoch that the
        # stop found at its last step is whole: it is evaluated (and saved with its evaluation) as without
        # the stop, or --resume would go on to the next epoch with this one never scored
        if self.interrupted and abs((state.epoch or 0) - round(state.epoch or 0)) > 1e-6:
            control.should_evaluate = False


class TrainingBar(ProgressCallback):
    """The Trainer's progress bar without its log lines. Hugging Face's bar writes every logged dict
    under it (a loss line five times an epoch, then the run's throughput), which buried the lines that
    say what the run chose. Here the latest training loss is shown in the bar, and each evaluation
    gives one line: the epoch and its validation accuracy. ``history.csv`` keeps every logged value.
    The time left is reckoned from the mean rate since the bar started: tqdm's default, the recent
    rate, swung after each validation pass, and a resumed run's bar jumped to its checkpoint's step in
    its first update, as if that many steps had just been trained."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # named from its first line, like the other bars of a run ("calibrating")
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step", smoothing=0,
                                     dynamic_ncols=True)
        self.current_step = state.global_step  # a resumed run's bar starts at its checkpoint

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """No bar for the validation pass, short beside an epoch: nested under the training bar, it left
        cursor-up escape codes in logs written to a file."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if isinstance(logs.get("loss"), (int, float)):
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
        if isinstance(logs.get("eval_accuracy"), (int, float)):
            self.training_bar.write(f"epoch {round(state.epoch or 0)}: validation accuracy {logs['eval_accuracy']:.4f}",
                                    file=sys.stderr)  # where the log lines go


def use_training_bar(trainer: Trainer) -> None:
    """Swap the Trainer's default progress bar for ``TrainingBar`` (no bar where progress is off)."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(TrainingBar)


PROBE_METRICS = "probe.json"  # in checkpoints/: the probe's metrics, for a resumed run's metrics.json
ELAPSED_FILE = "elapsed.json"  # in each checkpoint: the training seconds spent up to it
EPOCH_ORDER_FILE = "epoch_rng_state.pt"  # in a checkpoint saved inside an epoch: the random state its order was drawn from

# files that a launcher (the sweep, a job script's ``> train.log``) writes into the run folder before
# training starts: they do not make the folder "not empty", and --overwrite keeps them
LAUNCHER_FILES = ("command.txt", "train.log")
# what marks a folder as a bankintent run folder, which --overwrite may empty
RUN_MARKERS = ("config.yaml", "metrics.json", MODEL_DIR, "checkpoints")


def _contents(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name not in LAUNCHER_FILES) if folder.is_dir() else []


def check_run_output(folder: Path, cfg: TrainConfig, resumable: bool = True) -> None:
    """Refuse an ``--output`` that holds something, unless ``overwrite`` (and then only a run folder) or
    ``resume``: checked before anything is loaded, and before ``--nproc`` starts its processes."""
    check_output_folder(folder)
    contents = _contents(folder)
    run_folder = any((folder / name).exists() for name in RUN_MARKERS)
    if contents and not run_folder and not cfg.resume:  # a data folder, say: --overwrite would be refused, so it is not offered
        raise ConfigError(f"{folder}: output folder holds files that are not a run's ({first_few((p.name for p in contents), 4)}); "
                          f"choose another --output (in Python: output=...) or empty it yourself")
    if contents and not (cfg.overwrite or cfg.resume):
        shown = first_few((p.name for p in contents), 4)
        finished = (folder / "metrics.json").is_file()  # nothing to continue
        resume = (" --resume to continue its training,", " resume=True,") if resumable and not finished else ("", "")
        what = "holds a finished run" if finished else "is not empty"
        raise ConfigError(f"{folder}: output folder {what} ({shown}); pass --overwrite to replace it,{resume[0]} "
                          f"or choose another --output (in Python: overwrite=True,{resume[1]} output=...)")


def check_launch(cfg: TrainConfig, nproc: int) -> None:
    """What ``train --nproc N`` checks once before it starts N processes, so that a bad option, output
    folder or data file is one line rather than a traceback from each process. The data's notes
    (duplicates, thin validation) are left to the run's first process, which says them."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    check_run_output(Path(cfg.output), cfg)
    if cfg.resume:
        check_resumed_options(cfg, Path(cfg.output))
    splits = run_splits(cfg, notes=False)
    check_processes(for_data(cfg, splits.few_examples).method, nproc, launcher="--nproc")


def check_processes(method: str, processes: int, launcher: str = "torchrun") -> None:
    """Refuse several processes for the methods that train in one: ``linear-probe`` (no gradient descent)
    and ``contrastive`` (its pair training's in-batch negatives would be each process's share of the
    batch, and its schedule and metrics a single process's). ``launcher``: ``--nproc``, or ``torchrun``
    (or accelerate) started by hand, so that the way out names what the user typed."""
    if processes > 1 and method in PROBE_FINAL_METHODS:
        why = ("trains no weights by gradient descent (it fits a scikit-learn probe on the base model's embeddings, in one "
               "process)" if method == "linear-probe" else
               "(the few-shot recipe, the default for few examples per intent) trains in one process: split across processes, "
               "each pair would meet only its process's share of the batch as negatives")
        started, single = ((f"--nproc {processes}", "leave --nproc out") if launcher == "--nproc" else
                           (f"{processes} processes (torchrun)", "run bankintent train without torchrun"))
        raise ConfigError(f"{started}: {method} {why}; train it in one process ({single}), or give a method that trains "
                          f"across processes (--method lpft)")


def _prepare_output(folder: Path, cfg: TrainConfig, resumable: bool = True) -> list[Path]:
    """Check ``--output`` before anything is loaded: a folder holding something is refused unless
    ``overwrite`` (and then only a run folder: one holding config.yaml, metrics.json, adapter/ or
    checkpoints/) or ``resume``; it must be writable, with disk space to spare. Creates the folder
    and returns the folders it created (removed again if the run fails before training starts)."""
    check_run_output(folder, cfg, resumable)
    check_writable(folder)
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_created(created)
        raise ConfigError(f"{folder}: cannot be made ({exc.strerror}); choose another --output") from None
    free = shutil.disk_usage(folder).free
    if free < 500 * 2**20:
        _remove_created(created)
        raise ConfigError(f"{folder}: only {free / 2**20:.0f} MiB free on disk; training needs at least 500 MiB")
    return created


def check_resumed_options(cfg: TrainConfig, folder: Path) -> None:
    """--resume continues the run that ``config.yaml`` records. An option given otherwise (another
    --data, more epochs) would be ignored by a finished run and mixed into what an interrupted one has
    trained so far, so it is refused. ``auto`` method and pooling are compared as the run resolved them."""
    recorded_file = folder / "config.yaml"
    if not recorded_file.is_file():  # a mistyped run folder would start a whole training on the default data
        raise ConfigError(f"{folder}: no run to resume (no config.yaml there); check the folder, or train without --resume "
                          f"to start a run")
    recorded = read_yaml(recorded_file)
    now = cfg
    if now.method == AUTO and recorded.get("method") in ("lpft", "contrastive"):
        now = for_data(now, few_examples=recorded["method"] == "contrastive")
    if now.pooling == "auto" and recorded.get("pooling"):
        now = dataclasses.replace(now, pooling=recorded["pooling"])
    compared = set(recorded) - {"output", "overwrite", "resume"}  # a run folder of an older version may lack newer options
    now_values = saved_config(now).to_dict()
    changed = differences({k: recorded[k] for k in compared}, {k: now_values.get(k) for k in compared})
    if changed:
        raise ConfigError(f"{folder}: --resume continues the run as its config.yaml records it, and options differ from it "
                          f"({changed}); continue it with `bankintent train --config {shlex.quote(str(recorded_file))} --resume`, or pass "
                          f"--overwrite (or another --output) to train with the new options")


DATA_RECORD = "data.json"  # in checkpoints/: what the run trains on, for --resume to compare
PROCESSES_RECORD = "processes.json"  # in checkpoints/: how many processes train the run, for --resume to compare


def record_processes(checkpoints: Path, processes: int) -> None:
    if not (checkpoints / PROCESSES_RECORD).is_file():
        checkpoints.mkdir(parents=True, exist_ok=True)
        (checkpoints / PROCESSES_RECORD).write_text(json.dumps({"processes": processes}))


def check_same_processes(checkpoints: Path, processes: int, output: str | Path) -> None:
    """A run stopped at a checkpoint continues in as many processes as it trained in: in another number,
    each optimizer step takes another batch (``batch_size`` times the processes) and the learning-rate
    schedule's steps no longer match the epochs. Where it stopped before its first checkpoint, it starts
    again, in any number."""
    path = checkpoints / PROCESSES_RECORD
    if not path.is_file() or last_checkpoint(checkpoints, remove_incomplete=False) is None:
        return
    trained = json.loads(path.read_text()).get("processes", 1)
    if trained != processes:
        raise ConfigError(f"{output}: the run trained in {trained} process(es) and would continue in {processes}, each optimizer "
                          f"step on another batch; continue with: {resume_command(output, trained, python=False)}")


def record_data(splits: Splits, checkpoints: Path) -> None:
    """Write what the run trains on (sizes and a digest of every training and validation query) beside
    its checkpoints, where a resume finds it."""
    if not (checkpoints / DATA_RECORD).is_file():
        checkpoints.mkdir(exist_ok=True)
        (checkpoints / DATA_RECORD).write_text(json.dumps(data_record(splits)))


def check_same_data(splits: Splits, checkpoints: Path) -> None:
    """An interrupted run continues on the queries it started with: data files changed in place since
    (rows added, an intent added) are refused, where they would crash on the head's new size or train
    the rest of the run on other data than the checkpoint's. Runs started before the record: not checked."""
    path = checkpoints / DATA_RECORD
    if not path.is_file():
        return
    changed = data_changes(json.loads(path.read_text()), data_record(splits))
    if changed:
        raise ConfigError(f"{splits.source}: the data changed since this run started ({changed}); an interrupted run continues "
                          f"on the data it started with: restore it, or pass --overwrite to train anew on the new data")


def _finished_run(folder: Path, main: bool = True) -> dict:
    """--resume on a run that finished: metrics.json is written last, so there is nothing to continue,
    and training again from the beginning (what a missing checkpoint means otherwise) would spend the
    whole run to replace the model. Returns the finished run's metrics (the main process; the others,
    which print nothing, as after training, get {})."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder / 'metrics.json'}: unreadable ({exc}); pass --overwrite to train the run again") from None
    if main:
        log.warning("--resume: %s finished training already (it has its metrics.json); nothing to resume. "
                    "Pass --overwrite to train it again", folder)
    return metrics if main else {}


def _remove_created(created: list[Path]) -> None:
    """Remove the folders ``_prepare_output`` created, deepest first, where they are still empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break


def _empty_run_folder(folder: Path) -> None:
    """--overwrite: remove what the run folder holds (but the launcher's files), so that no file of the
    previous run (its evaluation, its report) outlives the model it describes. Symbolic links are
    removed, never followed."""
    removed = _contents(folder)
    for path in removed:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    if removed:
        log.warning("--overwrite: removed the previous content of %s (%s)", folder, ", ".join(p.name for p in removed))


def _remove_stale_evaluation(folder: Path) -> None:
    """--resume replaces the model: the files ``bankintent evaluate`` wrote about the previous one go."""
    stale = evaluation_files(folder)
    for path in stale:
        path.unlink()
    if stale:
        log.info("--resume: removed the previous model's evaluation files (%s)", ", ".join(p.name for p in stale))


def saved_config(cfg: TrainConfig) -> TrainConfig:
    """The configuration as config.yaml records it: the data, the out-of-scope file, a base model in a
    local folder and the output folder as absolute paths, so that the run folder's config works from
    any directory (``bankintent evaluate RUN``, ``bankintent train --config RUN/config.yaml --resume``).
    ``overwrite`` and ``resume`` are what one command did, not options of the run: recorded as false, so
    that rerunning the config (the command the report and model card give) never empties the folder."""
    paths = {key: recorded_path(key, getattr(cfg, key)) for key in ("data", "oos_file", "base_model", "output")}
    return dataclasses.replace(cfg, **paths, overwrite=False, resume=False)


def _tokenized(tokenizer, texts: list[str], labels: list[int], max_length: int) -> Dataset:
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})


def _accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def _fit_probe(model, tokenizer, splits: Splits, cfg: TrainConfig, progress: bool = True) -> tuple[dict, np.ndarray | None]:
    """The linear probe fitted and loaded into the head; returns its metrics and, for small data whose
    final head it is (``PROBE_FINAL_METHODS``), its out-of-fold logits of the training queries, which
    the calibration then uses for the temperature and the thresholds (``probe.out_of_fold_logits``,
    ``calibrate``), else None."""
    train_x = probe.embed(model, tokenizer, splits.train.texts, cfg.max_length, desc="probe: embedding train", disable=not progress)
    val_x = probe.embed(model, tokenizer, splits.validation.texts, cfg.max_length, desc="probe: embedding validation", disable=not progress)
    # small training data with a validation split (the user's file, or carved): C is chosen on it, else cross-validated
    on_validation = bool(len(splits.validation)) and is_small(splits.train.labels)
    groups = [query_key(t) for t in splits.train.texts]
    clf, c, val_acc = probe.fit(train_x, splits.ids(splits.train), val_x, splits.ids(splits.validation), cfg.probe_c, cfg.seed,
                                choose_on_validation=on_validation, groups=groups)
    probe.load_into_head(model, clf)
    chosen = "on the validation split" if on_validation else "by cross-validation on the training split"
    log.info("linear probe: C=%g (chosen %s)%s", c, chosen, "" if val_acc is None else f", validation accuracy {val_acc:.4f}")
    held_out = None
    if splits.small_data and cfg.method in PROBE_FINAL_METHODS:
        held_out = probe.out_of_fold_logits(train_x, splits.ids(splits.train), c, cfg.seed, groups)
    return {"probe_c": c, "probe_c_chosen": chosen, "probe_val_accuracy": val_acc}, held_out


def _training_arguments(cfg: TrainConfig, checkpoints: Path, steps_per_epoch: int, validate: bool = True,
                        epochs: int | None = None) -> TrainingArguments:
    """``validate`` False (small data): no evaluation, no best epoch; checkpoints still each epoch.
    ``epochs``: in place of the recipe's (a resumed run that early stopping had ended)."""
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs if epochs is None else epochs,
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        weight_decay=cfg.weight_decay,
        label_smoothing_factor=cfg.label_smoothing,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        eval_strategy="epoch" if validate else "no",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 5),
        load_best_model_at_end=validate and not cfg.average_weights,
        metric_for_best_model="accuracy" if validate else None,
        greater_is_better=True,
        save_total_limit=2,
        train_sampling_strategy="group_by_length",
        seed=cfg.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=cuda and not torch.cuda.is_bf16_supported(),
        label_names=["labels"],
        remove_unused_columns=False,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,  # without a GPU, accelerate runs DDP over gloo only when told to use the CPU
        average_tokens_across_devices=False,  # our losses are per-batch means: scaling them by the world size doubles DDP's gradients
        ddp_find_unused_parameters=False,  # every trainable parameter takes part in each step
        disable_tqdm=False,  # the progress bar, on global rank 0 only (quiet transformers logging would print every node's logs instead)
    )


def train(cfg: TrainConfig) -> dict:
    """Train ``cfg.method``, save the model it keeps (the best epoch's weights on validation, the mean of
    the epochs' with ``average_weights``, the last epoch's without validation) to ``<output>/adapter``
    and return metrics.json's content.

    A disk that fills up while training writes (a checkpoint, the model) ends it with a one-line
    ``ConfigError``; the checkpoints written before are intact and ``--resume`` continues from them."""
    try:
        with output_lock(cfg.output) if os.environ.get("RANK", "0") == "0" else nullcontext():  # torchrun's other processes
            return _train(cfg)
    except KeyboardInterrupt as exc:  # a TrainingInterrupted too: the stop said with what the folder holds and how to go on
        if not getattr(exc, "resumable", True):
            raise
        raise TrainingInterrupted(f"{str(exc) or 'interrupted'}. {interrupted_note(cfg.output)}") from None
    except Exception as exc:
        reason = _full_disk(exc)
        if reason is None:
            raise
        raise ConfigError(f"{cfg.output}: writing failed ({reason}); free disk space, then continue with: "
                          f"{resume_command(cfg.output, python=False)}") from None


@contextmanager
def output_lock(folder: str | Path):
    """Held while a run writes into ``folder``: two runs started into it at the same moment would both
    find it empty and write over each other (one's config.yaml beside the other's metrics.json). A lock
    file per output folder in the temporary directory, as the folder may not exist yet; the system
    drops the lock with the process. It holds for runs on this machine sharing the temporary directory;
    where none can be taken (no ``fcntl``) the run goes on without."""
    try:
        import fcntl

        locks = Path(tempfile.gettempdir()) / "bankintent-locks"
        try:
            locks.mkdir()
            locks.chmod(0o1777)  # every user's runs lock here, as in /tmp itself
        except FileExistsError:  # made earlier, or by a run starting at this moment (which must not go on unlocked)
            pass
        handle = open(locks / f"{hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]}.lock", "w")
    except (ImportError, OSError):
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{folder}: another bankintent train or distill is writing into it now; wait for it to end, or choose "
                              "another --output") from None
        yield


def resume_command(output: str | Path, processes: int | None = None, python: bool = True) -> str:
    """The command that continues the run in ``output``, in as many processes as it trained in
    (``processes``, default: this one's, as torchrun numbers them): in fewer, each optimizer step would
    take a smaller batch from there on. ``python``: and the call that does it in Python (one process)."""
    processes = processes or int(os.environ.get("WORLD_SIZE", "1"))
    config = shlex.quote(str(Path(output) / "config.yaml"))
    if processes > 1:
        return f"bankintent train --nproc {processes} --config {config} --resume"
    command = f"bankintent train --config {config} --resume"
    return f"{command} (in Python: train(output={str(output)!r}, resume=True))" if python else command


def interrupted_note(output: str | Path) -> str:
    """What to do after Ctrl-C stopped ``train`` once its run folder was started (``TrainingInterrupted.
    resumable``): continue from the checkpoint the run left, or, where it had none yet (the contrastive
    pair training and the probe keep none), start it again."""
    folder = Path(output)
    command = resume_command(folder)
    if last_checkpoint(folder / "checkpoints", remove_incomplete=False) is None:
        return f"Stopped before the run's first checkpoint: nothing to continue from; {command} starts it again from the beginning"
    return f"Continue with: {command}"


def _full_disk(exc: Exception) -> str | None:
    if isinstance(exc, OSError) and exc.errno in _FULL_DISK_ERRNOS:
        return exc.strerror
    return next((message for message in _FULL_DISK_MESSAGES if message in str(exc)), None)


def last_checkpoint(folder: Path, remove_incomplete: bool = True) -> str | None:
    """The newest complete ``checkpoint-N`` in ``folder``. The Trainer writes ``trainer_state.json``
    last, so a checkpoint without it was cut short (killed, disk full): it is skipped, and removed
    (with a warning) where ``remove_incomplete``."""
    complete = {}
    for checkpoint in folder.glob("checkpoint-*"):
        step = checkpoint.name.removeprefix("checkpoint-")
        if not step.isdigit():
            continue
        if (checkpoint / "trainer_state.json").is_file():
            complete[int(step)] = checkpoint
        elif remove_incomplete:
            log.warning("--resume: %s is incomplete (cut short while being written); removing it", checkpoint)
            shutil.rmtree(checkpoint)
    return str(complete[max(complete)]) if complete else None


STOPPED_BEFORE = "interrupted before training started, the output folder as it was: run the same command again"


def _train(cfg: TrainConfig) -> dict:
    out = Path(cfg.output)
    try:
        # one of the processes started by torchrun / accelerate launch (or the only one); only rank 0 writes,
        # logs and shows progress
        process = PartialState(cpu=not torch.cuda.is_available())
        main = process.is_main_process
        if cfg.resume:
            check_resumed_options(cfg, out)
            if (out / "metrics.json").is_file():
                return _finished_run(out, main)
        created = _prepare_output(out, cfg) if main else []
    except KeyboardInterrupt:  # nothing of this run in the folder yet (with --overwrite, the previous run as it was)
        raise TrainingInterrupted(STOPPED_BEFORE, resumable=False) from None
    if not main:
        for name in ("bankintent", "sentence_transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:  # what can refuse the run (data, options, base model) is checked before the output folder changes
        cfg, splits, spec, tokenizer, model = _resolve(cfg, process.num_processes)
    except BaseException as exc:
        if main:
            _remove_created(created)
        if isinstance(exc, KeyboardInterrupt):  # the folder holds what it held (a previous run, with --overwrite)
            raise TrainingInterrupted(STOPPED_BEFORE, resumable=False) from None
        raise
    if main:
        _start_run_folder(cfg, splits, out, tokenizer)
        record_processes(out / "checkpoints", process.num_processes)
    record = data_record(splits)  # the data as read, before the names and repeats training adds: what the report compares
    splits = prepare_splits(splits, cfg, spec.preprocessing, main)
    checkpoints = out / "checkpoints"
    resume_from = last_checkpoint(checkpoints, remove_incomplete=main) if cfg.resume and checkpoints.is_dir() else None
    if cfg.resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", checkpoints)

    started = time.perf_counter()
    before = elapsed_before(resume_from)  # training seconds spent before an interruption, if resuming
    extra: dict = {}
    if cfg.method == "contrastive" and cfg.epochs > 0:
        extra.update(contrastive.fine_tune(model, splits, cfg, checkpoints / "contrastive", progress=main))
        shutil.rmtree(checkpoints, ignore_errors=True)
    out_of_fold = None
    if cfg.method in PROBE_HEAD_METHODS and resume_from is None:
        probe_metrics, out_of_fold = _fit_probe(model, tokenizer, splits, cfg, progress=main)
        extra.update(probe_metrics)
        if main and cfg.method not in PROBE_FINAL_METHODS:  # what --resume reports of the probe it does not fit again
            checkpoints.mkdir(exist_ok=True)
            (checkpoints / PROBE_METRICS).write_text(json.dumps(probe_metrics))
    elif cfg.method in PROBE_HEAD_METHODS and (checkpoints / PROBE_METRICS).is_file():
        extra.update(json.loads((checkpoints / PROBE_METRICS).read_text()))
    paired = bool(extra.get("contrastive_pairs"))  # contrastive's encoder trained (no epochs or no pair: it did not)
    if cfg.uses_lora:
        model = add_lora(model, spec, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
    elif cfg.method == "linear-probe" or cfg.method == "contrastive" and not paired:
        model.encoder.requires_grad_(False)  # the base's encoder, unchanged: saved as the probe's head alone

    history: list[dict] = []
    best_epoch = 0
    epochs_run = cfg.epochs if paired else 0  # the encoder's epochs on pairs; the probe has none
    if cfg.method not in PROBE_FINAL_METHODS and cfg.epochs > 0:
        model, history, best_epoch, epochs_run, facts = _fine_tune(
            model, tokenizer, splits, cfg, checkpoints, resume_from, TrainingClock(started, before), process.num_processes)
        extra.update(facts)
    train_seconds = before + time.perf_counter() - started
    if not main:
        return {}

    # the encoder trained on the training queries (the probe alone did not; nor contrastive without a pair to train on)
    encoder_trained = cfg.method not in PROBE_FINAL_METHODS or paired
    scores = save_and_score(model, tokenizer, spec, splits, cfg, history, extra, out_of_fold, encoder_trained)
    metrics = {**run_metrics(spec, scores, splits, train_seconds, best_epoch, epochs_run, cfg.seed, extra), "data_record": record}
    write_json(out / "metrics.json", metrics)
    write_model_card(out / MODEL_DIR, saved_config(cfg), metrics)  # paths as config.yaml records them
    shutil.rmtree(checkpoints, ignore_errors=True)  # the run is finished: nothing left to resume
    return metrics


def _resolve(cfg: TrainConfig, processes: int = 1) -> tuple[TrainConfig, Splits, ModelSpec, object, nn.Module]:
    """What the run is, everything that can refuse it checked: the data read and split, ``auto``'s method
    and pooling resolved (and refused in ``processes`` where it trains in one: started by torchrun by hand,
    which ``--nproc``'s checks did not see), the base model and tokenizer loaded. Nothing is written."""
    set_seed(cfg.seed)
    cfg = dataclasses.replace(cfg, base_model=recorded_path("base_model", cfg.base_model))  # as the model folder records it
    splits = run_splits(cfg)
    if cfg.resume:
        check_same_data(splits, Path(cfg.output) / "checkpoints")
        check_same_processes(Path(cfg.output) / "checkpoints", processes, cfg.output)
    if cfg.method == AUTO:
        cfg = for_data(cfg, splits.few_examples)
        log.info("method: %s (the default for %s)", cfg.method, "few examples per intent" if splits.few_examples else "this data")
    check_processes(cfg.method, processes)
    if cfg.pooling == "auto":
        cfg = dataclasses.replace(cfg, pooling=base_pooling(cfg.base_model))
        log.info("pooling: %s (the base model's own)", cfg.pooling)
    check_pooling(cfg)
    if splits.small_data and cfg.augment:
        raise ConfigError(f"augment={cfg.augment!r} finds the confused intents on the validation split, and this data has none "
                          f"({splits.notes['validation']}); give a validation file (valid.csv) or leave augment out")
    if splits.small_data and cfg.method not in PROBE_FINAL_METHODS:
        log.info("small data: --method contrastive is the few-shot recipe (docs/training.md, 'Your own data')")
    spec = ModelSpec(
        base_model=cfg.base_model, method=cfg.method, pooling=cfg.pooling, labels=splits.labels,
        max_length=cfg.max_length, lora=cfg.uses_lora, preprocessing={"normalize_entities": cfg.normalize_entities},
        logit_scale=COLD_HEAD_SCALE if cfg.pooling == "mean" and cfg.method in COLD_HEAD_METHODS else 1.0,
    )
    tokenizer = load_tokenizer(cfg.base_model)
    model = build_model(spec, cfg.allow_pickle)
    check_tokenizer_fits(tokenizer, model, cfg.base_model)
    if cfg.uses_lora:  # before the probe runs: lpft's LoRA is added after it
        check_target_modules(model, cfg.target_modules or target_modules_for(model.config.model_type))
    return cfg, splits, spec, tokenizer, model


def _start_run_folder(cfg: TrainConfig, splits: Splits, out: Path, tokenizer) -> None:
    """The run accepted (main process only): the data's warnings said (training queries the tokenizer
    cuts among them), the folder emptied (``overwrite``) or its stale evaluation removed (``resume``),
    config.yaml and the data's record written."""
    unused = unused_options(cfg)
    if unused:
        log.warning("%s does not use %s: %s change%s nothing", cfg.method, "; ".join(unused),
                    "they" if len(unused) > 1 else "it", "" if len(unused) > 1 else "s")
    for warning in (None if splits.small_data else thin_validation(splits), thin_intents_warning(splits)):
        if warning:
            log.warning("%s", warning)
    cut = long_queries_note(tokenizer, splits.train.texts, cfg.max_length)
    if cut:
        log.log(*cut)
    if cfg.overwrite and not cfg.resume:
        _empty_run_folder(out)
    elif cfg.resume:
        _remove_stale_evaluation(out)
    saved_config(cfg).save(out / "config.yaml")
    record_data(splits, out / "checkpoints")


def _fine_tune(model: nn.Module, tokenizer, splits: Splits, cfg: TrainConfig, checkpoints: Path, resume_from: str | None,
               clock: TrainingClock, num_processes: int) -> tuple[nn.Module, list[dict], int, int, dict]:
    """The gradient-descent stage, with the Hugging Face Trainer: early stopping on validation accuracy
    (none with small data: the recipe's epochs run), per-epoch checkpoints that ``--resume`` continues,
    Ctrl-C saving a checkpoint. Returns the model kept, the per-epoch history, the best and the last
    epoch, and what metrics.json records of the schedule."""
    validate = not splits.small_data
    train_set = _tokenized(tokenizer, splits.train.texts, splits.ids(splits.train), cfg.max_length)
    val_set = _tokenized(tokenizer, splits.validation.texts, splits.ids(splits.validation), cfg.max_length) if validate else None
    steps_per_epoch = math.ceil(len(train_set) / (cfg.batch_size * num_processes))
    interrupt = SaveOnInterrupt()
    callbacks = [interrupt, CheckpointPermissions(), clock]
    stopped_after = None  # the epoch at which early stopping had ended a resumed run
    if validate:
        early_stopping = EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)
        if resume_from:
            stopped_after = restore_early_stopping(early_stopping, resume_from)
        callbacks.insert(0, early_stopping)
    if cfg.method == "lora-unfreeze":
        callbacks.append(GradualUnfreezing(model.config.num_hidden_layers, cfg.unfreeze_layers_per_epoch))
    averaging = WeightAveraging()
    if cfg.average_weights:
        callbacks.append(averaging)
        if resume_from:
            averaging.restore(resume_from)
    rdrop = {"rdrop": cfg.rdrop} if cfg.rdrop else {}
    trainer = (RDropTrainer if rdrop else Trainer)(
        model=model,
        args=_training_arguments(cfg, checkpoints, steps_per_epoch, validate, epochs=stopped_after),
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_accuracy if validate else None,
        callbacks=callbacks,
        **rdrop,
    )
    use_training_bar(trainer)
    if resume_from and (Path(resume_from) / EPOCH_ORDER_FILE).is_file():  # stopped inside an epoch: shuffled as it was
        torch.set_rng_state(torch.load(Path(resume_from) / EPOCH_ORDER_FILE))
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:  # on an error too, which the Trainer ends without on_train_end: a notebook's Ctrl-C works again
        interrupt.restore()
    if interrupt.interrupted:
        raise TrainingInterrupted(f"interrupted at step {trainer.state.global_step}; checkpoint saved in {checkpoints}")
    model = trainer.model
    if averaging.count:
        averaging.apply(model)
        if averaging.count > 1:
            log.info("weights: the mean of the %d epochs' end weights (average_weights)", averaging.count)
        else:
            log.info("weights: the only epoch's (average_weights: one epoch, nothing to average)")
    history = history_from_logs(trainer.state.log_history)
    validated = [row for row in history if not math.isnan(row["val_accuracy"])]
    best_epoch = max(validated, key=lambda row: row["val_accuracy"])["epoch"] if validated else 0
    epochs_run = math.ceil(trainer.state.epoch or 0)  # early stopping may end it before cfg.epochs
    if not validate and not averaging.count:
        best_epoch = epochs_run  # no validation: the last epoch is kept
    args = trainer.args
    facts = {
        "averaged_epochs": averaging.count,
        "world_size": args.world_size,
        "effective_batch_size": args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
        "lr_scheduler": args.lr_scheduler_type.value,
        "peak_lr": args.learning_rate,
        "warmup_steps": args.get_warmup_steps(trainer.state.max_steps),
        "optimizer_steps": trainer.state.global_step,  # the steps taken: fewer than planned where early stopping ended the run
    }
    return model, history, best_epoch, epochs_run, facts


def run_metrics(spec: ModelSpec, scores: dict, splits: Splits, train_seconds: float, best_epoch: int, epochs_run: int, seed: int,
                extra: dict) -> dict:
    """metrics.json's content, for every way of making a model (training, ``bankintent.distill``): what
    made it, its scores (``save_and_score``), how long and how many epochs, the data, the hardware, then
    what the method alone reports (``extra``)."""
    return {
        "method": spec.method,
        "base_model": spec.base_model,
        "pooling": spec.pooling,
        **scores,
        "train_seconds": round(train_seconds, 1),
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "seed": seed,
        **data_metrics(splits),
        "hardware": hardware(extra.get("world_size", 1)),
        "versions": versions(),
        **extra,
    }


def data_metrics(splits: Splits) -> dict:
    """What ``metrics.json`` says of the data a model was made from."""
    return {
        "train_size": len(splits.train),
        "val_size": len(splits.validation),
        "test_size": len(splits.test) if splits.test is not None else 0,
        "num_labels": len(splits.labels),
        "data": splits.source,
        "validation": splits.notes.get("validation"),
        "val_min_per_intent": min(Counter(splits.validation.labels)[label] for label in splits.labels),
        "shots": splits.notes.get("shots"),
        "intent_names_added": splits.notes.get("intent_names_added", 0),
        "val_warning": None if splits.small_data else thin_validation(splits),
        "thin_intents": splits.notes.get("thin_intents", thin_intents(splits)),  # as the data had them, before any repeats
        "thin_intents_repeated": splits.notes.get("thin_intents_repeated", {}),
        "empty_rows_skipped": splits.notes.get("empty_rows_skipped", 0),
        "duplicate_rows": splits.notes.get("duplicate_rows", 0),
        "queries_also_in_training": splits.notes.get("queries_also_in_training", {}),
        "test_sha256": test_digest(splits),
    }


def check_pooling(cfg: TrainConfig) -> None:
    """The probe methods fit a logistic regression on mean-pooled embeddings: a ``cls`` model (the
    model's own head) has none to fit it on. ``contrastive`` trains the base's own sentence embedding,
    which must then be the mean of the tokens too."""
    if cfg.method in PROBE_HEAD_METHODS and cfg.pooling != "mean":
        raise ConfigError(f"pooling {cfg.pooling}: {cfg.method} fits its head on mean-pooled embeddings; give pooling mean, or "
                          f"--method lora, full or lora-unfreeze for the model's own head on the first token")
    pooled = sentence_pooling(cfg.base_model) if cfg.method == "contrastive" else None
    if pooled not in (None, "mean"):
        raise ConfigError(f"{cfg.base_model}: a sentence encoder that pools by {pooled}, where contrastive trains the mean of the "
                          f"tokens its classifier reads; choose a mean-pooling encoder, or --method lpft")


def save_and_score(model, tokenizer, spec: ModelSpec, splits: Splits, cfg: TrainConfig, history: list[dict], extra: dict,
                   out_of_fold: np.ndarray | None = None, encoder_trained: bool = True) -> dict:
    """How every way of making a model ends (training, ``bankintent.distill``): the temperature and the
    out-of-scope detector fitted (they fill ``spec``; ``extra`` gets what the calibration reports;
    ``out_of_fold``: small data's probe logits of the training queries, see ``calibrate``; with small
    data and ``encoder_trained``, the calibration error is flagged ``ece_optimistic``, measured on
    queries the encoder trained on, however out of fold the head's logits are), the
    model folder saved in OUTPUT/adapter, the history written, and the saved folder, loaded as a user
    loads it, scored on validation and test. Returns those scores and the model's sizes."""
    out = Path(cfg.output)
    trainable, total = count_parameters(model)
    model.eval()
    held_out = None
    if out_of_fold is not None:  # small data: the probe's logits of the held half's queries stand in for the model's
        given = splits.notes["train_rows_given"]  # the data's own rows, first in the training split; their distinct queries
        own = sum(distinct_queries([query_key(t) for t in splits.train.texts[:given]], splits.train.labels[:given]).values())
        held_out = OutOfFold(out_of_fold, np.array(splits.ids(splits.train)), out_of_fold[_halves(splits, cfg)[1]], own)
    held_half = "training queries of the held half (trained on)" if splits.small_data else "validation queries"
    extra.update(calibrate(Predictor(model, tokenizer, spec), calibration_splits(splits, cfg), cfg, held_out, held_half,
                           trained_on=splits.small_data and encoder_trained))
    if splits.small_data:
        extra["calibration"] = CROSS_FITTED if out_of_fold is None else CROSS_FITTED_OUT_OF_FOLD
    extra["ece_optimistic"] = splits.small_data and encoder_trained
    model_dir = out / MODEL_DIR
    save_model(model, spec, model_dir)
    oos_bytes = (model_dir / OOD_FILE).stat().st_size if (model_dir / OOD_FILE).is_file() else 0  # the detector, not the adapter
    write_history(history, out)

    predictor = Predictor.load(model_dir, allow_pickle=cfg.allow_pickle)
    validate = not splits.small_data
    nothing = {"accuracy": None, "macro_f1": None}
    val = evaluate_split(predictor, splits.validation, splits.labels, served=False) if validate else nothing
    test = evaluate_split(predictor, splits.test, splits.labels) if splits.test is not None else {}
    caught = served = None  # the test file's own out-of-scope rows: the fallback measured on queries that chose nothing
    if len(splits.test_out_of_scope) and predictor.oos_threshold is not None:
        caught = float(np.mean([a["out_of_scope"] for a in predictor.predict(splits.test_out_of_scope.texts)]))
        if test:  # every row of the test file, in scope or not, given the right answer: what the customers get
            right = test["answered_right"] * len(splits.test) + caught * len(splits.test_out_of_scope)
            served = right / (len(splits.test) + len(splits.test_out_of_scope))
    return {
        "val_accuracy": val["accuracy"],
        "val_macro_f1": val["macro_f1"],
        "test_accuracy": test.get("accuracy"),
        "test_macro_f1": test.get("macro_f1"),
        "test_answered": test.get("answered"),
        "test_answered_right": test.get("answered_right"),
        "test_oos_recall": caught,
        "test_oos_examples": splits.test_out_of_scope.describe() if caught is not None else None,
        "test_served_accuracy": served,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "adapter_bytes": folder_bytes(model_dir) - oos_bytes,
        "oos_detector_bytes": oos_bytes,
    }


CROSS_FITTED = ("cross-fitted (small data, no validation split): out-of-scope statistics fitted on a stratified half of the training "
                "split, temperature and thresholds on the other half's queries (trained on, so the threshold errs towards out of scope)")
CROSS_FITTED_OUT_OF_FOLD = ("cross-fitted (small data, no validation split): out-of-scope statistics fitted on a stratified half of "
                            "the training split, thresholds on the other half's queries with the probe's out-of-fold probabilities, "
                            "temperature on every training query's out-of-fold probe logits")


def calibration_splits(splits: Splits, cfg: TrainConfig) -> Splits:
    """What the calibration fits on: the splits themselves, or with small data (no validation split) two
    stratified halves of the training split as its training and validation splits (see the module
    docstring)."""
    if not splits.small_data:
        return splits
    fitted, held = _halves(splits, cfg)
    return dataclasses.replace(splits, train=splits.train.take(fitted), validation=splits.train.take(held))


def _halves(splits: Splits, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """The two stratified halves of small data's training split (indices) that calibration is cross-fitted
    on: of the rows the data gave, each intent having 2 or more. The rows training added (intents'
    names, thin intents' copies, augmented copies) are in neither: they are no customer's queries, and
    a copy in one half of a row of the other would score that row as seen; so is a row the data repeats
    (``query_key``): a query's rows are in one half, drawn as one."""
    given = splits.notes.get("train_rows_given", len(splits.train))
    rows = [(query_key(text), label) for text, label in zip(splits.train.texts[:given], splits.train.labels[:given])]
    at: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        at.setdefault(row, []).append(i)
    queries = list(at)  # without repeated rows: the rows themselves, drawn as before
    halves = train_test_split(range(len(queries)), test_size=0.5, stratify=[label for _, label in queries], random_state=cfg.split_seed)
    return tuple([i for q in half for i in at[queries[q]]] for half in halves)


def preprocess_splits(splits: Splits, preprocessing: dict) -> None:
    """The model's preprocessing on the training and validation texts, in place (prediction applies it to
    every query it is given, test included)."""
    for examples in (splits.train, splits.validation):
        examples.texts = [preprocess(t, preprocessing) for t in examples.texts]


def add_intent_names(splits: Splits, cfg: TrainConfig, preprocessing: dict) -> None:
    """Each intent's name as one more training query of it, in place (``intent_names``; ``auto``: where
    the training split's median intent has fewer than ``data.SMALL_DATA_PER_INTENT`` queries,
    ``data.is_small``); see ``bankintent.text``."""
    if cfg.intent_names == "off" or cfg.intent_names == "auto" and not is_small(splits.train.labels):
        return
    texts, why_not = intent_name_examples(splits.labels)
    if why_not:
        (log.info if cfg.intent_names == "auto" else log.warning)("intent names: not added (%s)", why_not)
        return
    log.info("intent names: one training query each, e.g. %r for %r (%d training queries in all, metrics.json's train_size)",
             texts[0], splits.labels[0], len(splits.train) + len(texts))
    splits.notes["intent_names_added"] = len(texts)
    splits.train = Examples(splits.train.texts + [preprocess(t, preprocessing) for t in texts],
                            splits.train.labels + list(splits.labels))


def repeat_thin_intents(splits: Splits, repeats: int) -> None:
    """Each thin intent's training queries (``data.thin_intents``: a new intent of ten examples among
    intents of a hundred) ``min(repeats, median // count)`` times in all, in place, so that the probe and
    the fine-tuning weigh it nearer the others. On Banking77 intents cut to ten examples it raised their
    recall without lowering the others' (docs/training.md, "Your own data"). ``notes``: the thin
    intents as the data had them, and the copies of each."""
    thin = thin_intents(splits)
    splits.notes["thin_intents"] = thin
    median = training_counts(splits)[1]
    copies = {label: min(repeats, max(1, int(median // count))) for label, count in thin.items()}
    copies = {label: n for label, n in copies.items() if n > 1}
    if not copies:
        return
    extra = [(text, label) for text, label in zip(splits.train.texts, splits.train.labels) for _ in range(copies.get(label, 1) - 1)]
    splits.train = Examples(splits.train.texts + [t for t, _ in extra], splits.train.labels + [label for _, label in extra])
    splits.notes["thin_intents_repeated"] = copies
    log.info("thin intents: training queries repeated (%s) to weigh nearer the median intent's %g",
             ", ".join(f"{label!r} x{n}" for label, n in copies.items()), median)


def prepare_splits(splits: Splits, cfg: TrainConfig, preprocessing: dict, main: bool = True) -> Splits:
    """Training-time text preparation: the model's preprocessing on train and validation (prediction
    applies it to every query, test included), thin intents' queries repeated, the intents' names and
    augmentation of the training split. ``notes["train_rows_given"]``: the rows before any was added.
    Every process of a distributed run prepares its own (the same, from the seed); ``main`` writes
    ``augmentation.json``, into the run folder the other processes may find not made yet."""
    splits.notes["train_rows_given"] = len(splits.train)
    preprocess_splits(splits, preprocessing)
    repeat_thin_intents(splits, cfg.thin_repeats)
    add_intent_names(splits, cfg, preprocessing)
    if cfg.augment == "confused-pairs":
        pairs = probe.confused_intents(splits, cfg)
        intents = {p["intent_a"] for p in pairs} | {p["intent_b"] for p in pairs}
        texts, labels = augment(splits.train.texts, splits.train.labels, intents, cfg.seed)
        log.info("augment: %d perturbed copies of the queries of %d confused intents", len(texts), len(intents))
        if main:
            (Path(cfg.output) / "augmentation.json").write_text(json.dumps({"confused_pairs": pairs, "added": len(texts)}, indent=2))
        splits.train = Examples(splits.train.texts + texts, splits.train.labels + labels)
    return splits


def history_from_logs(log_history: list[dict]) -> list[dict]:
    """Per epoch: mean of the training-loss logs of that epoch, validation loss and accuracy (NaN
    without a validation split: small data still has its training loss per epoch)."""
    losses: dict[int, tuple[int, float]] = {}  # by step: a resumed run may log a step again, and the last one counts
    evals: dict[int, dict] = {}
    for entry in log_history:
        if "loss" in entry:
            losses[entry["step"]] = (max(1, math.ceil(round(entry["epoch"], 4))), entry["loss"])  # a log at 1.0 ends epoch 1
        elif "eval_accuracy" in entry:
            evals[int(round(entry["epoch"]))] = {"val_loss": entry["eval_loss"], "val_accuracy": entry["eval_accuracy"]}
    rows = []
    for epoch in sorted({epoch for epoch, _ in losses.values()} | set(evals)):
        epoch_losses = [loss for e, loss in losses.values() if e == epoch]
        rows.append({"epoch": epoch, "train_loss": sum(epoch_losses) / len(epoch_losses) if epoch_losses else float("nan"),
                     **evals.get(epoch, {"val_loss": float("nan"), "val_accuracy": float("nan")})})
    return rows


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# the libraries a run's figures depend on: a logistic regression fitted by another scikit-learn version, say,
# gave other accuracies from the same embeddings
VERSIONED = ("bankintent", "torch", "transformers", "peft", "sentence-transformers", "scikit-learn", "numpy")


def versions() -> dict[str, str | None]:
    """The versions of ``VERSIONED`` this run used (None: not installed), for metrics.json."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: of(name) for name in VERSIONED}


def hardware(processes: int = 1) -> str:
    """The device a run trained on, and with ``processes`` (DDP), how many trained at once."""
    threads = torch.get_num_threads()
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return name if processes == 1 else f"{processes} x {name}"
    each = f"{threads} thread{'s' if threads > 1 else ''}"
    return f"CPU ({platform.machine()}, {each})" if processes == 1 else f"CPU ({platform.machine()}, {processes} processes of {each})"
