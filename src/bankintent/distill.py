"""Distillation: ``distill(RUN, OUTPUT, layers=3)`` trains a shallower copy of a trained classifier.

The student starts as the teacher itself (LoRA merged) with only ``layers`` of its encoder layers
kept: the embeddings, the kept layers' weights and the head (mean-pooled or the model's own) are the
teacher's, so training starts near the teacher's answers rather than from a base model that never
saw the intents.

Which layers (``student_layers``): the top layer of each of ``layers`` equal blocks of the teacher's
layers, TinyBERT's uniform mapping (student layer m takes teacher layer m * L / layers, counting from
1): the teacher's last layer is always kept, so the head still reads the kind of representation it
was trained on. DistilBERT's other choice, every other layer from the first, drops it. ``layers``
equal to the teacher's depth keeps every layer: a student as large as the teacher.

An ensemble (``teachers``: more runs on the same data and intents, e.g. other seeds): the student
starts from the first teacher and matches the mean of all the teachers' logits (the ensemble's
geometric-mean probabilities), so one model of one teacher's cost learns what several agree on
(Hinton et al., 2015, distilled an ensemble so).

Loss: the student matches the teacher's temperature-softened probabilities, KL divergence times T^2
(Hinton et al., 2015: the gradients then keep their size whatever T), plus ``alpha`` times the
cross-entropy on the true label where a query has one: ``(1 - alpha) T^2 KL + alpha CE``. The queries:
the run's own training split (loaded with the run's saved options, so the split is the one training
saw), perturbed copies of them (``bankintent.text.perturb``) and optionally a file of unlabelled
queries; the copies and the unlabelled queries have the KL term only, since a perturbation can change
the intent and the teacher's probabilities say what the copy still means. The teacher's logits are
computed once, before training. The epoch kept is the one with the best validation accuracy (the
last without a validation split); the test split is evaluated, never chosen on.

A stop (Ctrl-C, SIGTERM) during training finishes its step and saves ``checkpoints/distill.pt`` (the
student, optimizer, schedule, random states and the teacher's logits), as does the end of every
epoch; ``resume`` continues from there with the same options and ends with the same student as a run
never stopped. The checkpoint is removed once the student is saved.

The output is a run folder like any other: ``adapter/`` (a model folder holding every student tensor,
``ModelSpec.layers`` naming the base model's layers kept), calibrated and with the out-of-scope
detector fitted as training does, ``metrics.json``, ``history.csv`` and the teacher's ``config.yaml``
(its data and split options, which ``bankintent evaluate`` and ``export`` read).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, get_linear_schedule_with_warmup, set_seed

from bankintent.config import MODEL_DIR, DistillConfig, TrainConfig, differences, read_yaml, run_config_file, unknown_names
from bankintent.data import check_trained_intents, query_key, read_queries, run_splits
from bankintent.errors import ConfigError, ModelError, TrainingInterrupted
from bankintent.model_card import write_model_card
from bankintent.modeling import encode_batches, keep_layers, load_model, load_tokenizer, num_layers, read_spec, resolve_base_model
from bankintent.predict import ONNX_FILE, model_folder
from bankintent.text import augment, preprocess
from bankintent.results import write_json
from bankintent.training import (StopRequest, _empty_run_folder, _prepare_output, _remove_created, output_lock, preprocess_splits,
                                 run_metrics, save_and_score, saved_config)

log = logging.getLogger(__name__)

UNLABELLED = -1  # the label id of augmented copies and unlabelled queries: no cross-entropy term
EVAL_BATCH = 128


def student_layers(teacher_layers: int, layers: int) -> list[int]:
    """The teacher's layers the student keeps (0-based): the top one of each of ``layers`` equal blocks."""
    if not 1 <= layers <= teacher_layers:
        raise ConfigError(f"layers must be between 1 and {teacher_layers} (the teacher has {teacher_layers} encoder layers), "
                          f"got {layers}")
    return [(m + 1) * teacher_layers // layers - 1 for m in range(layers)]


def teacher_folder(run: str | Path):
    """The model folder of a teacher ``run`` and its spec; an ONNX export (no PyTorch weights to run
    the teacher or start the student from) is refused."""
    folder = model_folder(run)
    spec = read_spec(folder)  # a missing or incomplete model folder says so here
    if (folder / ONNX_FILE).is_file():
        raise ConfigError(f"{folder}: an ONNX export cannot be distilled; give the run folder it was exported from")
    return folder, spec


def ensemble_member(run: str | Path, teacher_spec) -> Path:
    """The model folder of ``run``, one more teacher of an ensemble: it must answer the same intents
    (in the same order) with the same tokenizer as the first teacher."""
    folder, spec = teacher_folder(run)
    if spec.labels != teacher_spec.labels:
        raise ConfigError(f"{run}: its intents differ from the first teacher's; an ensemble's teachers are trained on the same data")
    if spec.base_model != teacher_spec.base_model or spec.max_length != teacher_spec.max_length \
            or spec.preprocessing != teacher_spec.preprocessing:
        raise ConfigError(f"{run}: base model {spec.base_model!r} (max_length {spec.max_length}, preprocessing {spec.preprocessing}) "
                          f"differs from the first teacher's; an ensemble's teachers read the queries alike")
    return folder


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                      alpha: float) -> torch.Tensor:
    """Mean over the batch of ``(1 - alpha) T^2 KL(teacher || student)`` at temperature T, plus ``alpha``
    times the cross-entropy for the queries with a label (``labels`` >= 0)."""
    log_p = nn.functional.log_softmax(student / temperature, -1)
    kl = nn.functional.kl_div(log_p, nn.functional.log_softmax(teacher / temperature, -1), log_target=True, reduction="none").sum(-1)
    ce = nn.functional.cross_entropy(student, labels.clamp(min=0), reduction="none") * (labels >= 0)
    return ((1 - alpha) * temperature**2 * kl + alpha * ce).mean()


