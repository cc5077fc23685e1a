"""How much would an ensemble teach? The check before distilling one (``bankintent distill --teachers``).

    python experiments/ensemble_accuracy.py RUN RUN2 RUN3      # runs trained on the same data and intents

A student of an ensemble learns the mean of its teachers' logits (``bankintent.distill``), so that mean's
own accuracy is about the most the student can be expected to reach. Printed: validation and test
accuracy of each run and of the mean of the first 2, 3, ... runs' logits, on the first run's data
and split (its config.yaml). Validation decides whether the ensemble is worth distilling; test is
printed for the record.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from bankintent.config import TrainConfig, read_yaml, run_config_file  # noqa: E402
from bankintent.data import run_splits  # noqa: E402
from bankintent.predict import Predictor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="training runs on the same data and intents")
    args = parser.parse_args()
    cfg = TrainConfig(**read_yaml(run_config_file(args.runs[0])))
    splits = run_splits(cfg)
    parts = {"validation": splits.validation, "test": splits.test}
    labels = {name: np.array(splits.ids(examples)) for name, examples in parts.items()}
    logits: dict[str, list[np.ndarray]] = {name: [] for name in parts}
    print("| model | validation | test |\n|---|--:|--:|")
    for run in args.runs:
        predictor = Predictor.load(run, device="cpu")
        if predictor.labels != splits.labels:
            raise SystemExit(f"{run}: its intents differ from those of {args.runs[0]}'s data")
        for name, examples in parts.items():
            logits[name].append(predictor.logits(examples.texts))
        print(f"| {run} | " + " | ".join(f"{100 * (logits[n][-1].argmax(1) == labels[n]).mean():.2f}%" for n in parts) + " |")
    for count in range(2, len(args.runs) + 1):
        mean = {n: np.mean(logits[n][:count], axis=0) for n in parts}
        print(f"| mean logits of the first {count} | " + " | ".join(f"{100 * (mean[n].argmax(1) == labels[n]).mean():.2f}%" for n in parts) + " |")


if __name__ == "__main__":
    main()
