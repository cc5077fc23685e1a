"""A few-shot Banking77 data folder for the open world: ``--known`` intents (seeded) with ``--shots``
training queries each, and ``--oos-per-intent`` training queries of each other intent labelled
``out_of_scope`` (the out-of-scope examples a team writes); the test file's queries of those other
intents are labelled ``out_of_scope`` too, so ``bankintent evaluate`` measures in-scope coverage and
the fallback's recall of banking requests no intent covers, score by score:

    python experiments/fewshot_held_out_intents.py OUT --seed 7
    bankintent train --data OUT --seed 42 --output RUN
    bankintent evaluate RUN --oos-score knn+msp+rmd --output RUN/eval-knn+msp+rmd

Run from the repository (``banking77`` is found in ../shared)."""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bankintent.data import data_files

parser = argparse.ArgumentParser()
parser.add_argument("output", type=Path)
parser.add_argument("--known", type=int, default=51, help="intents the model learns (the others are out of scope)")
parser.add_argument("--shots", type=int, default=5, help="training queries per known intent")
parser.add_argument("--oos-per-intent", type=int, default=2, help="training queries of each other intent, as out-of-scope examples")
parser.add_argument("--seed", type=int, default=7, help="which intents are known")
args = parser.parse_args()

files = data_files("banking77")
train, test = pd.read_csv(files.train), pd.read_csv(files.test)
intents = sorted(train.category.unique())
np.random.default_rng(args.seed).shuffle(intents)
known, others = intents[:args.known], intents[args.known:]
rows = [train[train.category == i].sample(args.shots, random_state=1) for i in known]
rows += [train[train.category == i].sample(args.oos_per_intent, random_state=1).assign(category="out_of_scope") for i in others]
test.loc[test.category.isin(others), "category"] = "out_of_scope"
args.output.mkdir(parents=True, exist_ok=True)
pd.concat(rows).to_csv(args.output / "train.csv", index=False)
test.to_csv(args.output / "test.csv", index=False)
print(f"{args.output}: {len(known)} intents x {args.shots} and {len(others) * args.oos_per_intent} out-of-scope examples; "
      f"test: {int((test.category != 'out_of_scope').sum())} in scope, {int((test.category == 'out_of_scope').sum())} out of scope")
