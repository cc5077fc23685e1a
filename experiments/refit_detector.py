"""Refit a trained run's temperature and out-of-scope detector with the current code, in a copy of the run.

    python experiments/refit_detector.py RUN --output COPY

Runs trained before the detector's kNN bank became each intent's k-means prototypes (2026-11-28) carry
every training embedding; measuring them against newer runs (benchmarks/latency.py) would charge the
older ones the larger bank. This copies RUN to COPY and fits the calibration again exactly as training
ends (``training.calibration_splits`` and ``calibration.calibrate`` on the run's own split, read with
its saved options); the model's weights are not touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from bankintent.calibration import calibrate
from bankintent.config import TrainConfig, read_yaml
from bankintent.data import load_splits
from bankintent.modeling import write_spec
from bankintent.predict import Predictor, model_folder
from bankintent.text import preprocess
from bankintent.training import calibration_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    shutil.copytree(args.run, args.output)
    cfg = TrainConfig(**read_yaml(args.output / "config.yaml"))
    cfg = dataclasses.replace(cfg, output=str(args.output))
    splits = load_splits(cfg.data, cfg.text_column, cfg.label_column, cfg.val_fraction, cfg.split_seed, cfg.max_train_samples,
                         strict_data=cfg.strict_data, oos_label=cfg.oos_label, oos_file=cfg.oos_file,
                         shots=cfg.shots, shots_seed=cfg.draw_seed)
    folder = model_folder(args.output)
    predictor = Predictor.load(folder, device="cpu")
    for examples in (splits.train, splits.validation):  # the model's preprocessing, as training applies it
        examples.texts = [preprocess(t, predictor.spec.preprocessing) for t in examples.texts]
    report = calibrate(predictor, calibration_splits(splits, cfg), cfg)
    write_spec(predictor.spec, folder)
    print(json.dumps({k: report[k] for k in ("oos_score", "oos_threshold") if k in report}, default=str))
    print(f"{folder}: {', '.join(f'{k} {v.shape}' for k, v in predictor.spec.ood.items())}")


if __name__ == "__main__":
    main()
