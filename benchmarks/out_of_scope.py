"""Out-of-scope detection where it is hard: the held-out-intents protocol.

    python benchmarks/out_of_scope.py --output docs/results/out_of_scope [--seeds 42 43 44] [--method lpft]

For each seed, a seeded random share (``--known``, two thirds) of the Banking77 intents is *known*: a
model is trained with ``bankintent train`` on their queries of the project's 9,002 / 1,001 split (the
validation file is given as ``valid.csv``, so the split stays the project's). The test queries of the
other, *held-out* intents are **in-domain out-of-scope** queries (banking requests the bot was never
taught); the project's probe set (``resources/out_of_scope.txt``) is **out-of-domain**. The held-out
intents' validation queries may be used to choose scores and settings; their test queries are only
scored.

Every out-of-scope score of ``bankintent.ood`` (and the energy score, Liu et al., 2020, and other
combinations) is computed twice: on the fine-tuned model's embedding (the classifier head's input)
and logits, and on the frozen base model's mean-pooled embedding with a linear probe fitted on the
known intents. Each score's threshold keeps 95% of the known intents' validation queries in scope
(the project's default rule). Reported per score, mean ± std over seeds: in-scope accuracy of the
answered test queries, AUROC and FPR at 95% TPR against each kind of out-of-scope query, and at the
threshold the recall of in-domain and of out-of-domain queries; ``recall_id_val`` in the CSV is the
held-out intents' validation queries' recall, which chose the project's settings (``ood.DEFAULT_SCORE``,
``ood.COMBINED_WEIGHT``, ``ood.KNN_K``). ``shipped (SCORE)`` is the score the trained model folder
serves with: the default without examples, the examples' choice (``ood.choose``) with them.

``--arms`` picks what is measured. The held-out intents are split in two with a seed; ``label`` and
``class`` give the training queries of one half to the model as out-of-scope examples and measure
the in-domain recall on the test queries of the *other* half only, so no example comes from a tested
intent (``recall in-domain (untouched half)`` is that same half in every arm, for a like-for-like
comparison):

- ``none``: no out-of-scope examples.
- ``label``: the examples are ``out_of_scope`` rows, which never train the classifier (so ``none``
  and ``label`` share one trained model): they choose the score, and ``knn contrast`` scores how much
  nearer a query is to an example than to a training query of an intent.
- ``class``: the examples are one more intent (a model of its own); its probability is the ``oos
  class`` score.

``--distill LAYERS`` measures, in place of each trained model, its student (``bankintent distill``);
as deep as the teacher, that is born-again distillation.

Each trained model's outputs are kept in ``--workdir`` (``outputs-MODE-SEED.npz``): run the command
again with the same folder and the scores are computed again without training.
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
ARMS = ("none", "label", "class")
MODEL_OF = {"none": "label", "label": "label", "class": "class"}  # arm: the model it measures


def held_out_split(labels: list[str], known_share: float, seed: int) -> tuple[list[str], list[str]]:
    """(known intents, held-out intents): a seeded random ``known_share`` of ``labels`` is known."""
    rng = random.Random(seed)
    known = sorted(rng.sample(sorted(labels), round(known_share * len(labels))))
    return known, sorted(set(labels) - set(known))


def subset(examples: Examples, intents: set[str]) -> Examples:
    return examples.take([i for i, label in enumerate(examples.labels) if label in intents])


def write_csv(path: Path, *parts: tuple[list[str], list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        for texts, labels in parts:
            writer.writerows(zip(texts, labels))


def fpr_at_95_tpr(in_scope: np.ndarray, out_of_scope: np.ndarray) -> float:
    """Share of out-of-scope queries kept in scope when 95% of the in-scope ones are (lower is better)."""
    return float((out_of_scope <= np.quantile(in_scope, 0.95)).mean())


def measure(scores: dict[str, dict[str, np.ndarray]], correct: np.ndarray, tested: np.ndarray,
            untouched: np.ndarray) -> list[dict]:
    """One row per score from its values on the sets ``val`` (known intents' validation), ``test``
    (known intents' test), ``id_oos`` (held-out intents' test: ``tested`` marks those the arm is
    tested on, ``untouched`` those of the intents that never give out-of-scope examples),
    ``id_oos_val`` (the held-out intents' validation) and ``ood`` (the probe set). A score's threshold
    is the one training sets on ``val`` to answer 95% of new in-scope queries."""
    rows = []
    for name, s in scores.items():
        threshold = ood.threshold_for_new_queries(s["val"], COVERAGE)
        kept = s["test"] <= threshold
        id_oos = s["id_oos"][tested]
        rows.append({
            "score": name,
            "coverage": float(kept.mean()),
            "accuracy_answered": float(correct[kept].mean()),
            "auroc_id": ood.auroc(s["test"], id_oos),
            "auroc_ood": ood.auroc(s["test"], s["ood"]),
            "fpr95_id": fpr_at_95_tpr(s["test"], id_oos),
            "fpr95_ood": fpr_at_95_tpr(s["test"], s["ood"]),
            "recall_id": float((id_oos > threshold).mean()),
            "recall_id_half": float((s["id_oos"][untouched] > threshold).mean()),
            "recall_ood": float((s["ood"] > threshold).mean()),
            "recall_id_val": float((s["id_oos_val"] > threshold).mean()),
        })
    return rows


OOS_CLASS = "zz_out_of_scope_class"


def protocol_split(splits, known_share: float, seed: int) -> dict[str, list[str]]:
    """The seed's intents: ``known`` (trained), ``held_out``; of these, ``example_intents`` (may give
    out-of-scope examples) and ``untouched`` (never do: what the arms with examples are tested on)."""
    known, held_out = held_out_split(splits.labels, known_share, seed)
    example_intents = sorted(random.Random(seed + 1).sample(held_out, len(held_out) // 2))
    return {"known": known, "held_out": held_out, "example_intents": example_intents,
            "untouched": sorted(set(held_out) - set(example_intents))}


def model_outputs(seed: int, mode: str, args, splits, workdir: Path) -> dict:
    """Train the seed's model (``mode`` ``label``: the example intents' training queries are
    ``out_of_scope`` rows, which never train the classifier, so this one model serves the arms
    ``none`` and ``label``; ``class``: they are one more intent) and return its outputs on every set
    of the protocol, cached in ``workdir`` (``outputs-MODE-SEED.npz``) so the scores can be studied
    again without training."""
    student = f"distill{args.distill}-" if args.distill else ""
    cache = workdir / f"outputs-{student}{mode}-{seed}.npz"
    intents = protocol_split(splits, args.known, seed)
    known, examples_of = set(intents["known"]), set(intents["example_intents"])
    train, val, test = (subset(e, known) for e in (splits.train, splits.validation, splits.test))
    examples = subset(splits.train, examples_of)
    sets = {
        "val": val, "test": test, "train": train, "examples": examples,
        "id_oos": subset(splits.test, set(intents["held_out"])),
        "id_oos_val": subset(splits.validation, set(intents["held_out"])),
        "ood": Examples(ood.probe_set(), ["ood"] * len(ood.probe_set())),
    }
    if cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        return {**{key: stored[key] for key in stored.files}, "intents": intents, "sets": sets,
                "labels": [str(x) for x in stored["labels"]]}
    data = workdir / f"data-{mode}-{seed}"
    data.mkdir(parents=True, exist_ok=True)
    write_csv(data / "train.csv", (train.texts, train.labels),
              (examples.texts, [OOS_CLASS if mode == "class" else "out_of_scope"] * len(examples)))
    write_csv(data / "valid.csv", (val.texts, val.labels))
    write_csv(data / "test.csv", (test.texts, test.labels))
    (data / "held_out.json").write_text(json.dumps(intents, indent=1))

    from bankintent.training import train as run_training

    output = workdir / f"run-{mode}-{seed}"
    cfg = resolve_config(None, method=args.method, data=str(data), output=str(output), seed=seed, overwrite=True,
                         base_model=args.base_model, epochs=args.epochs)
    if not (args.distill and (output / "metrics.json").is_file()):  # a trained teacher is distilled again, not retrained
        run_training(cfg)
    if args.distill:  # the teacher's student (``bankintent distill``) is the model measured
        from bankintent.distill import distill

        teacher, output = output, workdir / f"{student}{mode}-{seed}"
        distill(teacher, output, overwrite=True, layers=args.distill, epochs=args.distill_epochs, seed=seed)
    predictor = Predictor.load(output)
    result = {"labels": np.array(predictor.labels), "temperature": np.array(predictor.spec.temperature)}
    for name, examples_set in sets.items():
        logits, features = predictor.outputs(examples_set.texts, desc=f"seed {seed}: {name}")
        result[f"logits/{name}"], result[f"features/{name}"] = logits, features
    if args.frozen_base:
        bank = train if mode != "class" else Examples(train.texts + examples.texts, train.labels + [OOS_CLASS] * len(examples))
        logits, features, temperature, bank_features = frozen_base_outputs(
            args.base_model, {n: e.texts for n, e in sets.items()}, bank, val, predictor.labels, seed)
        result["frozen/temperature"] = np.array(temperature)
        result["frozen/bank"] = bank_features
        for name in sets:
            result[f"frozen/logits/{name}"], result[f"frozen/features/{name}"] = logits[name], features[name]
    np.savez(cache, **result)
    return model_outputs(seed, mode, args, splits, workdir)


def arm_rows(arm: str, seed: int, outputs: dict, args) -> list[dict]:
    """The rows of one arm: ``none`` (no out-of-scope examples; tested on every held-out intent),
    ``label`` (the example intents' training queries are out-of-scope examples; tested on the untouched
    half) or ``class`` (they were trained as one more intent; tested on the untouched half)."""
    sets, intents, labels = outputs["sets"], outputs["intents"], outputs["labels"]
    untouched = np.isin(sets["id_oos"].labels, intents["untouched"])
    tested = untouched if arm != "none" else np.ones(len(untouched), bool)
    test_true = np.array([labels.index(label) for label in sets["test"].labels])
    bank_labels = sets["train"].labels + ([OOS_CLASS] * len(sets["examples"]) if OOS_CLASS in labels else [])
    bank_ids = np.array([labels.index(x) for x in bank_labels])
    variants = {"fine-tuned": ""} | ({"frozen base": "frozen/"} if "frozen/bank" in outputs else {})
    rows = []
    for embedding, prefix in variants.items():
        names = [n for n in sets if n != "train" and (n != "examples" or arm == "label")]  # the bank is outputs' own
        logits = {n: outputs[f"{prefix}logits/{n}"] for n in names}
        features = {n: outputs[f"{prefix}features/{n}"] for n in names}
        temperature = float(outputs[f"{prefix}temperature"])
        if prefix:
            bank = outputs["frozen/bank"]
        else:
            bank = outputs["features/train"]
            if OOS_CLASS in labels:
                bank = np.concatenate([bank, outputs["features/examples"]])
        scores = all_scores(logits, features, temperature, bank, bank_ids, len(labels))
        k = scores.pop("_k")
        if OOS_CLASS in labels:
            column = labels.index(OOS_CLASS)
            scores["oos class"] = {n: softmax(l / temperature)[:, column] for n, l in logits.items()}
        shipped = ood.DEFAULT_SCORE
        if arm == "label" and not prefix:  # the model's own choice from the examples (as bankintent.calibration makes it)
            shipped = ood.choose({n: scores[n]["val"] for n in ood.SCORES}, {n: scores[n]["examples"] for n in ood.SCORES}, COVERAGE)
            scores.update(example_scores(features, bank))
        if not prefix:
            scores[f"shipped ({shipped})"] = scores[shipped]
        correct = logits["test"].argmax(-1) == test_true
        for row in measure(scores, correct, tested, untouched):
            rows.append({"seed": seed, "method": args.method + (f" distilled to {args.distill} layers" if args.distill else ""), "embedding": embedding, "oos_examples": arm,
                         "known_intents": len(intents["known"]), "knn_k": k, "test_accuracy": float(correct.mean()), **row})
    return rows


def example_scores(features: dict, bank: np.ndarray) -> dict:
    """Scores that use the out-of-scope examples (the example intents' training queries, set
    ``examples``) beyond choosing among the others: ``knn contrast``, the similarity to the nearest
    example minus that to the nearest training query of an intent."""
    intents, examples = ood.fit_knn(bank), ood.fit_knn(features["examples"])
    return {"knn contrast": {n: ood.knn(features[n], intents) - ood.knn(features[n], examples) for n in features if n != "examples"}}


KS = (1, 5, 10, 25, 50)
WEIGHTS = (0.1, 0.25, 0.5, 1.0)
RMD_WEIGHTS = (0.1, 0.25, 0.5)


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
            "rmd": ood.relative_mahalanobis(features[set_name], stats),
            **{f"knn{k}": ood.knn(features[set_name], stats, k) for k in KS},
        }
        for name, v in values.items():
            result.setdefault(name, {})[set_name] = v
    # kNN: the project's k (ood.KNN_K); the k the held-out intents' validation queries would choose
    # (AUROC against the known ones') is reported (column knn_k), and scored too where it differs
    best_k = max(KS, key=lambda k: ood.auroc(result[f"knn{k}"]["val"], result[f"knn{k}"]["id_oos_val"]))
    result["knn"] = result[f"knn{ood.KNN_K}"]
    if best_k != ood.KNN_K:
        result[f"knn (k={best_k})"] = result[f"knn{best_k}"]
    for k in KS:
        del result[f"knn{k}"]
    # combination: each score standardised on the known intents' validation queries, then averaged
    def z(name: str, set_name: str) -> np.ndarray:
        reference = result[name]["val"]
        return (result[name][set_name] - reference.mean()) / reference.std().clip(1e-12)

    for weight in WEIGHTS:  # knn+msp as the project computes it, with msp's weight chosen here (ood.COMBINED_WEIGHT)
        name = "knn+msp" if weight == ood.COMBINED_WEIGHT else f"knn+msp (weight {weight})"
        result[name] = {s: z("knn", s) + weight * z("msp", s) for s in logits}
    for weight in RMD_WEIGHTS:  # knn+msp+rmd as the project computes it, with rmd's weight chosen here (ood.RMD_WEIGHT)
        name = "knn+msp+rmd" if weight == ood.RMD_WEIGHT else f"knn+msp+rmd (weight {weight})"
        result[name] = {s: result["knn+msp"][s] + weight * ood.rmd_evidence(z("rmd", s)) for s in logits}
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
    parser.add_argument("--distill", type=int, default=0, metavar="LAYERS",
                        help="measure a student of each trained model with LAYERS encoder layers (`bankintent distill`; "
                             "as many as the teacher's: born-again distillation), not the model itself")
    parser.add_argument("--distill-epochs", type=int, default=3, help="the student's epochs (with --distill)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["none", "label"],
                        help="none: no out-of-scope examples; half of the held-out intents' training queries are out-of-scope "
                             "examples: 'label' as the project's out_of_scope rows (the same model as 'none'), 'class' as one "
                             "more intent whose probability is a score (a model of its own)")
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
            for mode in dict.fromkeys(MODEL_OF[arm] for arm in args.arms):
                outputs = model_outputs(seed, mode, args, splits, workdir)
                for arm in args.arms:
                    if MODEL_OF[arm] == mode:
                        rows += arm_rows(arm, seed, outputs, args)
            pd.DataFrame(rows).to_csv(out / "results.csv", index=False, float_format="%.4f")
    table = summarise(rows)
    command = "python " + " ".join(sys.argv)
    (out / "results.md").write_text(f"`{command}`\n\n" + markdown_table(table, list(table[0])) + "\n")
    print(markdown_table(table, list(table[0])))


if __name__ == "__main__":
    main()
