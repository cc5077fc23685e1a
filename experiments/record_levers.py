"""Issue 14's levers for the accuracy record in one go, for a lent GPU: the runs of
configs/sweep_record.yaml, and, as soon as their teachers finish, students distilled from them
(``bankintent distill RUN --layers 6``: born-again students of single runs, with ``--generations 2`` the
born-again students of those, a student of each seed's ensemble of every method, and with ``--seed-ensembles``
a student of each run's ensemble of all its seeds). Several processes at once: one small model leaves a GPU mostly idle.

    python experiments/record_levers.py --output OUT [--jobs 16] [--deadline 540] [--base-model DIR]

The sweep's runs go to OUT/runs/NAME/seed-S (``bankintent sweep --config configs/sweep_record.yaml
--output OUT --no-train`` then writes its tables), the students to OUT/students/NAME/seed-S. At
``--deadline`` seconds the processes still running are stopped (SIGINT: they save a checkpoint) and
the driver returns; a student starts only while ``--student-time`` seconds are left before it.
``--summary`` trains nothing: it writes OUT/students.md, the students' table (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import statistics
import subprocess
import time
from pathlib import Path

from bankintent.sweep import read_sweep, run_folder, start_run, train_command

# the runs that get a born-again student each, and whose seeds' ensembles get one each
TEACHERS = ["lpft", "lpft --rdrop 1.0", "lpft-full lr=5e-5", "lpft-full lr=1e-4"]


def distill_command(teachers: list[Path], seed: int, output: Path, epochs: int, layers: int) -> list[str]:
    command = ["bankintent", "distill", str(teachers[0]), "--layers", str(layers), "--epochs", str(epochs), "--seed", str(seed),
               "--output", str(output)]
    return command + (["--teachers", ",".join(map(str, teachers[1:]))] if teachers[1:] else [])


def student_folder(out: Path, name: str, seed: int) -> Path:
    return out / "students" / run_folder(Path(), name, seed).relative_to("runs")


def summary(out: Path) -> str:
    """The students' validation and test accuracy, mean ± std over seeds and each seed's, as markdown."""
    rows = ["| student | seeds | validation | test | each seed: validation / test |", "|---|--:|--:|--:|---|"]
    for folder in sorted((out / "students").iterdir()):
        runs = [json.loads(m.read_text()) for m in sorted(folder.glob("seed-*/metrics.json"))]
        if not runs:
            continue
        val, test = ([100 * r[key] for r in runs] for key in ("val_accuracy", "test_accuracy"))
        spread = lambda xs: f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.2f}%"  # noqa: E731
        each = ", ".join(f"{r['seed']}: {v:.2f} / {t:.2f}" for r, v, t in zip(runs, val, test))
        rows.append(f"| {folder.name} | {len(runs)} | {spread(val)} | {spread(test)} | {each} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--config", default="configs/sweep_record.yaml")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds after which running processes are stopped")
    parser.add_argument("--student-time", type=float, default=150.0, help="a student starts only with this many seconds left")
    parser.add_argument("--student-epochs", type=int, default=3)
    parser.add_argument("--student-layers", type=int, default=6, help="the base model's depth: born-again students")
    parser.add_argument("--base-model", default=None, help="replaces the sweep's base model (a local folder on an offline machine)")
    parser.add_argument("--born-again", nargs="*", default=TEACHERS, help="runs of the sweep file that get a student each")
    parser.add_argument("--ensemble", nargs="*", default=TEACHERS, help="runs whose seeds' ensembles get a student each")
    parser.add_argument("--generations", type=int, default=1, help="2: each born-again student gets a born-again student")
    parser.add_argument("--seed-ensembles", nargs="*", default=[],
                        help="runs whose seeds are distilled together: seed S's student starts from seed S and matches all seeds")
    parser.add_argument("--only", nargs="*", default=None, help="train only these runs of the sweep file (default: all)")
    parser.add_argument("--extra", default="", help="more `bankintent train` flags for every run (tiny dry runs)")
    parser.add_argument("--summary", action="store_true", help="train nothing: write OUT/students.md")
    args = parser.parse_args()
    if args.summary:
        (args.output / "students.md").write_text(summary(args.output))
        print((args.output / "students.md").read_text())
        return

    _, runs = read_sweep(args.config)
    runs = [run for run in runs if args.only is None or run.name in args.only]
    if args.base_model:
        for run in runs:
            run.options["base_model"] = args.base_model
    started = time.monotonic()
    left = lambda: args.deadline - (time.monotonic() - started)  # noqa: E731
    teachers = {(run.name, seed): run_folder(args.output, run.name, seed) for run in runs for seed in run.seeds}
    queue = [("train", run.name, seed, train_command(run.options, seed, teachers[run.name, seed]) + shlex.split(args.extra))
             for run in runs for seed in run.seeds]
    students: list[tuple[str, int, list[Path]]] = [("born-again " + name, seed, [teachers[name, seed]])
                                                   for name in args.born_again for run in runs if run.name == name for seed in run.seeds]
    generation = lambda g, name: ("born-again " if g == 1 else f"born-again{g} ") + name  # noqa: E731
    students += [(generation(g, name), seed, [student_folder(args.output, generation(g - 1, name), seed)])
                 for g in range(2, args.generations + 1) for name in args.born_again for run in runs if run.name == name
                 for seed in run.seeds]  # each born-again student's own born-again student, and so on
    students += [(f"seed-ensemble {name}", seed, [teachers[name, seed]] + [teachers[name, s] for s in run.seeds if s != seed])
                 for name in args.seed_ensembles for run in runs if run.name == name for seed in run.seeds]
    seeds = sorted({seed for run in runs for seed in run.seeds})
    if args.ensemble and all(any(run.name == name for run in runs) for name in args.ensemble):
        students += [("ensemble", seed, [teachers[name, seed] for name in args.ensemble]) for seed in seeds]
    running: dict[subprocess.Popen, tuple[str, Path]] = {}
    failed: set[Path] = set()
    while (queue or students or running) and left() > 0:
        for name, seed, members in list(students):  # a student is ready once all its teachers finished
            if set(members) & failed or left() <= args.student_time:
                students.remove((name, seed, members))
            elif all((m / "metrics.json").is_file() for m in members):
                folder = student_folder(args.output, name, seed)
                queue.append(("distill", name, seed, distill_command(members, seed, folder, args.student_epochs,
                                                                       args.student_layers)))
                students.remove((name, seed, members))
        while queue and len(running) < args.jobs:
            kind, name, seed, command = queue.pop(0)
            folder = Path(command[command.index("--output") + 1])
            child = start_run(command, folder)  # `bankintent train` or `distill`, logged in the folder
            running[child] = (f"{kind} {name} seed {seed}", folder)
        for child in [c for c in running if c.poll() is not None]:
            what, folder = running.pop(child)
            print(f"[{time.monotonic() - started:6.0f} s] {what}: exit {child.returncode}", flush=True)
            if child.returncode:
                failed.add(folder)
        time.sleep(1)
    for child, (what, _) in running.items():
        print(f"[{time.monotonic() - started:6.0f} s] deadline: stopping {what}", flush=True)
        child.send_signal(signal.SIGINT)
    stopped_by = time.monotonic() + 30  # one grace period for all, not 30 s each
    for child in running:
        try:
            child.wait(timeout=max(0.0, stopped_by - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    main()
