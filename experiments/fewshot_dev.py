"""Accuracy of few-shot runs on development queries: training-file queries their ``--shots`` draw left
out, the same for every run of a draw, so that levers are chosen on them and not on the test queries.

    python experiments/fewshot_dev.py RUN [RUN ...] [--queries N]

Each RUN is a ``bankintent train --shots K`` output folder; its ``config.yaml`` gives the data, K and
the draw's seed. The development queries are the training file's queries not drawn (or ``--queries`` of them,
sampled with ``--sample-seed``), scored as closed-set accuracy (the most
probable intent, as ``test_accuracy`` is). Run from the repository (``banking77`` is found in ../shared)."""
import argparse

import numpy as np
import pandas as pd

from bankintent.config import TrainConfig, read_yaml
from bankintent.data import data_files, load_splits, read_examples
from bankintent.predict import Predictor

parser = argparse.ArgumentParser()
parser.add_argument("runs", nargs="+")
parser.add_argument("--queries", type=int, default=None, help="a sample of this many (default: every query not drawn)")
parser.add_argument("--sample-seed", type=int, default=0)
args = parser.parse_args()

print("| run | examples per intent | draw | development accuracy | test accuracy |\n|---|---|---|---|---|")
for run in args.runs:
    cfg = TrainConfig(**read_yaml(f"{run}/config.yaml"))
    if cfg.shots is None:
        raise SystemExit(f"error: {run} was not trained with --shots")
    every = read_examples(data_files(cfg.data).train, cfg.text_column, cfg.label_column)
    drawn = set(load_splits(cfg.data, cfg.text_column, cfg.label_column, shots=cfg.shots, shots_seed=cfg.draw_seed).train.texts)
    pool = pd.DataFrame({"text": every.texts, "label": every.labels})
    dev = pool[~pool.text.isin(drawn)]
    if args.queries:
        dev = dev.sample(args.queries, random_state=args.sample_seed)
    answers = Predictor.load(run).predict(dev.text.tolist(), top_k=1)
    accuracy = np.mean([a["closest_intent"] == label for a, label in zip(answers, dev.label)])
    test = pd.read_json(f"{run}/metrics.json", typ="series").get("test_accuracy")
    print(f"| {run} | {cfg.shots} | {cfg.draw_seed} | {accuracy:.2%} | {test:.2%} |", flush=True)
