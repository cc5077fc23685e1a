"""A sweep of two tiny runs (one of them over two seeds) writes both tables and resumes."""

import pandas as pd
import pytest
import yaml

from bankintent.config import TrainConfig
from bankintent.errors import ConfigError, DataError
from bankintent.results import aggregate_runs, results_tables
from bankintent.sweep import read_sweep, run_sweep


def sweep_file(path, tiny_bert, tiny_data, runs):
    base = {"base_model": str(tiny_bert), "data": str(tiny_data), "epochs": 1, "batch_size": 16, "max_length": 24,
            "probe_c": [1.0]}
    path.write_text(yaml.safe_dump({"base": base, "runs": runs}))
    return path


def test_sweep_writes_both_tables_and_skips_finished_runs(tiny_bert, tiny_data, tmp_path, capsys, monkeypatch):
    runs = [{"name": "probe C=3", "tables": ["methods", "grid", "hyperparameters"], "seeds": 2,
             "options": {"method": "linear-probe", "probe_c": [3.0], "lr": 1e-3}}]
    config = sweep_file(tmp_path / "sweep.yaml", tiny_bert, tiny_data, runs)
    out = tmp_path / "sweep"
    results = run_sweep(config, out, jobs=2)  # both seeds at once

    assert list(zip(results.name, results.seed)) == [("probe C=3", 42), ("probe C=3", 43)]
    csv = pd.read_csv(out / "results.csv")
    assert {"method", "seed", "val_accuracy", "test_accuracy", "command", "hardware"} <= set(csv.columns)
    assert csv.test_accuracy.between(0, 1).all()
    command = csv.command[1].split(" --")
    assert command[0] == "bankintent train" and csv.seed[1] == 43
    assert {"method linear-probe", "probe-c 3.0", "lr 0.001", "seed 43", f"output {out}/runs/probe_C=3/seed-43"} <= set(command)
    mean, std = 100 * csv.test_accuracy.mean(), 100 * csv.test_accuracy.std(ddof=1)

    md = (out / "results.md").read_text()
    assert "## Method comparison" in md and "## LoRA hyperparameters" in md
    assert "| probe C=3 | mean | 2 | " in md and f"{mean:.2f} ± {std:.2f}%" in md
    grid = md.split("## Grid (validation only; each method's best row marked)")[1].split("##")[0]
    assert "| probe C=3 | mean | - | - | 0 | 2 |" in grid and "Test" not in grid  # chosen on validation alone
    assert "| probe C=3 | - | - | - | 2 |" in md  # a linear probe has no learning rate, epochs or LoRA rank
    assert csv[["lr", "lora_r", "lora_alpha", "epochs"]].isna().all().all()
    assert f"bankintent sweep --config {config} --output {out}" in md

    first = (out / "runs" / "probe_C=3" / "seed-42" / "metrics.json").stat().st_mtime_ns
    (out / "results.md").unlink()
    assert run_sweep(config, out, train=False).equals(results) and (out / "results.md").read_text() == md
    from bankintent import cli  # the command says where the tables are

    cli.main(["sweep", "--config", str(config), "--output", str(out), "--no-train"])
    assert f"2 finished run(s) in {out / 'results.md'} and results.csv" in capsys.readouterr().out
    again = run_sweep(config, out)  # everything finished: nothing is trained again
    assert (out / "runs" / "probe_C=3" / "seed-42" / "metrics.json").stat().st_mtime_ns == first
    assert again.equals(results)
    assert "error" not in (out / "runs" / "probe_C=3" / "seed-42" / "train.log").read_text()
    assert "linear probe" in (out / "runs" / "probe_C=3" / "seed-42" / "train.log").read_text()  # the child's log lines

    runs[0]["options"]["lr"] = 1e-2  # the sweep file changed: its finished runs are not of these options
    sweep_file(config, tiny_bert, tiny_data, runs)
    with pytest.raises(ConfigError, match=r"seed-42: was trained with other options than the sweep file now gives \(--lr 0.001 -> 0.01\); "
                                          r"write the sweep to another --output, or remove that run's folder"):
        run_sweep(config, out)
    assert (out / "results.md").read_text() == md
    assert yaml.safe_load((out / "sweep.yaml").read_text())["runs"][0]["options"]["lr"] == 1e-3  # the refused file not saved over it

    runs[0]["options"]["lr"] = 1e-3  # the same data named from another folder: the same runs, kept
    monkeypatch.chdir(tiny_data.parent)
    config.write_text(yaml.safe_dump({"base": {**yaml.safe_load(config.read_text())["base"], "data": tiny_data.name}, "runs": runs}))
    assert run_sweep(config, out).test_accuracy.equals(results.test_accuracy)
    assert (out / "runs" / "probe_C=3" / "seed-42" / "metrics.json").stat().st_mtime_ns == first  # not trained again
    one = sweep_file(tmp_path / "one.yaml", tiny_bert, tiny_data, [{**runs[0], "seeds": 1}])
    run_sweep(one, out, seeds=2, train=False)  # --seeds 2 over a file of one: saved, the report reads both seeds' runs
    assert [run.seeds for run in read_sweep(out / "sweep.yaml")[1]] == [[42, 43]]
    from bankintent.report import collect

    monkeypatch.chdir(tmp_path)  # where the sweep file's relative data names nothing: its results are read all the same
    assert [run.name for run in collect([out])[0]] == ["probe C=3", "probe C=3"]


