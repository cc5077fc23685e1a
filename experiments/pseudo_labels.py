"""A training file from a few-shot model's pseudo-labels: the drawn examples (``--shots`` per intent, draw
``--seed``) plus, per intent, ``--per-intent`` of the unlabelled queries the model labelled with that intent
(its predictions: a ``bankintent predict MODEL --input QUERIES --output PRED.csv`` file), the drawn examples
left out. ``--pick surest``: the most confident; ``--pick random``: drawn at random (seed ``--seed``) among
those at least ``--min-confidence`` confident and not out of scope.

    python experiments/pseudo_labels.py PRED.csv OUT --seed 42 --pick random
    ln -s "$PWD/../shared/data/banking77/test.csv" OUT/test.csv
    bankintent train --data OUT --method contrastive --seed 42 --output RUN

Run from the repository (``banking77`` is found in ../shared). The queries' true labels, where the file has
them (``category``), only measure the pseudo-labels' precision; they never choose."""
import argparse
import os

import pandas as pd

from bankintent.data import load_splits

parser = argparse.ArgumentParser()
parser.add_argument("predictions")
parser.add_argument("out")
parser.add_argument("--shots", type=int, default=5)
parser.add_argument("--seed", type=int, default=42)
parser.add_argument("--per-intent", type=int, default=15)
parser.add_argument("--pick", choices=["surest", "random"], default="surest")
parser.add_argument("--min-confidence", type=float, default=0.8)
args = parser.parse_args()

drawn = load_splits("banking77", shots=args.shots, shots_seed=args.seed).train
shots = pd.DataFrame({"text": drawn.texts, "category": drawn.labels})
scored = pd.read_csv(args.predictions)
scored = scored[~scored.text.isin(set(shots.text))]
if args.pick == "surest":
    pseudo = scored.sort_values("top1_confidence", ascending=False).groupby("closest_intent").head(args.per_intent)
else:
    scored = scored[(scored.top1_confidence >= args.min_confidence) & ~scored.out_of_scope]
    pseudo = pd.concat([g.sample(min(args.per_intent, len(g)), random_state=args.seed) for _, g in scored.groupby("closest_intent")])
if "category" in pseudo:
    print(f"{len(pseudo)} pseudo-labels, {(pseudo.category == pseudo.closest_intent).mean():.4f} of them right")
os.makedirs(args.out, exist_ok=True)
pseudo = pseudo[["text", "closest_intent"]].rename(columns={"closest_intent": "category"})
pd.concat([shots, pseudo]).to_csv(os.path.join(args.out, "train.csv"), index=False)
