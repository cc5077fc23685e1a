"""Sweeps: a YAML list of training runs -> ``results.csv`` (one row per run and seed) and
``results.md`` (the method, hyperparameter and improvement tables, mean ± std over seeds).

A sweep file::

    base:                      # TrainConfig options shared by every run
      data: banking77
    runs:                      # run in this order; all seeds of a run before the next
      - name: lpft
        tables: [methods]      # methods | grid (validation only) | hyperparameters | improvements
        seeds: 3               # seeds base.seed, base.seed + 1, ... (default 1; --seeds overrides)
        options: {method: lpft}
      - name: lpft+normalize-entities
        tables: [improvements]
        baseline: lpft         # improvements: the row it is measured against
        options: {method: lpft, normalize_entities: true}

Each run is the command ``bankintent train ... --output DIR/runs/NAME/seed-S``, started as a child
process and recorded verbatim in ``results.csv``. A run whose ``metrics.json`` exists is skipped,
so a stopped sweep started again continues where it stopped; a run stopped mid-training continues
from its last checkpoint (``--resume``). A run trained (or started) with other options than the sweep
file now gives is refused rather than skipped: the tables would show the new options beside the
old run's results.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm import tqdm

from bankintent.config import (FIELD_NAMES, LORA_METHODS, TrainConfig, check_output_folder, differences, load_yaml_file, read_yaml, recorded_path,
                               resolve_config, unknown_names)
from bankintent.data import BANKING77, run_splits
from bankintent.errors import ConfigError, DataError
from bankintent.launch import start_child, stop_children
from bankintent.results import aggregate_runs, write_results_tables

log = logging.getLogger(__name__)

TABLES = ("methods", "grid", "hyperparameters", "improvements")
RUN_KEYS = {"name", "tables", "seeds", "options", "baseline", "note"}
SWEEP_KEYS = {"base", "runs"}  # a sweep file's top level


@dataclass
class RunSpec:
    name: str
    options: dict[str, Any]
    seeds: list[int]
    config: TrainConfig  # the options resolved, as read_sweep checked them (seed aside)
    tables: list[str] = field(default_factory=lambda: ["methods"])
    baseline: str | None = None
    note: str = ""


def _check_options(path: Path, where: str, options: Any) -> dict:
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping of option: value")
    unknown = sorted(set(options) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"{path}: {where}: unknown option(s) {unknown_names(unknown, FIELD_NAMES)}")
    if "output" in options or "seed" in options and where != "base":
        raise ConfigError(f"{path}: {where}: 'output' and 'seed' are set by the sweep")
    return options


def _whole(path: Path, where: str, value) -> int:
    """A whole number of the sweep file (a seed, a count of seeds), or one line naming where it is not."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: {where} must be a whole number, got {value!r}")
    return value