def test_a_failed_run_is_reported_with_its_error(tiny_bert, tiny_data, tmp_path):
    runs = [{"name": "lora", "options": {"method": "lora", "target_modules": "no_such_layer"}}]  # refused by training
    config = sweep_file(tmp_path / "sweep.yaml", tiny_bert, tiny_data, runs)
    with pytest.raises(ConfigError, match=r"1 run\(s\) failed: lora seed 42: target_modules: no layer named 'no_such_layer'.* "
                                          r"\(.*seed-42/train.log\); start the sweep"):
        run_sweep(config, tmp_path / "sweep")
    runs[0]["options"] = {"data": "no_such_data"}  # a missing data folder: before any run starts
    sweep_file(config, tiny_bert, tiny_data, runs)
    with pytest.raises(ConfigError, match=r"sweep.yaml: run 1: data no_such_data: not found \(a relative path is read from the folder"):
        run_sweep(config, tmp_path / "sweep2")
    assert not (tmp_path / "sweep2").exists()


def test_bad_data_stops_the_sweep_before_any_run(tiny_bert, tiny_data, tmp_path):
    """A data error every run would meet in turn (each after loading its model) is met once, first, naming the run."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text((tiny_data / "train.csv").read_text())
    (data / "test.csv").write_text((tiny_data / "test.csv").read_text() + "where is my card,card_arival\n")
    runs = [{"name": "probe", "seeds": 2, "options": {"method": "linear-probe"}},
            {"name": "fewer", "options": {"method": "linear-probe", "max_train_samples": 2}}]
    config = sweep_file(tmp_path / "sweep.yaml", tiny_bert, data, runs)
    with pytest.raises(DataError, match=r"sweep.yaml: run 'probe' seed 42: .*test.csv: line 22: label 'card_arival' never seen in training"):
        run_sweep(config, tmp_path / "sweep")
    assert not list((tmp_path / "sweep").glob("runs/*"))
    runs[0]["options"]["data"] = str(tiny_data)
    sweep_file(config, tiny_bert, tiny_data, runs)
    with pytest.raises(DataError, match=r"run 'fewer' seed 42: .*max_train_samples=2 is fewer than the 4 intents"):
        run_sweep(config, tmp_path / "sweep")
    assert not list((tmp_path / "sweep").glob("runs/*"))


def test_tables_mean_std_single_seed_and_deltas():
    results = pd.DataFrame([
        {"name": n, "tables": t, "baseline": b, "method": "lpft", "seed": s, "val_accuracy": v, "test_accuracy": a,
         "test_macro_f1": a, "trainable_pct": 1.5, "adapter_bytes": 1.4e6, "train_seconds": 120, "lr": 5e-4,
         "lora_r": 8, "lora_alpha": 32, "hardware": "CPU", "note": ""}
        for n, t, b, s, v, a in [("lpft", "methods", "", 42, 0.94, 0.93), ("lpft", "methods", "", 43, 0.92, 0.95),
                                 ("lpft+x", "improvements", "lpft", 43, 0.93, 0.96), ("full", "methods", "", 42, 0.9, 0.9)]
    ])
    tables = results_tables(aggregate_runs(results), {"lpft": 3, "lpft+x": 1, "full": 1})
    assert "| lpft | - | 2 of 3 | 93.00 ± 1.41% | 94.00 ± 1.41% |" in tables["methods"]
    assert "| full | - | 1 (single seed) | 90.00% | 90.00% |" in tables["methods"]
    assert "| lpft+x | lpft | 1 (single seed) | 93.00% | 96.00% | +1.00 pts | +1.00 pts |" in tables["improvements"]
    assert "hyperparameters" not in tables


def test_grid_table_shows_the_options_its_runs_vary():
    """A grid over probe_c (or lora_r) names the value of each row; options the rows share are left out."""
    results = pd.DataFrame([
        {"name": n, "tables": "grid", "baseline": "", "method": "linear-probe", "seed": 42, "val_accuracy": v,
         "test_accuracy": v, "test_macro_f1": v, "trainable_pct": 0.1, "adapter_bytes": 1e5, "train_seconds": 60,
         "lr": None, "lora_r": None, "lora_alpha": None, "epochs": None, "hardware": "CPU", "note": "", "options": options}
        for n, v, options in [("C=1", 0.9, '{"method": "linear-probe", "probe_c": [1.0], "max_length": 64}'),
                              ("C=10", 0.92, '{"method": "linear-probe", "probe_c": [10.0], "max_length": 64}'),
                              ("default C", 0.91, '{"method": "linear-probe", "max_length": 64}')]
    ])
    grid = results_tables(aggregate_runs(results))["grid"]
    assert grid.splitlines()[0] == "| Method | Pooling | LR | Epochs | Best epoch | probe_c | Seeds | Val Acc | Best on validation |"
    assert "| C=10 | - | - | - | - | [10.0] | 1 (single seed) | 92.00% | yes |" in grid  # the grid's choice, marked; a probe has no lr
    assert "| default C | - | - | - | - | " + str(TrainConfig().probe_c) + " | 1 (single seed) | 91.00% |  |" in grid
    assert "max_length" not in grid
    averaged = results.assign(best_epoch=3, averaged_epochs=[4, 4, 0])  # lpft's recipe keeps the mean of its epochs' weights
    rows = results_tables(aggregate_runs(averaged))["grid"].splitlines()
    assert "| C=1 | - | - | - | mean of 4 |" in rows[2] and "| default C | - | - | - | 3 |" in rows[4]


def test_the_method_table_lists_the_row_the_grid_chose_not_the_one_tagged_beforehand():
    """A sweep file tagged `lora lr=1e-3` for the method table before the grid ran; validation chose
    `lora lr=3e-3`: the method table shows the chosen row and says which it passed over."""
    results = pd.DataFrame([
        {"name": n, "tables": tables, "baseline": "", "method": method, "seed": 42, "val_accuracy": v, "test_accuracy": t,
         "test_macro_f1": t, "trainable_pct": 1.0, "adapter_bytes": 1e6, "train_seconds": 60, "lr": 1e-3, "lora_r": 8,
         "lora_alpha": 32, "epochs": 2, "hardware": "CPU", "note": "", "options": "{}"}
        for n, tables, method, v, t in [("lora lr=1e-3", "grid,methods", "lora", 0.86, 0.95), ("lora lr=3e-3", "grid", "lora", 0.95, 0.90),
                                        ("linear-probe", "methods", "linear-probe", 0.90, 0.91)]])
    methods = results_tables(aggregate_runs(results))["methods"]
    listed = [line.split(" | ")[0].strip("| ") for line in methods.splitlines()[2:] if line.startswith("|")]
    assert listed == ["lora lr=3e-3", "linear-probe"]
    assert "Not listed though the sweep file names them for this table: lora lr=1e-3; their grid chose another row" in methods


def test_the_sweep_file_is_read_without_changing_it(tmp_path):
    """The copy of the sweep file the sweep saves keeps base.seed (it was popped from what was saved)."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": {"seed": 7, "epochs": 1}, "runs": [{"name": "a", "options": {"method": "linear-probe"}}]}))
    content, runs = read_sweep(path)
    assert content["base"] == {"seed": 7, "epochs": 1} and runs[0].seeds == [7]


