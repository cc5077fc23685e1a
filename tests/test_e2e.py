"""End to end on the real embedded all-MiniLM-L6-v2, on a 5-intent Banking77 subset, one epoch."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bankintent import Predictor, resolve_config, train
from bankintent.modeling import resolve_base_model

pytestmark = pytest.mark.e2e
CHANCE = 1 / 5


def cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "bankintent.cli", *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def lpft_run(banking77_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lpft")
    result = cli("train", "--config", "configs/lpft.yaml", "--data", banking77_subset, "--epochs", 1, "--output", out)
    assert "| lpft |" in result.stdout
    return out


def test_train_evaluate_predict_through_the_cli(lpft_run, tmp_path):
    metrics = json.loads((lpft_run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85 > 3 * CHANCE
    assert metrics["trainable_pct"] < 2 and metrics["adapter_bytes"] < 5e6
    assert (lpft_run / "learning_curves.png").is_file()

    result = cli("evaluate", lpft_run)
    assert "test: 100 in-scope queries" in result.stdout
    assert f"written in {lpft_run}: test_evaluation.json, test_predictions.csv, test_per_intent.csv" in result.stdout
    evaluation = json.loads((lpft_run / "test_evaluation.json").read_text())
    assert evaluation["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert {r["length"] for r in evaluation["accuracy_by_length"]} == {"<=5 words", "6-10 words", "11-20 words", ">20 words"}
    assert sum(r["queries"] for r in evaluation["accuracy_by_length"]) == 100
    for pair in evaluation["confused_pairs"]:
        assert pair["count"] >= 1 and pair["examples"]
    assert (lpft_run / "test_per_intent.csv").read_text().count("\n") == 6
    oos = evaluation["out_of_scope"]
    assert oos["oos_score"] == metrics["oos_score"] and oos["threshold"] == pytest.approx(metrics["oos_threshold"])
    coverage = pd.read_csv(lpft_run / "test_coverage.csv")
    everything = coverage[(coverage.score == oos["oos_score"]) & (coverage.coverage == 1.0)].iloc[0]
    assert everything.accuracy == pytest.approx(metrics["test_accuracy"])

    single = json.loads(cli("predict", lpft_run, "I lost my debit card", "--top-k", 3, "--json").stdout)
    assert single[0]["intent"] == "lost_or_stolen_card" and len(single[0]["top_k"]) == 3
    assert set(single[0]) == {"text", "intent", "confidence", "out_of_scope", "oos_score", "oos_threshold", "oos_method",
                              "closest_intent", "top_k"} and single[0]["out_of_scope"] is False
    assert single[0]["closest_intent"] == single[0]["intent"] and single[0]["oos_score"] <= single[0]["oos_threshold"]

    queries = tmp_path / "q.txt"
    queries.write_text("my card still has not arrived\nhow long does a transfer take\n")
    cli("predict", lpft_run, "--input", queries, "--output", tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["intent"] for line in lines] == ["card_arrival", "transfer_timing"]


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nhello,a\n")
    result = cli("train", "--data", tmp_path, "--output", tmp_path / "o", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}/train.csv: line 1: missing column 'category' (columns: 'text', 'label'); "
                                                  "name the columns to read with --text-column and --label-column (text_column, label_column in Python); "
                                                  "every file of a data set uses the same names"]
    result = cli("predict", tmp_path / "nothing", "hi", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "model folder not found" in result.stderr


def test_lora_adapter_loads_with_plain_peft(banking77_subset, tmp_path):
    """A CLS-pooled `lora` adapter (`--pooling cls`, the original study's head) works with the Hugging Face
    code users already know."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    metrics = train(resolve_config("configs/lora.yaml", pooling="cls", data=str(banking77_subset), epochs=1, output=str(tmp_path)))
    assert metrics["test_accuracy"] > 2 * CHANCE
    base = resolve_base_model(metrics["base_model"])
    labels = json.loads((tmp_path / "adapter" / "labels.json").read_text())
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels)), tmp_path / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    texts = ["I lost my debit card", "what exchange rate will I get", "my top up failed", "where is my card", "transfer is taking long"]
    with torch.inference_mode():
        plain = model(**tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")).logits.numpy()
    ours = Predictor.load(tmp_path).logits(texts)
    np.testing.assert_allclose(plain, ours, atol=1e-4)
    # the top intent, whether or not the out-of-scope fallback answers for a one-epoch model
    assert [labels[i] for i in plain.argmax(-1)] == [r["top_k"][0]["intent"] for r in Predictor.load(tmp_path).predict(texts)]
