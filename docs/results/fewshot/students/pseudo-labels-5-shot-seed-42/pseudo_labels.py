"""The training file of this run: draw 42's 5 examples per intent plus, per intent, the 15 training queries the
5-shot model is most confident of (its predictions in pred42.csv, the drawn examples left out), labelled by it.
    python pseudo_labels.py pred42.csv d42-15   # then: ln -s ../shared/data/banking77/test.csv d42-15/test.csv"""
import os
import sys

import pandas as pd

from bankintent.data import load_splits

predictions, out = sys.argv[1:3]
drawn = load_splits("banking77", shots=5, shots_seed=42).train
shots = pd.DataFrame({"text": drawn.texts, "category": drawn.labels})
scored = pd.read_csv(predictions)
scored = scored[~scored.text.isin(set(shots.text))]
pseudo = scored.sort_values("top1_confidence", ascending=False).groupby("closest_intent").head(15)
print(f"pseudo-label precision (the true labels, never used to choose): {(pseudo.category == pseudo.closest_intent).mean():.4f}")
os.makedirs(out, exist_ok=True)
pseudo = pseudo[["text", "closest_intent"]].rename(columns={"closest_intent": "category"})
pd.concat([shots, pseudo]).to_csv(os.path.join(out, "train.csv"), index=False)
