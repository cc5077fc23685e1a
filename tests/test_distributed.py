"""Data-parallel training: 2 CPU processes (gloo, launched by torchrun through ``--nproc``) train what
one process trains with the same effective batch size."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from bankintent.launch import torchrun_command, without_nproc
from conftest import _save_tiny, _tiny_rows, tiny_options, write_csv

OPTIONS = {"method": "lpft", "epochs": 2, "lr": 1e-2, "max_length": 24, "probe_c": [1.0], "lora_dropout": 0.0}


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory):
    """Tiny BERT without dropout: the two runs then differ only by float rounding."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return _save_tiny(BertModel(config), tmp_path_factory.mktemp("no_dropout_bert"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """144 training queries: 9 full steps of 16, so no process pads its last batch."""
    folder = tmp_path_factory.mktemp("ddp_data")
    write_csv(folder / "train.csv", _tiny_rows(0, 40))
    write_csv(folder / "test.csv", _tiny_rows(1, 5))
    return folder


def cli_train(nproc: int, batch_size: int, output, **options) -> subprocess.CompletedProcess:
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={','.join(map(str, v)) if isinstance(v, list) else v}")
             for k, v in options.items()]
    result = subprocess.run([sys.executable, "-m", "bankintent.cli", "train", "--nproc", str(nproc), *flags,
                             f"--batch-size={batch_size}", f"--output={output}"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_train_like_one_with_the_same_effective_batch(no_dropout_bert, data, tmp_path):
    common = {**OPTIONS, "base_model": no_dropout_bert, "data": data}
    out = tmp_path / "ddp"
    cli_train(1, 16, tmp_path / "single", **common)
    result = cli_train(2, 8, out, **common)
    single, ddp = (json.loads((folder / "metrics.json").read_text()) for folder in (tmp_path / "single", out))

    assert (ddp["world_size"], ddp["effective_batch_size"]) == (2, 16)
    assert (single["world_size"], single["effective_batch_size"]) == (1, 16)
    assert ddp["hardware"].endswith(", 2 processes of 1 thread)") and single["hardware"].endswith(", 1 thread)")
    for key in ("optimizer_steps", "warmup_steps", "lr_scheduler", "peak_lr"):
        assert ddp[key] == single[key]
    assert ddp["optimizer_steps"] == 2 * 144 // 16 and ddp["lr_scheduler"] == "linear"
    assert abs(ddp["val_accuracy"] - single["val_accuracy"]) <= 0.01
    # every rank trained on its own half of each step's batch: the loss curves are the single run's
    curves = [pd.read_csv(folder / "history.csv") for folder in (out, tmp_path / "single")]
    pd.testing.assert_frame_equal(curves[0], curves[1], rtol=1e-3)
    assert curves[0].val_loss.iloc[-1] < curves[0].val_loss.iloc[0]  # it learned

    assert [p.parent for p in out.rglob("COMPLETE")] == [out / "adapter"]  # one model folder
    assert not list(out.glob("*.partial"))
    assert result.stdout.count("| lpft |") == 1  # only rank 0 reports ...
    assert result.stderr.count("linear probe: C=") == 1  # ... logs ...
    assert result.stderr.count("probe: embedding train: 100%") == 1  # ... and shows progress
    assert result.stderr.count("duplicated row(s) kept") == 2  # the data's notes once (train.csv, test.csv), not per process
    assert "load_best_model_at_end" not in result.stderr  # averaged weights are kept, as intended: no warning that they are
    again = cli_train(2, 8, out, resume=True, **common)  # finished already: nothing to resume, said and reported once
    assert again.stdout.count("| lpft |") == 1 and again.stderr.count("finished training already") == 1


def test_torchrun_by_hand_refuses_a_one_process_method_before_the_model_loads(tiny_bert, tiny_data, tmp_path, monkeypatch):
    from bankintent import training
    from bankintent.config import resolve_config
    from bankintent.errors import ConfigError

    def no_model(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(training, "build_model", no_model)
    cfg = resolve_config(None, **tiny_options(tiny_bert, tiny_data, tmp_path / "run", method="contrastive"))
    with pytest.raises(ConfigError, match=r"^2 processes \(torchrun\): contrastive .* trains in one process.*\(run bankintent train "
                                          r"without torchrun\), or give a method that trains across processes \(--method lpft\)$"):
        training._resolve(cfg, processes=2)  # what the user typed, not --nproc
    with pytest.raises(AssertionError, match="the model was loaded"):  # one process: the check passes, the model loads
        training._resolve(cfg, processes=1)


def test_nproc_is_not_passed_on():
    argv = ["train", "--nproc", "2", "--epochs", "1", "--nproc=3", "--output", "runs/x"]
    assert without_nproc(argv) == ["train", "--epochs", "1", "--output", "runs/x"]
    command = torchrun_command(4, argv)
    assert command[1:6] == ["-m", "bankintent.launch", "--standalone", "--nproc-per-node=4", "-m"]
    assert command[6:] == ["bankintent.cli", "train", "--epochs", "1", "--output", "runs/x"]


def test_nproc_checks_the_output_and_the_data_once_before_launching(tiny_data, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    cases = [(["--nproc", "2", "--data", str(tmp_path / "nosuch"), "--output", str(tmp_path / "a")], "nosuch: no such data folder"),
             (["--nproc", "2", "--data", str(tiny_data), "--output", str(full)], "full: output folder holds files that are not a run's (notes.txt)"),
             (["--nproc", "0", "--output", str(tmp_path / "b")], "--nproc must be at least 1, got 0"),
             (["--nproc", "2", "--data", str(tiny_data), "--output", str(tmp_path / "c")], "linear-probe trains no weights by gradient"),
             (["--nproc", "2", "--data", str(tiny_data), "--output", str(tmp_path / "c"), "--method", "contrastive"],
              "--nproc 2: contrastive (the few-shot recipe, the default for few examples per intent) trains in one process"),
             (["--nproc", "2", "--data", str(tiny_data), "--output", str(tmp_path / "c"), "--method", "contrastive"],
              "train it in one process (leave --nproc out), or give a method that trains across processes (--method lpft)")]
    for flags, message in cases:
        done = subprocess.run([sys.executable, "-m", "bankintent.cli", "train", "--method", "linear-probe", *flags],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr and "torch.distributed" not in done.stderr
        assert message in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "c").exists()
