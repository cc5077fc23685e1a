"""Training configuration: one typed dataclass, per-method recipes, YAML files that mirror it.

Precedence, lowest first: dataclass defaults < the method's recipe < a YAML config file < command-line
flags. The files in ``configs/`` hold exactly the recipes below (a test checks that they agree).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bankintent.errors import ConfigError

DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

METHODS = ("lpft", "lora", "full", "lora-unfreeze", "linear-probe")

# The recipes. `lora` is the reference recipe of the original study (CLS-pooled sequence-classification
# head + LoRA); `lpft` (linear probe, then LoRA from the probe's head, on mean-pooled embeddings) is the
# default because the embedded base model is a mean-pooling sentence encoder.
RECIPES: dict[str, dict[str, Any]] = {
    "lpft": {"pooling": "mean", "lr": 5e-4, "epochs": 4, "lora_r": 8, "lora_alpha": 32, "average_weights": True},
    "lora": {"pooling": "cls", "lr": 1e-4, "epochs": 4, "lora_r": 8, "lora_alpha": 32},
    "full": {"pooling": "cls", "lr": 5e-5, "epochs": 4},
    "lora-unfreeze": {"pooling": "cls", "lr": 1e-4, "epochs": 4, "lora_r": 8, "lora_alpha": 32},
    "linear-probe": {"pooling": "mean", "epochs": 0},
}


@dataclass
class TrainConfig:
    """Every option of ``bankintent train``; the YAML keys are these field names."""

    method: str = "lpft"
    base_model: str = DEFAULT_BASE_MODEL
    data: str = "banking77"
    text_column: str = "text"
    label_column: str = "category"
    pooling: str = "mean"  # "mean" (mean-pooled, L2-normalised embeddings) or "cls" (the model's own head)
    epochs: int = 4
    lr: float = 5e-4
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 64
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # None: chosen from the base model's architecture
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    early_stopping_patience: int = 2
    average_weights: bool = False  # keep the mean of the weights at each epoch's end, not the best epoch's
    unfreeze_layers_per_epoch: int = 2  # lora-unfreeze: encoder layers joining per epoch, top first
    probe_c: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0, 30.0, 100.0])  # probe: C grid, 5-fold CV
    normalize_entities: bool = False  # replace amounts, currencies, dates, numbers by placeholders
    augment: str | None = None  # "confused-pairs": perturbed copies of the most confused intents' queries
    oos_coverage: float = 0.95  # out-of-scope threshold: share of in-scope validation queries kept
    val_fraction: float = 0.1
    split_seed: int = 42  # fixed so that every run sees the same validation split
    max_train_samples: int | None = None
    seed: int = 42
    allow_pickle: bool = False  # accept a base model stored as pickled .bin weights (they can run code)
    output: str = "runs/latest"
    overwrite: bool = False  # replace what a non-empty --output folder holds (without it, training refuses)
    resume: bool = False
    strict_data: bool = False  # refuse a data file with empty rows instead of skipping them with a warning
    oos_label: str = "out_of_scope"  # rows with this label are out-of-scope examples, not an intent
    oos_file: str | None = None  # a file of out-of-scope example queries (.txt one a line, or .csv/.jsonl)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling must be 'mean' or 'cls', not {self.pooling!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if isinstance(self.probe_c, (int, float)):
            self.probe_c = [float(self.probe_c)]
        for name in ("epochs", "batch_size", "max_length", "lora_r"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lpft", "lora", "lora-unfreeze")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


def load_yaml_file(path: Path, what: str = "config file") -> Any:
    """The parsed content of a YAML file; a missing file or bad YAML raises a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    values = load_yaml_file(path)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}")
    return values


def resolve_config(config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < recipe of the chosen method < config file < explicit overrides (None means unset)."""
    file_values = read_yaml(config_file) if config_file else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
    method = given.get("method", file_values.get("method", TrainConfig.method))
    if method not in RECIPES:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return TrainConfig(**{**RECIPES[method], **file_values, **given, "method": method})