@torch.no_grad()
def logits_of(model: nn.Module, tokenizer, texts: list[str], max_length: int, desc: str | None = None) -> torch.Tensor:
    """The model's logits for ``texts`` (already preprocessed), on the CPU, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = None
    with tqdm(total=len(texts), desc=desc, unit="q", disable=desc is None) as bar:
        for positions, batch in encode_batches(tokenizer, texts, max_length, EVAL_BATCH):
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits.cpu()
            out = torch.empty(len(texts), logits.shape[-1]) if out is None else out
            out[positions] = logits
            bar.update(len(positions))
    return out


def held_out_removed(texts: list[str], splits, path) -> tuple[list[str], dict[str, int]]:
    """``texts`` (the unlabelled queries) without the run's validation and test queries, in scope or not
    (the out-of-scope examples choose the student's score and threshold), and how many of each were left
    out. Chat logs exported whole may hold them; a student trained to match the teacher on them would be
    chosen on, and scored on, queries it has seen."""
    held = {name: {query_key(t) for t in split.texts} for name, split in (
        ("validation", splits.validation), ("test", splits.test), ("out-of-scope example", splits.out_of_scope),
        ("test out-of-scope", splits.test_out_of_scope)) if split is not None and len(split.texts)}
    left_out = {name: sum(query_key(t) in keys for t in texts) for name, keys in held.items()}
    left_out = {name: n for name, n in left_out.items() if n}
    if left_out:
        log.warning("%s: %s left out (a student trained on them would be chosen and scored on queries it has seen)", path,
                    " and ".join(f"{n} {name} quer{'y' if n == 1 else 'ies'}" for name, n in left_out.items()))
        every = set().union(*held.values())
        texts = [t for t in texts if query_key(t) not in every]
        if not texts:
            raise ConfigError(f"{path}: every unlabelled query is a validation or test query of the run; give queries "
                              f"the run neither chose on nor is scored on (chat logs, say)")
    return texts, left_out


CHECKPOINT = Path("checkpoints") / "distill.pt"  # in the student's run folder, until the student is saved


def resume_note(output: str | Path) -> str:
    """What a stop left in ``output``, and how to go on."""
    if (Path(output) / CHECKPOINT).is_file():
        return (f"checkpoint saved in {Path(output) / CHECKPOINT}; continue with the same command and --resume "
                f"(in Python: distill(..., resume=True))")
    return f"{output} holds no student and no checkpoint yet; run the same command with --overwrite to start again"


def distill(run: str | Path, output: str | Path, overwrite: bool = False, resume: bool = False, progress: bool = True,
            **options) -> dict:
    """Distil the model of ``run`` (a run folder, or its model folder) into a student with
    ``options["layers"]`` encoder layers (``DistillConfig`` has the options), saved as the run folder
    ``output`` (refused if it holds something, unless ``overwrite``, as training does, or ``resume``:
    continue from its checkpoint, or if another run is writing into it now); returns its metrics.json content."""
    unknown = sorted(set(options) - {f.name for f in fields(DistillConfig)})
    if unknown:
        raise ConfigError(f"unknown distill option(s) {unknown_names(unknown, [f.name for f in fields(DistillConfig)])}")
    opts = DistillConfig(**options)
    if resume and overwrite:
        raise ConfigError("--resume continues the student in --output and --overwrite starts it again: give one of them")
    if resume and (Path(output) / "metrics.json").is_file():
        log.info("%s: the student is trained already (metrics.json there); nothing to resume", output)
        return json.loads((Path(output) / "metrics.json").read_text())
    try:
        with output_lock(output):
            return _distill(run, Path(output), opts, overwrite, resume, progress)
    except KeyboardInterrupt as exc:  # a TrainingInterrupted of the training loop too
        raise TrainingInterrupted(f"{str(exc) or 'interrupted'}: {resume_note(output)}") from None


def _read_checkpoint(out: Path, recorded: dict) -> dict:
    """The checkpoint ``resume`` continues from, refused where it was made with other options."""
    if not (out / CHECKPOINT).is_file():
        raise ConfigError(f"{out}: no student to resume (no {CHECKPOINT}: stopped before its first training step, or never "
                          f"started there); run the same command with --overwrite instead of --resume")
    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    changed = differences(state["options"], recorded)
    if changed:
        raise ConfigError(f"{out}: --resume continues the student its checkpoint records, and options differ from it "
                          f"({changed}); give the same options, or --overwrite to start again with these")
    return state


def _distill(run: str | Path, out: Path, opts: DistillConfig, overwrite: bool, resume: bool, progress: bool) -> dict:
    source, teacher_spec = teacher_folder(run)
    config = run_config_file(run)
    if config is None:
        raise ConfigError(f"{run}: no config.yaml beside the model records its training data; give the run folder "
                          f"`bankintent train` wrote")
    if out.resolve() in (source.resolve(), *source.resolve().parents):
        raise ConfigError(f"{out}: the output folder must not hold the teacher ({source}); choose another --output")
    # the student's layers chosen before the data is read: the teacher's depth from its spec or its base model's config
    depth = len(teacher_spec.layers) if teacher_spec.layers else AutoConfig.from_pretrained(
        resolve_base_model(teacher_spec.base_model)).num_hidden_layers
    kept = student_layers(depth, opts.layers)
    saved = TrainConfig(**read_yaml(config))
    # the teacher's data and split options (config.yaml of the output), this run's seed and folder
    cfg = dataclasses.replace(saved, output=str(out), overwrite=overwrite, resume=False, seed=opts.seed,
                              shots_seed=saved.draw_seed if saved.shots else saved.shots_seed)
    absolute = lambda path: str(Path(path).expanduser().resolve())  # noqa: E731 (the same files named from another folder)
    recorded = {**dataclasses.asdict(opts), "teacher": absolute(source), "teachers": [absolute(t) for t in opts.teachers or []],
                "unlabelled": absolute(opts.unlabelled) if opts.unlabelled else None}  # what a checkpoint must have been made with
    resumed = _read_checkpoint(out, recorded) if resume else None

    created = _prepare_output(out, dataclasses.replace(cfg, resume=resume))
    try:  # what can refuse the run is checked before the output folder changes
        teacher, teacher_spec = load_model(source, allow_pickle=cfg.allow_pickle)
        num_layers(teacher)  # a model whose layers cannot be kept apart (ALBERT's are one shared layer) refused before the data is read
        set_seed(opts.seed)
        splits = run_splits(cfg)
        check_trained_intents(source, teacher_spec.labels, splits)
        extra_texts, held_out = (held_out_removed(read_queries(opts.unlabelled, cfg.text_column)[1], splits, opts.unlabelled)
                                 if opts.unlabelled else ([], {}))
        others = [ensemble_member(other, teacher_spec) for other in opts.teachers or []]
    except BaseException:
        _remove_created(created)
        raise
    if overwrite:
        _empty_run_folder(out)
    saved_config(cfg).save(out / "config.yaml", comment=(
        f"The training options of the teacher, {source.resolve()}: the data and split options that `bankintent evaluate`\n"
        f"and `export` read. This folder holds a distilled student (`bankintent distill`), not a model trained with them:\n"
        f"metrics.json (method: distill) and adapter/README.md give the student's own options and command."))

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(teacher_spec.base_model)
    spec = dataclasses.replace(teacher_spec, method="distill", lora=False, temperature=1.0, oos_score=None, oos_thresholds={},
                               oos_choice={}, ood={}, layers=[teacher_spec.layers[i] for i in kept] if teacher_spec.layers else kept)
    preprocess_splits(splits, spec.preprocessing)
    augmented = augment(splits.train.texts, splits.train.labels, set(splits.labels), opts.seed, opts.augment_copies)[0]
    texts = splits.train.texts + augmented + [preprocess(t, spec.preprocessing) for t in extra_texts]
    labels = torch.tensor(splits.ids(splits.train) + [UNLABELLED] * (len(texts) - len(splits.train)))
    log.info("distilling %d teacher layers into %d (kept_layers %s, counted from 0): %d training queries, %d perturbed copies, "
             "%d unlabelled", depth, len(kept), kept, len(splits.train), len(augmented), len(extra_texts))

    started = time.perf_counter()
    teacher.to(device)
    if resumed is not None:  # the logits the checkpoint keeps, of the same queries
        if len(resumed["targets"]) != len(texts):
            raise ModelError(f"{out}: the checkpoint was made on {len(resumed['targets'])} queries and the teacher's data now gives "
                             f"{len(texts)}; was the data changed? Start again with --overwrite")
        targets = resumed["targets"]
    else:
        targets = logits_of(teacher, tokenizer, texts, spec.max_length, desc="distill: teacher logits" if progress else None)
        for number, other in enumerate(others, start=2):  # an ensemble: the mean of every teacher's logits
            member = load_model(other, allow_pickle=cfg.allow_pickle)[0].to(device)
            targets += logits_of(member, tokenizer, texts, spec.max_length, desc=f"distill: teacher {number} logits" if progress else None)
            del member
        targets /= 1 + len(others)
    student = keep_layers(copy.deepcopy(teacher), kept).requires_grad_(True)
    del teacher
    validation = (splits.validation.texts, torch.tensor(splits.ids(splits.validation)))
    set_seed(opts.seed)  # the student's dropout, whatever loading the teachers drew from the generator
    checkpoint = Checkpoint(out / CHECKPOINT, recorded, targets, (resumed or {}).get("elapsed", 0.0) - started)
    history, best_epoch, steps = train_student(student, tokenizer, texts, labels, targets, validation, spec.max_length, opts,
                                               saved.weight_decay, saved.warmup_ratio, progress, checkpoint, resumed)
    train_seconds = checkpoint.elapsed()

    extra: dict = {}
    scores = save_and_score(student, tokenizer, spec, splits, cfg, history, extra)
    teacher_metrics = json.loads((config.parent / "metrics.json").read_text()) if (config.parent / "metrics.json").is_file() else {}
    metrics = run_metrics(spec, scores, splits, train_seconds, best_epoch, len(history), opts.seed, {
        "augmented_size": len(augmented),
        "unlabelled_size": len(extra_texts),
        "unlabelled_left_out": held_out,  # validation and test queries found among them, not trained on
        "distill_queries": len(texts),
        "teacher": str(Path(run).resolve()),  # as typed (a run folder, or its model folder): the command to rerun
        "teacher_method": teacher_spec.method,
        "ensemble_teachers": [str(Path(other).resolve()) for other in opts.teachers or []],
        "teacher_layers": depth,
        "layers": len(kept),
        "kept_layers": kept,
        "base_model_layers": spec.layers,
        "teacher_val_accuracy": teacher_metrics.get("val_accuracy"),
        "teacher_test_accuracy": teacher_metrics.get("test_accuracy"),
        "teacher_total_params": teacher_metrics.get("total_params"),
        "distill_epochs": opts.epochs,
        "distill_temperature": opts.temperature,
        "distill_alpha": opts.alpha,
        "augment_copies": opts.augment_copies,
        "unlabelled_file": str(Path(opts.unlabelled).expanduser().resolve()) if opts.unlabelled else None,
        "peak_lr": opts.learning_rate,
        "batch_size": opts.batch_size,
        "optimizer_steps": steps,
        **extra,
    })
    write_json(out / "metrics.json", metrics)
    write_model_card(out / MODEL_DIR, saved_config(cfg), metrics)  # paths as config.yaml records them
    shutil.rmtree(out / CHECKPOINT.parent, ignore_errors=True)
    return metrics


@dataclasses.dataclass
class Checkpoint:
    """Where the student's training state is saved, with what it needs besides the loop's own state:
    the options it was made with, the teacher's logits and the training seconds (``offset`` plus the
    clock: the seconds spent before a resume, less the clock's start)."""

    path: Path
    options: dict
    targets: torch.Tensor
    offset: float

    def elapsed(self) -> float:
        return self.offset + time.perf_counter()

    def save(self, **state) -> None:
        """Written beside and renamed over the last one, so that a stop while writing leaves that one whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save({"options": self.options, "targets": self.targets, "elapsed": self.elapsed(), **state}, partial)
        os.replace(partial, self.path)


def train_student(student: nn.Module, tokenizer, texts: list[str], labels: torch.Tensor, targets: torch.Tensor,
                  validation: tuple[list[str], torch.Tensor], max_length: int, opts: DistillConfig, weight_decay: float,
                  warmup_ratio: float, progress: bool, checkpoint: Checkpoint | None = None,
                  resumed: dict | None = None) -> tuple[list[dict], int, int]:
    """AdamW with a linear warm-up and decay over every epoch; after each epoch the accuracy on the
    ``validation`` (texts, label ids), and at the end the weights of the best epoch (the last without
    validation queries) are put back. Returns (history rows, the epoch kept, optimizer steps).
    With a ``checkpoint``, the state is saved there after every epoch and at a stop (after the step
    in progress; then ``TrainingInterrupted``); ``resumed``, a saved state, is continued."""
    device = next(student.parameters()).device
    decay = [p for p in student.parameters() if p.dim() >= 2]  # no weight decay on biases and layer norms
    rest = [p for p in student.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                                  lr=opts.learning_rate)
    per_epoch = math.ceil(len(texts) / opts.batch_size)
    steps = opts.epochs * per_epoch
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * steps), steps)
    generator = torch.Generator().manual_seed(opts.seed)
    val_texts, val_labels = validation
    history, best, best_state, first_epoch, done, losses = [], None, None, 1, 0, []
    if resumed is not None:
        student.load_state_dict(resumed["student"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["generator"])
        torch.set_rng_state(resumed["rng"])
        history, best, best_state = resumed["history"], resumed["best"], resumed["best_state"]
        first_epoch, done, losses = resumed["epoch"], resumed["done"], resumed["losses"]
        log.info("resuming the student at step %d of %d", (first_epoch - 1) * per_epoch + done, steps)

    def save(epoch: int, done: int, generator_state: torch.Tensor) -> None:
        if checkpoint is not None:
            checkpoint.save(student=student.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            generator=generator_state, rng=torch.get_rng_state(), history=history, best=best, best_state=best_state,
                            epoch=epoch, done=done, losses=losses)

    bar = tqdm(total=steps, initial=(first_epoch - 1) * per_epoch + done, desc="distill", unit="step", disable=not progress)
    with StopRequest() as stop, bar:  # the bar closed, its line ended, before a stop is said
        for epoch in range(first_epoch, opts.epochs + 1):
            student.train()
            at_start = generator.get_state()  # to draw this epoch's order again on resume
            batches = torch.randperm(len(texts), generator=generator).split(opts.batch_size)
            for batch_ids in batches[done:]:
                batch = tokenizer([texts[i] for i in batch_ids], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt")
                logits = student(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
                loss = distillation_loss(logits, targets[batch_ids].to(device), labels[batch_ids].to(device), opts.temperature,
                                         opts.alpha)
                loss.backward()
                nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                done += 1
                bar.update()
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
                if stop.interrupted and done < len(batches):
                    save(epoch, done, at_start)
                    raise TrainingInterrupted(f"interrupted at step {(epoch - 1) * per_epoch + done} of {steps}")
            row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "val_loss": None, "val_accuracy": None}
            if val_texts:
                val_logits = logits_of(student, tokenizer, val_texts, max_length)
                row.update(val_loss=nn.functional.cross_entropy(val_logits, val_labels).item(),
                           val_accuracy=(val_logits.argmax(-1) == val_labels).float().mean().item())
                if best is None or row["val_accuracy"] > best["val_accuracy"]:
                    best, best_state = row, {k: v.detach().clone() for k, v in student.state_dict().items()}
                log.info("epoch %d: validation accuracy %.4f", epoch, row["val_accuracy"])
            history.append(row)
            done, losses = 0, []
            save(epoch + 1, 0, generator.get_state())
            if stop.interrupted and epoch < opts.epochs:
                raise TrainingInterrupted(f"interrupted after epoch {epoch} of {opts.epochs}")
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    return history, best["epoch"] if best else opts.epochs, steps