def read_sweep(path: str | Path, seeds: int | None = None, files: bool = True) -> tuple[dict, list[RunSpec]]:
    """The sweep file's shared options and its runs, validated (every run's config is resolved once).
    ``files``: check that the data and out-of-scope files are there, as a sweep about to train needs;
    reading a finished sweep's results (the report) does not, from whatever folder it is run."""
    path = Path(path)
    content = load_yaml_file(path, "sweep file")
    if isinstance(content, dict) and set(content) - SWEEP_KEYS:  # a mistyped 'base:' would train every run on the defaults
        unknown = sorted(map(str, set(content) - SWEEP_KEYS))
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown_names(unknown, sorted(SWEEP_KEYS))}: a sweep file holds "
                          f"'base:' (options every run shares) and 'runs:' (each run's name, options and seeds)")
    if not isinstance(content, dict) or not isinstance(content.get("runs"), list) or not content["runs"]:
        raise ConfigError(f"{path}: expected 'runs:', a list of runs")
    base = dict(_check_options(path, "base", content.get("base") or {}))  # a copy: the sweep file is saved as read
    first_seed = _whole(path, "base: seed", base.pop("seed", TrainConfig.seed))
    runs: list[RunSpec] = []
    for number, entry in enumerate(content["runs"], start=1):
        where = f"run {number}"
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ConfigError(f"{path}: {where}: expected a mapping with a 'name'")
        unknown = sorted(set(entry) - RUN_KEYS)
        if unknown:
            raise ConfigError(f"{path}: {where}: unknown key(s) {unknown_names(unknown, sorted(RUN_KEYS))}")
        options = {**base, **_check_options(path, where, entry.get("options") or {})}
        tables = entry.get("tables", ["methods"])
        if not set(tables) <= set(TABLES):
            raise ConfigError(f"{path}: {where}: tables must be among {', '.join(TABLES)}")
        count = seeds or _whole(path, f"{where}: seeds", entry.get("seeds", 1))
        if count < 1:
            raise ConfigError(f"{path}: {where}: seeds must be at least 1")
        try:
            cfg = resolve_config(None, **options)  # fail now, not an hour into the sweep
        except ConfigError as exc:
            raise ConfigError(f"{path}: {where} ({entry['name']}): {exc}") from None
        for option, value in (("data", None if cfg.data == BANKING77 else cfg.data), ("oos_file", cfg.oos_file)):
            if files and value and not Path(value).expanduser().exists():
                raise ConfigError(f"{path}: {where}: {option} {value}: not found (a relative path is read from the folder the "
                                  f"sweep is started in, {Path.cwd()})")
        runs.append(RunSpec(str(entry["name"]), options, [first_seed + i for i in range(count)], cfg, list(tables),
                            entry.get("baseline"), str(entry.get("note", ""))))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique")
    for run in runs:
        if run.baseline is not None and run.baseline not in names:
            raise ConfigError(f"{path}: run {run.name!r}: baseline {run.baseline!r} is not a run of this sweep")
    return content, runs


def run_folder(out: Path, name: str, seed: int) -> Path:
    """``DIR/runs/<name as a file name>/seed-S``."""
    slug = re.sub(r"(?:[^A-Za-z0-9.=+-]|(?<![A-Za-z0-9])-)+", "_", name).strip("_")
    return out / "runs" / slug / f"seed-{seed}"


def train_command(options: dict[str, Any], seed: int, output: Path) -> list[str]:
    """``bankintent train`` flags for these options (the CLI's flags are the TrainConfig field names)."""
    args = ["bankintent", "train"]
    for key, value in {**options, "seed": seed, "output": str(output)}.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        elif isinstance(value, list):
            args += [flag, ",".join(map(str, value))]
        elif value is not None:
            args += [flag, str(value)]
    return args


def start_run(command: list[str], run_dir: Path, resume: bool = False) -> subprocess.Popen:
    """Start ``command`` (``bankintent train ...``) as a child process and record it in
    ``run_dir/command.txt``; everything the child writes (log lines, progress bars at a frame every few
    seconds, its error) goes to ``run_dir/train.log``, where the sweep's progress bar names the run.
    The run folder is the sweep's: a run started afresh replaces what an earlier, unfinished attempt
    left there (``--overwrite``, which keeps command.txt and train.log); otherwise it continues from
    its checkpoint (``--resume``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "command.txt").write_text(shlex.join(command) + "\n", encoding="utf-8")
    with open(run_dir / "train.log", "a", encoding="utf-8") as log_file:
        return start_child([sys.executable, "-m", "bankintent.cli", *command[1:], "--resume" if resume else "--overwrite"],
                           stdout=log_file, stderr=subprocess.STDOUT)


def failure(run_dir: Path) -> str:
    """The error line a failed run's ``train.log`` ends with (the command line's ``error: ...``), or a
    pointer to the log."""
    lines = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace").splitlines() if (run_dir / "train.log").is_file() else []
    error = next((line for line in reversed(lines) if line.startswith("error: ")), None)
    return f"{error[len('error: '):]} ({run_dir}/train.log)" if error else f"see {run_dir}/train.log"


def _flags(command: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of a ``bankintent train`` command (a switch: ""), without ``--output``."""
    flags, key = {}, None
    for token in command[2:]:
        if token.startswith("--"):
            key = token
            flags[key] = ""
        elif key is not None:
            flags[key], key = token, None
    flags.pop("--output", None)
    return flags


