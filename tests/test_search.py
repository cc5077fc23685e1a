"""A search of three trials on a tiny model, interrupted and resumed from its SQLite file."""

import json

import optuna
import pytest

from bankintent.errors import ConfigError
from bankintent.search import run_search, suggest, target_modules


def test_search_resumes_from_its_sqlite_study(tiny_bert, tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    options = {"base_model": str(tiny_bert), "data": str(tiny_data), "batch_size": 16, "max_length": 24, "probe_c": [1.0]}
    # an earlier search was killed during its first trial, whose hyperparameters were these
    study = optuna.create_study(study_name="bankintent-lpft", storage=storage, direction="maximize")
    interrupted = {"lr": 1e-3, "epochs": 1, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "attention"}
    study.enqueue_trial(interrupted)
    suggest(study.ask(), "lpft")

    first = run_search("lpft", trials=2, storage=storage, **options)
    trials = optuna.load_study(study_name="bankintent-lpft", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params == interrupted  # retried with the same hyperparameters
    assert first["best_val_accuracy"] == max(t.value for t in trials[1:])
    finished = (tmp_path / "trial-1" / "metrics.json").stat().st_mtime_ns

    summary = run_search("lpft", trials=3, storage=storage, **options)  # one more trial, the others kept
    trials = optuna.load_study(study_name="bankintent-lpft", storage=storage).get_trials()
    assert len(trials) == 4 and trials[3].state.name in ("COMPLETE", "PRUNED")
    assert (tmp_path / "trial-1" / "metrics.json").stat().st_mtime_ns == finished
    best = json.loads((tmp_path / f"trial-{summary['best_trial']}" / "metrics.json").read_text())
    assert summary["best_test_accuracy"] == best["test_accuracy"] and summary["best_val_accuracy"] == best["val_accuracy"]
    assert "--lora-r" in summary["best_command"] and f"--output {tmp_path}/trial-{summary['best_trial']}" in summary["best_command"]
    md = (tmp_path / "search.md").read_text()
    assert f"Test accuracy of the best trial (read once, here): {100 * best['test_accuracy']:.2f}%" in md
    assert "## Importance of each hyperparameter" in md and "| 3 | " in md


@pytest.mark.parametrize("method", ["lpft", "lpft-full", "full", "contrastive"])
def test_learning_rate_range_per_method(method):
    """Every weight moving takes far lower rates than LoRA: the full-weight methods never draw LoRA's highest."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rates = [suggest(study.ask(), method)["lr"] for _ in range(200)]
    lora = method == "lpft"
    assert max(rates) > 1e-3 if lora else max(rates) <= 3e-4
    assert min(rates) >= (1e-5 if lora else 5e-6)


def test_target_module_choices(tiny_bert, tiny_distilbert):
    assert target_modules("attention", str(tiny_bert)) == ["query", "key", "value", "attention.output.dense"]
    assert target_modules("attention+ffn", str(tiny_distilbert))[-2:] == ["ffn.lin1", "ffn.lin2"]


def test_storage_must_be_sqlite(tmp_path):
    with pytest.raises(ConfigError, match="expected sqlite:///"):
        run_search("lpft", trials=1, storage=f"{tmp_path}/study.db")
