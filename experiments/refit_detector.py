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
from bankintent.modeling import write_spec
from bankintent.predict import Predictor, model_folder
from bankintent.data import run_splits
from bankintent.training import calibration_splits, preprocess_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    shutil.copytree(args.run, args.output)
    cfg = TrainConfig(**read_yaml(args.output / "config.yaml"))
    cfg = dataclasses.replace(cfg, output=str(args.output))
    splits = run_splits(cfg)
    folder = model_folder(args.output)
    predictor = Predictor.load(folder, device="cpu")
    preprocess_splits(splits, predictor.spec.preprocessing)
    report = calibrate(predictor, calibration_splits(splits, cfg), cfg)
    write_spec(predictor.spec, folder)
    print(json.dumps({k: report[k] for k in ("oos_score", "oos_threshold") if k in report}, default=str))
    print(f"{folder}: {', '.join(f'{k} {v.shape}' for k, v in predictor.spec.ood.items())}")


if __name__ == "__main__":
    main()
