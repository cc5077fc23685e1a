"""A new intent with ten examples among intents of many: how well does the default command learn it,
and does repeating its training queries (``--thin-repeats``, 4 by default, against 1: never) help?
The measurement behind that default (docs/training.md, "Your own data").

    python experiments/thin_intents.py --output DIR --seeds 42 43 --repeats 1 4

For each seed: 20 Banking77 intents drawn at random, 4 of them thin (10 training queries drawn, the
others keep all theirs); 10% of each intent's queries (one of a thin intent's ten) go to
DIR/data-S/valid.csv, DIR/data-S/train.csv holds the rest, DIR/data-S/test.csv the 20 intents'
official test queries. Each data set is trained with the default command and each ``--thin-repeats R``,
``bankintent train --data DIR/data-S --seed S --thin-repeats R --output DIR/run-S-rR``, and evaluated;
DIR/results.csv and the printed table give, per run: test accuracy, the thin intents' recall (top
intent) and the share of their test queries answered with their intent by the out-of-scope fallback,
and the same for the other intents.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd

from bankintent import evaluate
from bankintent.data import BANKING77, data_files

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--output", type=Path, required=True)
parser.add_argument("--seeds", type=int, nargs="+", default=[42])
parser.add_argument("--repeats", type=int, nargs="+", default=[1, 4], help="the --thin-repeats values to compare")
parser.add_argument("--intents", type=int, default=20)
parser.add_argument("--thin", type=int, default=4)
parser.add_argument("--examples", type=int, default=10, help="training queries of a thin intent")
args = parser.parse_args()

files = data_files(BANKING77)
train, test = pd.read_csv(files.train), pd.read_csv(files.test)
rows = []
for seed in args.seeds:
    rng = random.Random(seed)
    chosen = rng.sample(sorted(train.category.unique()), args.intents)
    thin = set(chosen[: args.thin])
    data = args.output / f"data-{seed}"
    data.mkdir(parents=True, exist_ok=True)
    parts, validation = [], []
    for intent in chosen:
        own = train[train.category == intent]
        if intent in thin:
            own = own.sample(args.examples, random_state=seed)
        held = own.sample(max(1, round(0.1 * len(own))), random_state=seed)
        validation.append(held)
        parts.append(own.drop(held.index))
    pd.concat(parts).sample(frac=1, random_state=seed).to_csv(data / "train.csv", index=False)
    pd.concat(validation).to_csv(data / "valid.csv", index=False)
    test[test.category.isin(chosen)].to_csv(data / "test.csv", index=False)
    for repeat in args.repeats:
        run = args.output / f"run-{seed}-r{repeat}"
        if not (run / "metrics.json").is_file():
            subprocess.run([sys.executable, "-m", "bankintent.cli", "train", "--data", str(data), "--seed", str(seed),
                            "--thin-repeats", str(repeat), "--output", str(run), "--overwrite"], check=True)
        summary = evaluate(run, overwrite=True)
        predicted = pd.read_csv(run / "test_predictions.csv")
        for group, part in (("thin", predicted[predicted.label.isin(thin)]), ("others", predicted[~predicted.label.isin(thin)])):
            rows.append({"seed": seed, "repeat": repeat, "intents": group, "queries": len(part),
                         "recall": (part.predicted == part.label).mean(), "answered_right": (part.answer == part.label).mean(),
                         "sent_out_of_scope": part.out_of_scope.mean(), "test_accuracy": summary["accuracy"],
                         "thin_intents": ", ".join(sorted(thin))})
results = pd.DataFrame(rows)
results.to_csv(args.output / "results.csv", index=False, float_format="%.4f")
print(results.drop(columns="thin_intents").to_string(index=False, float_format=lambda v: f"{v:.4f}"))