# flags naming a file or a folder, and the config.yaml keys where training records them as absolute paths
PATH_FLAGS = {"--data": "data", "--oos-file": "oos_file", "--base-model": "base_model"}


def changed_options(run_dir: Path, command: list[str]) -> str | None:
    """How the options of the run in ``run_dir`` (finished, or stopped with a checkpoint), as its
    ``command.txt`` records them, differ from ``command``'s; None if they do not (or nothing ran).
    Paths are compared as training records them (absolute, in the run's config.yaml): the same data
    named from another folder (``../data`` there, ``data`` here) is the same option."""
    recorded = run_dir / "command.txt"
    if not recorded.is_file() or not ((run_dir / "metrics.json").is_file() or (run_dir / "checkpoints").is_dir()):
        return None
    was, now = _flags(shlex.split(recorded.read_text(encoding="utf-8"))), _flags(command)
    saved = read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    for flag, key in PATH_FLAGS.items():
        if flag in was and saved.get(key):
            was[flag] = str(saved[key])
        if flag in now:
            now[flag] = recorded_path(key, now[flag])
    return differences(was, now)


def check_data(config: str | Path, runs: list[tuple[RunSpec, int]]) -> None:
    """Read the data of every run to train, each distinct read once, before the first run starts: a bad
    row (a test label no intent has, say) stops the sweep with the run's name, where each run would
    otherwise fail on it in turn, after loading its model."""
    checked = set()
    for run, seed in runs:
        cfg = replace(run.config, seed=seed)
        read = (cfg.data, cfg.text_column, cfg.label_column, cfg.val_fraction, cfg.split_seed, cfg.max_train_samples,
                cfg.strict_data, cfg.oos_label, cfg.oos_file, cfg.shots, cfg.draw_seed if cfg.shots else None)
        if read in checked:
            continue
        checked.add(read)
        try:
            run_splits(cfg, notes=False)
        except (DataError, ConfigError) as exc:
            raise type(exc)(f"{config}: run {run.name!r} seed {seed}: {exc}") from None


def run_sweep(config: str | Path, output: str | Path, seeds: int | None = None, jobs: int = 1,
              train: bool = True) -> pd.DataFrame:
    """Run every run of the sweep file not yet finished, ``jobs`` at a time (more than one pays on a GPU,
    where one small model's training leaves most of the device idle), then write ``results.csv`` and
    ``results.md``. ``train`` False only writes them, from the runs already finished (say, runs trained
    on another machine and copied into ``output``)."""
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    content, runs = read_sweep(config, seeds)
    out = Path(output)
    check_output_folder(out)
    sweep_command = shlex.join(["bankintent", "sweep", "--config", str(config), "--output", str(out)]
                               + (["--seeds", str(seeds)] if seeds else []))
    planned = [(run, seed) for run in runs for seed in run.seeds]
    for run, seed in planned:
        run_dir = run_folder(out, run.name, seed)
        changed = changed_options(run_dir, train_command(run.options, seed, run_dir))
        if changed and train:
            raise ConfigError(f"{run_dir}: was trained with other options than the sweep file now gives ({changed}); write the "
                              f"sweep to another --output, or remove that run's folder to train it again")
        if changed:  # --no-train: tables of runs made elsewhere, as they are
            log.warning("%s: trained with other options than the sweep file gives (%s); its row shows the sweep file's", run_dir, changed)
    todo = [(run, seed) for run, seed in planned if train and not (run_folder(out, run.name, seed) / "metrics.json").is_file()]
    if train and len(todo) < len(planned):
        log.info("%d of %d runs finished already in %s: kept, not trained again", len(planned) - len(todo), len(planned), out)
    check_data(config, todo)
    out.mkdir(parents=True, exist_ok=True)  # the sweep file saved once nothing refuses it: the report reads the runs with it
    if seeds:  # the seeds run, which the report reads the runs by: --seeds in place of each run's
        content = {**content, "runs": [{**entry, "seeds": seeds} for entry in content["runs"]]}
    (out / "sweep.yaml").write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    failed: list[str] = []
    running: dict[subprocess.Popen, tuple[RunSpec, int]] = {}
    try:  # Ctrl-C or SIGTERM: the runs in training stop at a checkpoint (stop_children), which the next start continues
        with tqdm(total=len(planned), initial=len(planned) - len(todo), desc="sweep", unit="run") as progress:
            while todo or running:
                while todo and len(running) < jobs:
                    run, seed = todo.pop(0)
                    run_dir = run_folder(out, run.name, seed)
                    resume = (run_dir / "checkpoints").is_dir()  # stopped mid-training: continue from its checkpoint
                    running[start_run(train_command(run.options, seed, run_dir), run_dir, resume)] = (run, seed)
                # refresh=False: the bar's own interval (5 s in a log, progress.configure) decides when a frame is written
                progress.set_postfix_str(", ".join(f"{run.name} seed {seed}" for run, seed in running.values()), refresh=False)
                done = next((child for child in running if child.poll() is not None), None)
                if done is None:
                    time.sleep(1)
                    continue
                run, seed = running.pop(done)
                if done.returncode != 0:
                    run_dir = run_folder(out, run.name, seed)
                    failed.append(f"{run.name} seed {seed}: {failure(run_dir)}")
                    log.error("run %s seed %d failed: %s", run.name, seed, failure(run_dir))
                progress.update()
                write_results(out, runs, sweep_command)
    except KeyboardInterrupt:
        stop_children(running)
        kept = sum((run_folder(out, run.name, seed) / "checkpoints").is_dir() for run, seed in running.values())
        stopped = f"{len(running)} run(s) in training stopped, {kept} of them with a checkpoint (the others start again)"
        raise KeyboardInterrupt(f"interrupted: {stopped}; continue with: {sweep_command}") from None
    results = write_results(out, runs, sweep_command)
    if failed:
        raise ConfigError(f"{len(failed)} run(s) failed: {'; '.join(failed)}; start the sweep again to retry them")
    return results


