"""Out-of-scope detection where it is hard: the held-out-intents protocol.

    python benchmarks/out_of_scope.py --output docs/results/out_of_scope [--seeds 42 43 44] [--method lpft]

For each seed, a seeded random share (``--known``, two thirds) of the Banking77 intents is *known*: a
model is trained with ``bankintent train`` on their queries of the project's 9,002 / 1,001 split (the
validation file is given as ``valid.csv``, so the split stays the project's). The test queries of the
other, *held-out* intents are **in-domain out-of-scope** queries (banking requests the bot was never
taught); the project's probe set (``resources/out_of_scope.txt``) is **out-of-domain**. The held-out
intents' validation queries may be used to choose scores and settings; their test queries are only
scored.

Every out-of-scope score of ``bankintent.ood`` is computed twice: on the fine-tuned model's embedding
(the classifier head's input) and logits, and on the frozen base model's mean-pooled embedding with a
linear probe fitted on the known intents. Each score's threshold keeps 95% of the known intents'
validation queries in scope (the project's default rule). Reported per score, mean ± std over seeds:
in-scope accuracy of the answered test queries, AUROC and FPR at 95% TPR against each kind of
out-of-scope query, and at the threshold the recall of in-domain and of out-of-domain queries.

Also reported: ``shipped (SCORE)``, the score and threshold the trained model folder itself chose and
will use when serving.

``--oos-examples label|class`` measures what out-of-scope examples add. The held-out intents are split
in two with a seed; the training queries of one half join the training data, as ``out_of_scope`` rows
(``label``: the project's out-of-scope examples, which the model uses to choose its score and
threshold) or as one more intent (``class``: its probability becomes the ``oos class`` score). The
in-domain recall is then measured on the test queries of the *other* half only, so no example comes
from a tested intent; ``recall in-domain (untouched half)`` is that same half in every arm, for a
like-for-like comparison.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

from bankintent import ood  # noqa: E402
from bankintent.config import resolve_config  # noqa: E402
from bankintent.data import Examples, load_splits  # noqa: E402
from bankintent.predict import Predictor, softmax  # noqa: E402
from bankintent.results import markdown_table  # noqa: E402

COVERAGE = 0.95


def held_out_split(labels: list[str], known_share: float, seed: int) -> tuple[list[str], list[str]]:
    """(known intents, held-out intents): a seeded random ``known_share`` of ``labels`` is known."""
    rng = random.Random(seed)
    known = sorted(rng.sample(sorted(labels), round(known_share * len(labels))))
    return known, sorted(set(labels) - set(known))


def subset(examples: Examples, intents: set[str]) -> Examples:
    keep = [i for i, label in enumerate(examples.labels) if label in intents]
    return Examples([examples.texts[i] for i in keep], [examples.labels[i] for i in keep])


def write_csv(path: Path, *parts: tuple[list[str], list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        for texts, labels in parts:
            writer.writerows(zip(texts, labels))


def fpr_at_95_tpr(in_scope: np.ndarray, out_of_scope: np.ndarray) -> float:
    """Share of out-of-scope queries kept in scope when 95% of the in-scope ones are (lower is better)."""
    return float((out_of_scope <= np.quantile(in_scope, 0.95)).mean())


def measure(scores: dict[str, dict[str, np.ndarray]], correct: np.ndarray, thresholds: dict[str, float]) -> list[dict]:
    """One row per score from its values on the sets ``val`` (known intents' validation), ``test``
    (known intents' test), ``id_oos`` (held-out intents' test), ``id_oos_half`` (the test queries of the
    held-out intents that never give out-of-scope examples), ``id_oos_val`` (their validation) and
    ``ood`` (the probe set). A score's threshold keeps 95% of ``val`` in scope unless ``thresholds``
    names one."""
    rows = []
    for name, s in scores.items():
        threshold = thresholds.get(name, ood.threshold_for_coverage(s["val"], COVERAGE))
        kept = s["test"] <= threshold
        rows.append({
            "score": name,
            "coverage": float(kept.mean()),
            "accuracy_answered": float(correct[kept].mean()),
            "auroc_id": ood.auroc(s["test"], s["id_oos"]),
            "auroc_ood": ood.auroc(s["test"], s["ood"]),
            "fpr95_id": fpr_at_95_tpr(s["test"], s["id_oos"]),
            "fpr95_ood": fpr_at_95_tpr(s["test"], s["ood"]),
            "recall_id": float((s["id_oos"] > threshold).mean()),
            "recall_id_half": float((s["id_oos_half"] > threshold).mean()),
            "recall_ood": float((s["ood"] > threshold).mean()),
            "recall_id_val": float((s["id_oos_val"] > threshold).mean()),
        })
    return rows


OOS_CLASS = "zz_out_of_scope_class"


def run_seed(seed: int, args, splits, workdir: Path) -> list[dict]:
    known, held_out = held_out_split(splits.labels, args.known, seed)
    # half of the held-out intents may give out-of-scope examples (--oos-examples); the other half is
    # what every arm's ``recall_id_half`` is measured on
    example_intents = sorted(random.Random(seed + 1).sample(held_out, len(held_out) // 2))
    untouched = sorted(set(held_out) - set(example_intents))
    tested = untouched if args.oos_examples != "none" else held_out
    data = workdir / f"data-{args.oos_examples}-{seed}"
    data.mkdir(parents=True, exist_ok=True)
    train, val, test = (subset(e, set(known)) for e in (splits.train, splits.validation, splits.test))
    examples = subset(splits.train, set(example_intents)) if args.oos_examples != "none" else Examples([], [])
    example_label = {"none": "", "label": "out_of_scope", "class": OOS_CLASS}[args.oos_examples]
    write_csv(data / "train.csv", (train.texts, train.labels), (examples.texts, [example_label] * len(examples)))
    write_csv(data / "valid.csv", (val.texts, val.labels))
    write_csv(data / "test.csv", (test.texts, test.labels))
    (data / "held_out.json").write_text(json.dumps({"known": known, "held_out": held_out, "example_intents": example_intents}, indent=1))

    from bankintent.training import train as run_training

    output = workdir / f"run-{args.oos_examples}-{seed}"
    cfg = resolve_config(None, method=args.method, data=str(data), output=str(output), seed=seed, overwrite=True,
                         base_model=args.base_model, epochs=args.epochs)
    metrics = run_training(cfg)
    predictor = Predictor.load(output)
    sets = {
        "val": val.texts,
        "test": test.texts,
        "id_oos": subset(splits.test, set(tested)).texts,
        "id_oos_half": subset(splits.test, set(untouched)).texts,
        "id_oos_val": subset(splits.validation, set(tested)).texts,
        "ood": ood.probe_set(),
    }
    outputs = {name: predictor.outputs(texts, desc=f"seed {seed}: {name}") for name, texts in sets.items()}
    labels = predictor.labels
    bank_examples = Examples(train.texts + (examples.texts if args.oos_examples == "class" else []),
                             train.labels + ([OOS_CLASS] * len(examples) if args.oos_examples == "class" else []))
    train_features = predictor.outputs(bank_examples.texts, desc=f"seed {seed}: train")[1]
    train_ids = np.array([labels.index(x) for x in bank_examples.labels])
    test_true = np.array([labels.index(label) for label in test.labels])
    rows = []
    variants = {"fine-tuned": ({n: o[0] for n, o in outputs.items()}, {n: o[1] for n, o in outputs.items()},
                               predictor.spec.temperature, train_features)}
    if args.frozen_base:
        variants["frozen base"] = frozen_base_outputs(args.base_model, sets, bank_examples, val, labels, seed)
    for embedding, (logits, features, temperature, bank) in variants.items():
        scores = all_scores(logits, features, temperature, bank, train_ids, len(labels))
        k = scores.pop("_k")
        thresholds = {}
        if OOS_CLASS in labels:
            column = labels.index(OOS_CLASS)
            scores["oos class"] = {n: softmax(l / temperature)[:, column] for n, l in logits.items()}
        if embedding == "fine-tuned" and predictor.oos_threshold is not None:
            name = f"shipped ({predictor.oos_score})"
            scores[name] = {n: predictor.oos_scores(softmax(logits[n] / temperature), features[n]) for n in logits}
            thresholds[name] = predictor.oos_threshold
        correct = logits["test"].argmax(-1) == test_true
        for row in measure(scores, correct, thresholds):
            rows.append({"seed": seed, "method": args.method, "embedding": embedding, "oos_examples": args.oos_examples,
                         "known_intents": len(known), "knn_k": k, "test_accuracy": float(correct.mean()),
                         "model_oos_score": metrics.get("oos_score"), **row})
    return rows


KS = (1, 5, 10, 25, 50)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy score (Liu et al., 2020): -T logsumexp(logits / T); higher: more out of scope."""
    return -temperature * logsumexp(logits / temperature, axis=-1)


def all_scores(logits: dict[str, np.ndarray], features: dict[str, np.ndarray], temperature: float,
               train_features: np.ndarray, train_labels: np.ndarray, num_labels: int) -> dict[str, dict[str, np.ndarray]]:
    """{score name: {set name: scores}} for every score, from each set's logits and embeddings."""
    stats = ood.fit(train_features, train_labels, num_labels)
    result: dict[str, dict[str, np.ndarray]] = {}
    for set_name in logits:
        probs = softmax(logits[set_name] / temperature)
        values = {
            "msp": ood.score("msp", probs, features[set_name], stats),
            "energy": energy(logits[set_name], temperature),
            "mahalanobis": ood.score("mahalanobis", probs, features[set_name], stats),
            **{f"knn{k}": ood.knn(features[set_name], stats, k) for k in KS},
        }
        for name, v in values.items():
            result.setdefault(name, {})[set_name] = v
    # kNN: k chosen on the held-out intents' validation queries (AUROC against the known ones')
    best_k = max(KS, key=lambda k: ood.auroc(result[f"knn{k}"]["val"], result[f"knn{k}"]["id_oos_val"]))
    result["knn"] = result[f"knn{best_k}"]
    for k in KS:
        del result[f"knn{k}"]
    # combination: each score standardised on the known intents' validation queries, then averaged
    def z(name: str, set_name: str) -> np.ndarray:
        reference = result[name]["val"]
        return (result[name][set_name] - reference.mean()) / reference.std().clip(1e-12)

    result["mahalanobis+knn"] = {s: (z("mahalanobis", s) + z("knn", s)) / 2 for s in logits}
    result["msp+mahalanobis+knn"] = {s: (z("msp", s) + z("mahalanobis", s) + z("knn", s)) / 3 for s in logits}
    result["_k"] = best_k  # type: ignore[assignment]
    return result


def frozen_base_outputs(base_model: str | None, sets: dict[str, list[str]], train: Examples, val: Examples,
                        labels: list[str], seed: int) -> tuple[dict, dict, float, np.ndarray]:
    """The frozen base's mean-pooled embeddings and a linear probe's logits for every set (and train)."""
    from bankintent import probe
    from bankintent.calibration import fit_temperature
    from bankintent.config import DEFAULT_BASE_MODEL
    from bankintent.modeling import ModelSpec, build_model, load_tokenizer

    base = base_model or DEFAULT_BASE_MODEL
    model = build_model(ModelSpec(base_model=base, method="linear-probe", pooling="mean", labels=labels))
    tokenizer = load_tokenizer(base)
    embed = lambda texts, name: probe.embed(model, tokenizer, texts, 64, desc=f"frozen base: {name}")  # noqa: E731
    train_x = embed(train.texts, "train")
    features = {name: embed(texts, name) for name, texts in sets.items()}
    train_y = [labels.index(x) for x in train.labels]
    clf, _, _ = probe.fit(train_x, train_y, features["val"], [labels.index(x) for x in val.labels], [1.0, 3.0, 10.0, 30.0, 100.0], seed)
    logits = {name: clf.decision_function(x) for name, x in features.items()}
    temperature = fit_temperature(logits["val"], np.array([labels.index(x) for x in val.labels]))
    return logits, features, temperature, train_x


def summarise(rows: list[dict]) -> list[dict]:
    frame = pd.DataFrame(rows)
    table = []
    for (embedding, score, oos_examples), group in frame.groupby(["embedding", "score", "oos_examples"], sort=False):
        cell = {"embedding": embedding, "score": score, "oos examples": oos_examples, "seeds": len(group)}
        for column, name in (("test_accuracy", "in-scope acc"), ("accuracy_answered", "acc answered"), ("coverage", "coverage"),
                             ("auroc_id", "AUROC in-domain"), ("auroc_ood", "AUROC out-of-domain"),
                             ("fpr95_id", "FPR95 in-domain"), ("recall_id", "recall in-domain"), ("recall_id_half", "recall in-domain (untouched half)"),
                             ("recall_ood", "recall out-of-domain")):
            values = group[column].to_numpy() * (1 if column.startswith("auroc") else 100)
            fmt = "{:.3f} ± {:.3f}" if column.startswith("auroc") else "{:.1f} ± {:.1f}%"
            cell[name] = fmt.format(values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0)
        table.append(cell)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for results.csv and results.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--known", type=float, default=2 / 3, help="share of the intents that are known")
    parser.add_argument("--method", default="lpft")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override the method's recipe (for a quick check)")
    parser.add_argument("--oos-examples", choices=("none", "label", "class"), default="none",
                        help="half of the held-out intents' training queries join the training data: 'label' as out-of-scope "
                             "examples (the project's out_of_scope rows), 'class' as one more intent whose probability is a score")
    parser.add_argument("--frozen-base", action=argparse.BooleanOptionalAction, default=True, help="also score the frozen base's embeddings")
    parser.add_argument("--workdir", default=None, help="keep the data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    splits = load_splits("banking77")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        for seed in args.seeds:
            rows += run_seed(seed, args, splits, workdir)
            pd.DataFrame(rows).to_csv(out / "results.csv", index=False, float_format="%.4f")
    table = summarise(rows)
    command = "python " + " ".join(sys.argv)
    (out / "results.md").write_text(f"`{command}`\n\n" + markdown_table(table, list(table[0])) + "\n")
    print(markdown_table(table, list(table[0])))


if __name__ == "__main__":
    main()
