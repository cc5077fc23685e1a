"""Would the encoder's lower layers help catch banking requests no intent covers? The check behind
keeping ``knn+msp+rmd`` on the last layer's embedding only (docs/results/out_of_scope/README.md,
"Lower layers, not kept").

    python experiments/layer_knn.py WORKDIR     # WORKDIR: benchmarks/out_of_scope.py --workdir, seeds 42-44 run

Holistic sentence embeddings (Chen et al., 2022) pool every layer, not just the last: the embedding
layer's mean is close to a bag of words, where a request about a product no intent names differs
most. For each seed's trained ``lpft`` model (``run-label-SEED``) this pools the token states of the
layers in ``--layers`` (0: the embedding layer's output; 6: the last, the model's own embedding),
concatenates them, each of unit length, and adds WEIGHT times the kNN distance on that concatenation
(to 12 k-means prototypes of each intent, as ``ood.fit_knn`` fits them) to ``knn+msp+rmd``, every
part standardised on the in-scope validation queries. Printed: the recall of the held-out intents'
validation queries (what chooses) and of their test queries at 95% in-scope validation coverage, the
test coverage that threshold gives, the test recall at exactly 95% test coverage (the gain without
the coverage it spends), and the out-of-domain recall; means over the seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bankintent import ood
from bankintent.data import BANKING77, load_splits
from bankintent.predict import Predictor, check_texts, softmax
from bankintent.results import markdown_table
from bankintent.text import preprocess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from out_of_scope import COVERAGE, protocol_split, subset  # noqa: E402  (benchmarks/out_of_scope.py)

RECALLS = ["recall, held-out validation", "recall, held-out test", "coverage (test)",
           "recall, held-out test at 95% test coverage", "recall, out-of-domain"]
SETS = ("train", "val", "test", "id_oos", "id_oos_val", "ood")


def pooled_layers(predictor: Predictor, texts: list[str]) -> np.ndarray:
    """[queries, layers + 1, hidden]: each layer's token states averaged over the real tokens."""
    encoder = predictor.model.encoder  # the merged MeanPoolClassifier's transformer
    encodings = predictor.tokenizer.encode_batch([preprocess(t, predictor.spec.preprocessing) for t in check_texts(texts)])
    order = np.argsort([len(e.ids) for e in encodings], kind="stable")
    parts = []
    for start in range(0, len(order), 64):
        ids, mask = predictor.pad([encodings[i] for i in order[start : start + 64]])
        with torch.inference_mode():
            states = encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True).hidden_states
        weights = torch.from_numpy(mask).unsqueeze(-1).float()
        parts.append(torch.stack([(h * weights).sum(1) / weights.sum(1) for h in states], 1).numpy())
    return np.concatenate(parts)[np.argsort(order)]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def seed_rows(workdir: Path, seed: int, splits, layer_sets: list[tuple[int, ...]], weights: list[float]) -> list[dict]:
    intents = protocol_split(splits, 2 / 3, seed)
    known, held_out = set(intents["known"]), set(intents["held_out"])
    sets = {"train": subset(splits.train, known), "val": subset(splits.validation, known), "test": subset(splits.test, known),
            "id_oos": subset(splits.test, held_out), "id_oos_val": subset(splits.validation, held_out)}
    texts = {name: examples.texts for name, examples in sets.items()} | {"ood": ood.probe_set()}
    predictor = Predictor.load(workdir / f"run-label-{seed}", device="cpu")
    labels = np.array([predictor.labels.index(label) for label in sets["train"].labels])
    layers, probabilities = {}, {}
    for name in SETS:
        logits, features = predictor.outputs(texts[name], desc=f"seed {seed}: {name}")
        probabilities[name] = softmax(logits / predictor.spec.temperature)
        layers[name] = pooled_layers(predictor, texts[name])
        assert np.allclose(unit(layers[name][:, -1]), features, atol=1e-4), "the last layer's mean is not the model's embedding"
    last = {name: unit(layers[name][:, -1]) for name in SETS}
    stats = ood.for_scoring(ood.fit(last["train"], labels, len(predictor.labels)))
    parts = {"knn": {n: ood.knn(last[n], stats) for n in SETS}, "msp": {n: 1 - probabilities[n].max(1) for n in SETS},
             "rmd": {n: ood.relative_mahalanobis(last[n], stats) for n in SETS}}
    for chosen in layer_sets:
        joined = {n: np.concatenate([unit(layers[n][:, i]) for i in chosen], 1) for n in SETS}
        bank = ood.for_scoring(ood.fit_knn(joined["train"], labels))
        parts[chosen] = {n: ood.knn(joined[n], bank) for n in SETS}
    z = {key: {n: (s[n] - s["val"].mean()) / s["val"].std() for n in SETS} for key, s in parts.items()}
    base = {n: z["knn"][n] + ood.COMBINED_WEIGHT * z["msp"][n] + ood.RMD_WEIGHT * z["rmd"][n] for n in SETS}
    rows = []
    for chosen in [None, *layer_sets]:
        for weight in [0.0] if chosen is None else weights:
            score = base if chosen is None else {n: base[n] + weight * z[chosen][n] for n in SETS}
            threshold = ood.threshold_for_coverage(score["val"], COVERAGE)
            at_test_coverage = ood.threshold_for_coverage(score["test"], COVERAGE)
            rows.append({"layers": "knn+msp+rmd alone" if chosen is None else "+".join(map(str, chosen)), "weight": weight, "seed": seed,
                         "recall, held-out validation": (score["id_oos_val"] > threshold).mean(),
                         "recall, held-out test": (score["id_oos"] > threshold).mean(),
                         "coverage (test)": (score["test"] <= threshold).mean(),
                         "recall, held-out test at 95% test coverage": (score["id_oos"] > at_test_coverage).mean(),
                         "recall, out-of-domain": (score["ood"] > threshold).mean()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--layers", nargs="+", default=["0+3+6", "0+6", "3+6", "0+2+4+6"], help="layer sets, e.g. 0+3+6")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    args = parser.parse_args()
    splits = load_splits(BANKING77)
    layer_sets = [tuple(int(i) for i in chosen.split("+")) for chosen in args.layers]
    frame = pd.DataFrame([row for seed in args.seeds for row in seed_rows(args.workdir, seed, splits, layer_sets, args.weights)])
    rows = []
    for (layers, weight), group in frame.groupby(["layers", "weight"], sort=False):
        row = {"layers": layers, "weight": weight}
        row |= {column: f"{group[column].mean():.1%}" for column in RECALLS}
        row["validation recall per seed"] = ", ".join(f"{v:.1%}" for v in group[RECALLS[0]])
        rows.append(row)
    print(markdown_table(rows, ["layers", "weight", *RECALLS, "validation recall per seed"]))


if __name__ == "__main__":
    main()