def test_a_mistyped_top_level_key_is_refused_not_trained_on_the_defaults(tmp_path):
    """'bse:' for 'base:' left every run on the default data (Banking77) and recipe; 'seeds:' at the
    top level was dropped. Both are refused, naming what a sweep file holds."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"bse": {"data": "my_intents"}, "seeds": 2, "runs": [{"name": "a"}]}))
    with pytest.raises(ConfigError, match=r"s.yaml: unknown top-level key\(s\) bse \(base\?\), seeds: a sweep file holds 'base:'"):
        read_sweep(path)


def test_sweep_file_errors_name_the_run(tiny_bert, tiny_data, tmp_path):
    config = sweep_file(tmp_path / "bad.yaml", tiny_bert, tiny_data, [{"name": "x", "options": {"lora_rank": 4}}])
    with pytest.raises(ConfigError, match=r"bad.yaml: run 1: unknown option\(s\) lora_rank \(lora_r\?\)$"):
        read_sweep(config)
    config = sweep_file(tmp_path / "bad.yaml", tiny_bert, tiny_data, [{"name": "x", "baseline": "y"}])
    with pytest.raises(ConfigError, match="baseline 'y' is not a run"):
        read_sweep(config)
    config = sweep_file(tmp_path / "bad.yaml", tiny_bert, tiny_data, [{"name": "x", "seeds": "three"}])
    with pytest.raises(ConfigError, match=r"bad.yaml: run 1: seeds must be a whole number, got 'three'$"):
        read_sweep(config)  # was a bare ValueError
    config = sweep_file(tmp_path / "bad.yaml", tiny_bert, tiny_data, [{"name": "x", "options": {"method": "qlora"}}])
    with pytest.raises(ConfigError, match=r"bad.yaml: run 1 \(x\): unknown method 'qlora'; choose one of"):
        read_sweep(config)


def test_reference_sweep_is_valid_and_ordered():
    _, runs = read_sweep("configs/sweep_reference.yaml")
    assert [r.name for r in runs][:5] == ["lpft", "linear-probe", "lora", "full", "lora-unfreeze"]
    assert [len(r.seeds) for r in runs][:2] == [3, 3]
    hyper = [(r.options["lr"], r.options["lora_r"], r.options["lora_alpha"]) for r in runs if "hyperparameters" in r.tables]
    assert hyper == [(1e-4, 8, 32), (5e-5, 16, 16), (1e-5, 8, 16)]


def test_ctrl_c_says_how_many_stopped_runs_kept_a_checkpoint(tiny_bert, tiny_data, tmp_path, monkeypatch):
    """A run stopped before its first checkpoint starts again: said so, not "stopped with a checkpoint"."""
    import subprocess

    import bankintent.sweep

    def started(command, run_dir, resume):
        run_dir.mkdir(parents=True, exist_ok=True)
        if "seed-43" in str(run_dir):  # the second seed got as far as a checkpoint
            (run_dir / "checkpoints").mkdir()
        return subprocess.Popen(["sleep", "30"])

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(bankintent.sweep, "start_run", started)
    monkeypatch.setattr(bankintent.sweep.time, "sleep", interrupted)
    runs = [{"name": "probe", "seeds": 2, "options": {"method": "linear-probe"}}]
    config = sweep_file(tmp_path / "sweep.yaml", tiny_bert, tiny_data, runs)
    with pytest.raises(KeyboardInterrupt, match=r"^interrupted: 2 run\(s\) in training stopped, 1 of them with a checkpoint \(the others "
                                                r"start again\); continue with: bankintent sweep --config "):
        run_sweep(config, tmp_path / "sweep", jobs=2)
