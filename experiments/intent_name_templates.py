"""Would more than the bare intent name help few-shot training? The check behind adding one name an
intent and no templated phrasings of it (docs/results/fewshot/README.md, "Intent names as examples").

    python experiments/intent_name_templates.py --shots 5 --seed 42 --output DATA \\
        --templates "{name}" "i need help with {name}"
    bankintent train --data DATA --intent-names off --seed 42 --output RUN

Writes DATA/train.csv (the ``--shots`` draw of Banking77's training file, as ``bankintent train
--shots K --shots-seed SEED`` draws it, and one row an intent for each template, ``{name}`` being the
intent's name as words, ``text.intent_name_text``) and DATA/test.csv (the official test file).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from bankintent.data import BANKING77, data_files, load_splits
from bankintent.text import intent_name_text

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--shots", type=int, required=True)
parser.add_argument("--seed", type=int, required=True, help="the draw's seed (--shots-seed)")
parser.add_argument("--templates", nargs="+", required=True, help="phrasings of an intent's name, with {name}")
parser.add_argument("--output", type=Path, required=True)
args = parser.parse_args()
splits = load_splits(BANKING77, shots=args.shots, shots_seed=args.seed)
rows = list(zip(splits.train.texts, splits.train.labels))
rows += [(template.format(name=intent_name_text(label)), label) for label in splits.labels for template in args.templates]
args.output.mkdir(parents=True, exist_ok=True)
pd.DataFrame(rows, columns=["text", "category"]).to_csv(args.output / "train.csv", index=False)
shutil.copy(data_files(BANKING77).test, args.output / "test.csv")
print(f"{args.output / 'train.csv'}: {len(rows)} rows")