def collect(out: Path, runs: list[RunSpec]) -> pd.DataFrame:
    """One row per finished run and seed: its metrics.json, its options and the exact command. The
    learning rate and epochs are left empty for a linear probe, which has neither, and the LoRA rank
    and alpha for a method without LoRA: a table would show settings that were never used."""
    rows = []
    for run in runs:
        for seed in run.seeds:
            run_dir = run_folder(out, run.name, seed)
            if not (run_dir / "metrics.json").is_file():
                continue
            metrics = json.loads((run_dir / "metrics.json").read_text())
            cfg = resolve_config(None, **run.options)
            method = metrics.get("method", cfg.method)  # auto resolved to what trained
            steps, lora = method != "linear-probe", method in LORA_METHODS
            rows.append({
                "name": run.name, "tables": ",".join(run.tables), "baseline": run.baseline or "", "note": run.note,
                **{k: metrics.get(k) for k in ("method", "pooling", "seed", "val_accuracy", "val_macro_f1", "test_accuracy",
                                               "test_macro_f1", "trainable_params", "total_params", "trainable_pct",
                                               "adapter_bytes", "train_seconds", "best_epoch", "epochs_run", "averaged_epochs")},
                "lr": cfg.lr if steps else None, "lora_r": cfg.lora_r if lora else None,
                "lora_alpha": cfg.lora_alpha if lora else None, "epochs": cfg.epochs if steps else None,
                "max_length": cfg.max_length, "normalize_entities": cfg.normalize_entities, "augment": cfg.augment or "",
                "shots": cfg.shots, "train_size": metrics.get("train_size"),
                "hardware": metrics.get("hardware"), "run_dir": str(run_dir.relative_to(out)),
                "options": json.dumps(run.options, sort_keys=True),
                "command": (run_dir / "command.txt").read_text(encoding="utf-8").strip() if (run_dir / "command.txt").is_file() else "",
            })
    return pd.DataFrame(rows)


def write_results(out: Path, runs: list[RunSpec], sweep_command: str) -> pd.DataFrame:
    results = collect(out, runs)
    results.to_csv(out / "results.csv", index=False, float_format="%.6g")
    planned = {run.name: len(run.seeds) for run in runs}
    write_results_tables(aggregate_runs(results), out / "results.md", sweep_command, planned)
    return results
