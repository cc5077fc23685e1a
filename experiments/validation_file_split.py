"""A Banking77 data folder with a small validation file of its own, for comparing the recipes a few-shot
run chooses between when the user gives ``valid.csv``: ``--per-intent`` queries of each intent drawn from
the training file (seed ``--seed``) become valid.csv, the rest train.csv, and the official test file
test.csv. ``--shots K`` then draws the training examples from train.csv, and valid.csv stays whole.

    python experiments/validation_file_split.py OUT --per-intent 5
    bankintent train --data OUT --shots 10 --seed 42 --method lpft --output RUN

Run from the repository (``banking77`` is found in ../shared)."""
import argparse
import shutil
from pathlib import Path

import pandas as pd

from bankintent.data import data_files

parser = argparse.ArgumentParser()
parser.add_argument("output", type=Path)
parser.add_argument("--per-intent", type=int, default=5)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

files = data_files("banking77")
train = pd.read_csv(files.train)
drawn = train.groupby("category").sample(args.per_intent, random_state=args.seed).index
args.output.mkdir(parents=True, exist_ok=True)
train.drop(drawn).to_csv(args.output / "train.csv", index=False)
train.loc[drawn].to_csv(args.output / "valid.csv", index=False)
shutil.copy(files.test, args.output / "test.csv")
print(f"{args.output}: train.csv {len(train) - len(drawn)}, valid.csv {len(drawn)}, test.csv (the official test file)")
