"""A sweep of two tiny runs (one of them over two seeds) writes both tables and resumes."""

import pandas as pd
import pytest
import yaml

from bankintent.errors import ConfigError
from bankintent.sweep import read_sweep, run_sweep


def sweep_file(path, tiny_bert, tiny_data, runs):
    base = {"base_model": str(tiny_bert), "data": str(tiny_data), "epochs": 1, "batch_size": 16, "max_length": 24,
            "probe_c": [1.0]}
    path.write_text(yaml.safe_dump({"base": base, "runs": runs}))
    return path


def test_sweep_writes_both_tables_and_skips_finished_runs(tiny_bert, tiny_data, tmp_path):
    runs = [
        {"name": "linear-probe", "tables": ["methods"], "seeds": 2, "options": {"method": "linear-probe"}},
        {"name": "lora lr=1e-3 r=4 alpha=8", "tables": ["methods", "hyperparameters"],
         "options": {"method": "lora", "lr": 1e-3, "lora_r": 4, "lora_alpha": 8}},
    ]
    config = sweep_file(tmp_path / "sweep.yaml", tiny_bert, tiny_data, runs)
    out = tmp_path / "sweep"
    results = run_sweep(config, out)

    assert list(zip(results.name, results.seed)) == [("linear-probe", 42), ("linear-probe", 43), ("lora lr=1e-3 r=4 alpha=8", 42)]
    csv = pd.read_csv(out / "results.csv")
    assert {"method", "seed", "val_accuracy", "test_accuracy", "command", "hardware"} <= set(csv.columns)
    assert csv.test_accuracy.between(0, 1).all()
    assert csv.command[2].startswith("bankintent train ") and "--lora-r 4" in csv.command[2] and "--seed 42" in csv.command[2]
    probe = csv[csv.method == "linear-probe"]
    mean, std = 100 * probe.test_accuracy.mean(), 100 * probe.test_accuracy.std(ddof=1)

    md = (out / "results.md").read_text()
    assert "## Method comparison" in md and "## LoRA hyperparameters" in md
    assert f"| linear-probe | 2 | " in md and f"{mean:.2f} ± {std:.2f}%" in md
    assert "| lora lr=1e-3 r=4 alpha=8 | 0.001 | 4 | 8 | 1 (single seed) |" in md
    assert "bankintent sweep --config" in md

    first = (out / "runs" / "linear-probe" / "seed-42" / "metrics.json").stat().st_mtime_ns
    again = run_sweep(config, out)  # everything finished: nothing is trained again
    assert (out / "runs" / "linear-probe" / "seed-42" / "metrics.json").stat().st_mtime_ns == first
    assert again.equals(results)


def test_sweep_file_errors_name_the_run(tiny_bert, tiny_data, tmp_path):
    config = sweep_file(tmp_path / "bad.yaml", tiny_bert, tiny_data, [{"name": "x", "options": {"lora_rank": 4}}])
    with pytest.raises(ConfigError, match=r"bad.yaml: run 1: unknown option\(s\) lora_rank"):
        read_sweep(config)
    config = sweep_file(tmp_path / "bad.yaml", tiny_bert, tiny_data, [{"name": "x", "baseline": "y"}])
    with pytest.raises(ConfigError, match="baseline 'y' is not a run"):
        read_sweep(config)


def test_reference_sweep_is_valid_and_ordered():
    _, runs = read_sweep("configs/sweep_reference.yaml")
    assert [r.name for r in runs][:5] == ["lpft", "linear-probe", "lora", "full", "lora-unfreeze"]
    assert [len(r.seeds) for r in runs][:2] == [3, 3]
    hyper = [(r.options["lr"], r.options["lora_r"], r.options["lora_alpha"]) for r in runs if "hyperparameters" in r.tables]
    assert hyper == [(1e-4, 8, 32), (5e-5, 16, 16), (1e-5, 8, 16)]
