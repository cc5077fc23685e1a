"""Best epoch or the mean of the epochs' weights? The experiment behind lpft's ``average_weights``.

    python experiments/weight_averaging.py run 42 --output runs/weight_averaging     # one seed (~7 min, 2 cores)
    python experiments/weight_averaging.py compare runs/weight_averaging              # the seeds run so far

``run`` trains lpft with the best-epoch selection (``average_weights: false``) and keeps the trainable
weights at each epoch's end; it then scores every epoch's weights and the means of epochs 1-4, 2-4
and 3-4 on validation and test, and writes ``seed-N.json`` (accuracies, mean losses and, per
validation query, whether each candidate was right).

``compare`` judges ways of choosing on validation alone: the validation queries are split into
random halves (2,000 times, both ways round); a rule chooses a candidate from its accuracy on one
half and is scored on the other. A rule that picks the best of several candidates is optimistic on
the half it picked on; the other half is not, so fixed choices (always the mean) and selections
(best epoch) are compared fairly. Test accuracy is printed for the record, never used.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import bankintent.training as training  # noqa: E402
from bankintent import resolve_config  # noqa: E402
from bankintent.data import load_splits  # noqa: E402
from bankintent.modeling import load_model, load_tokenizer  # noqa: E402
from bankintent.predict import Predictor  # noqa: E402

RULES = {
    "best epoch (earliest of ties)": lambda acc: max((n for n in acc if n.startswith("epoch")), key=lambda n: (acc[n], -int(n[5:]))),
    "best epoch (latest of ties)": lambda acc: max((n for n in acc if n.startswith("epoch")), key=lambda n: (acc[n], int(n[5:]))),
    "last epoch": lambda acc: max((n for n in acc if n.startswith("epoch")), key=lambda n: int(n[5:])),
    "mean of epochs 1-4": lambda acc: "avg1-4",
    "mean of epochs 2-4": lambda acc: "avg2-4",
    "best of epochs and means": lambda acc: max(acc, key=acc.get),
}


class EpochEnds(TrainerCallback):
    def __init__(self):
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


def run(seed: int, output: Path) -> None:
    epoch_ends = EpochEnds()
    trainer = training.Trainer
    training.Trainer = lambda *a, callbacks=(), **k: trainer(*a, callbacks=[*callbacks, epoch_ends], **k)
    out = output / f"seed-{seed}"
    metrics = training.train(resolve_config(method="lpft", output=str(out), seed=seed, average_weights=False, early_stopping_patience=10))
    model, spec = load_model(out / "adapter", merge=False)
    tokenizer, splits = load_tokenizer(spec.base_model), load_splits("banking77")
    parameters = dict(model.named_parameters())

    def score(weights: dict) -> dict:
        with torch.no_grad():
            for name, value in weights.items():
                parameters[name].copy_(value)
        predictor, row = Predictor(model, tokenizer, spec), {}
        for name, split in (("val", splits.validation), ("test", splits.test)):
            logits = predictor.logits(split.texts)
            truth = np.array([spec.labels.index(label) for label in split.labels])
            log_probs = logits - logits.max(1, keepdims=True)
            log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
            correct = logits.argmax(1) == truth
            row.update({name: float(correct.mean()), f"{name}_loss": float(-log_probs[np.arange(len(truth)), truth].mean())})
            if name == "val":
                row["val_correct"] = "".join("1" if c else "0" for c in correct)
        return row

    results = {"seed": seed, "best_epoch": metrics["best_epoch"]}
    results.update({f"epoch{i + 1}": score(w) for i, w in enumerate(epoch_ends.weights)})
    for first in (1, 2, 3):
        chosen = epoch_ends.weights[first - 1 :]
        results[f"avg{first}-{len(epoch_ends.weights)}"] = score({n: sum(w[n] for w in chosen) / len(chosen) for n in chosen[0]})
    (output / f"seed-{seed}.json").write_text(json.dumps(results, indent=1))


def compare(folder: Path, halvings: int = 2000) -> None:
    rng = np.random.default_rng(0)
    held_out = {rule: [] for rule in RULES}
    for path in sorted(folder.glob("seed-*.json")):
        results = json.loads(path.read_text())
        candidates = {k: v for k, v in results.items() if isinstance(v, dict)}
        correct = {k: np.array([c == "1" for c in v["val_correct"]], dtype=float) for k, v in candidates.items()}
        print(f"seed {results['seed']}: " + ", ".join(f"{k} {100 * v['val']:.2f}/{100 * v['test']:.2f}" for k, v in candidates.items())
              + "  (val/test %)")
        size = len(next(iter(correct.values())))
        for _ in range(halvings):
            order = rng.permutation(size)
            for choose, score in ((order[: size // 2], order[size // 2 :]), (order[size // 2 :], order[: size // 2])):
                accuracy = {k: v[choose].mean() for k, v in correct.items()}
                for rule, pick in RULES.items():
                    held_out[rule].append(correct[pick(accuracy)][score].mean())
    print("\n| rule (chooses on one half of validation) | accuracy on the other half |\n|---|--:|")
    for rule, values in held_out.items():
        print(f"| {rule} | {100 * np.mean(values):.2f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("seed", type=int)
    p.add_argument("--output", type=Path, default=Path("runs/weight_averaging"))
    p = sub.add_parser("compare")
    p.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        args.output.mkdir(parents=True, exist_ok=True)
        run(args.seed, args.output)
    else:
        compare(args.folder)


if __name__ == "__main__":
    main()
