"""Training configuration: one typed dataclass, per-method recipes, YAML files that mirror it.

Precedence, lowest first: dataclass defaults < the method's recipe < a YAML config file < command-line
flags. The files in ``configs/`` hold exactly the recipes below (a test checks that they agree).
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import functools
import math
import os
import socket
import tempfile
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from bankintent.errors import ConfigError

DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

METHODS = ("lpft", "lpft-full", "lora", "full", "lora-unfreeze", "linear-probe", "contrastive")
LORA_METHODS = ("lpft", "lora", "lora-unfreeze")  # the others train every weight, or none
# The default method: decided by the data once it is read (``for_data``): ``contrastive`` where the
# median intent has fewer than 20 training examples (``Splits.few_examples``, with or without a validation
# file), where it scored above lpft and the linear probe (docs/results/fewshot), else ``lpft``.
AUTO = "auto"

# The recipes. `lora`, `full` and `lora-unfreeze` are the original study's methods; they train with
# the base model's own pooling (``pooling: auto``, ``modeling.base_pooling``: mean pooling for a
# sentence encoder such as the embedded all-MiniLM-L6-v2, the model's classification head otherwise);
# ``pooling: cls`` is the study's literal recipe. Their learning rates were chosen on validation from the
# grid of configs/sweep_study.yaml (docs/results/study), with up to 8 epochs of which early stopping keeps
# the best. `lpft` (linear probe, then LoRA from the probe's head, on mean-pooled embeddings) is the default.
RECIPES: dict[str, dict[str, Any]] = {
    "lpft": {"pooling": "mean", "lr": 5e-4, "epochs": 4, "lora_r": 8, "lora_alpha": 32, "average_weights": True},
    # LP-FT as Kumar et al. (2022) wrote it: the linear probe, then every weight fine-tuned from the probe's head
    "lpft-full": {"pooling": "mean", "lr": 1e-4, "epochs": 4, "average_weights": True},
    "lora": {"pooling": "auto", "lr": 1e-3, "epochs": 8, "lora_r": 8, "lora_alpha": 32},
    "full": {"pooling": "auto", "lr": 1e-4, "epochs": 8},
    "lora-unfreeze": {"pooling": "auto", "lr": 1e-3, "epochs": 8, "lora_r": 8, "lora_alpha": 32},
    "linear-probe": {"pooling": "mean", "epochs": 0},
    # few-shot: the sentence encoder fine-tuned contrastively on pairs of same-intent queries
    # (sentence-transformers, in-batch negatives), then the linear probe on its embeddings
    "contrastive": {"pooling": "mean", "lr": 5e-5, "epochs": 1, "batch_size": 32},
}

# The options each method has no use for: one set to other than its recipe's value changes nothing,
# and training says so rather than let the user believe it did (``unused_options``).
_LORA = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")
_FINE_TUNING = ("lr", "batch_size", "weight_decay", "warmup_ratio", "label_smoothing", "early_stopping_patience",
                "average_weights")
UNUSED: dict[str, tuple[str, ...]] = {
    "lpft": ("unfreeze_layers_per_epoch", "pairs_per_example"),
    "lpft-full": (*_LORA, "unfreeze_layers_per_epoch", "pairs_per_example"),
    "lora": ("unfreeze_layers_per_epoch", "probe_c", "pairs_per_example"),
    "full": (*_LORA, "unfreeze_layers_per_epoch", "probe_c", "pairs_per_example"),
    "lora-unfreeze": ("probe_c", "pairs_per_example"),
    "linear-probe": ("epochs", *_FINE_TUNING, *_LORA, "unfreeze_layers_per_epoch", "pairs_per_example"),
    "contrastive": (*_LORA, "label_smoothing", "early_stopping_patience", "average_weights", "unfreeze_layers_per_epoch"),
}


def option(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           choices: tuple[str, ...] | None = None) -> Any:
    """A ``TrainConfig`` field with its one-line documentation: the help of its ``train`` flag and the
    meaning of its YAML key, written once here (``bankintent train --help`` shows them)."""
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every option of ``bankintent train``; the YAML keys are these field names, documented by their
    ``help`` (``dataclasses.fields(TrainConfig)[i].metadata["help"]``)."""

    method: str = option(AUTO, "recipe: auto (lpft, or contrastive where the median intent has fewer than 20 training "
                         "examples), lpft (linear probe, then LoRA), lpft-full (linear probe, then every weight), lora, full (every weight), "
                         "lora-unfreeze (LoRA, then top layers), linear-probe (frozen encoder), contrastive (few-shot: the encoder "
                         "fine-tuned on pairs of same-intent queries, then the linear probe)", choices=(AUTO, *METHODS))
    base_model: str = option(DEFAULT_BASE_MODEL, "encoder to fine-tune: a Hugging Face model name or a local folder")
    data: str = option("banking77", "'banking77', a folder (train, optional valid|validation|dev and test .csv/.tsv/.jsonl/.parquet), or one training file")
    text_column: str = option("text", "column holding the query text in the data files")
    label_column: str = option("category", "column holding the intent label in the data files")
    pooling: str = option("mean", "query embedding: mean (mean-pooled, L2-normalised), cls (the model's own head on the first "
                          "token) or auto (the base model's own: mean for a sentence-transformers encoder, else cls)",
                          choices=("auto", "mean", "cls"))
    epochs: int = option(4, "passes over the training data (0: the linear probe only)")
    lr: float = option(5e-4, "peak learning rate")
    batch_size: int = option(32, "training queries per step")
    eval_batch_size: int = option(128, "queries per batch when evaluating")
    max_length: int = option(64, "tokens kept of each query; longer queries are truncated")
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha: the update is scaled by alpha / rank")
    lora_dropout: float = option(0.05, "dropout on the LoRA layers' input")
    target_modules: list[str] | None = option(None, "layers LoRA adapts, comma-separated (default: chosen from the base model's architecture)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_ratio: float = option(0.06, "share of the training steps spent warming the learning rate up")
    label_smoothing: float = option(0.0, "share of each training label's probability spread over the other intents "
                                    "(cross-entropy with label smoothing; 0: none)")
    rdrop: float = option(0.0, "R-Drop: weight of the mean of KL(p||q) and KL(q||p) between two dropout passes' predictions, "
                          "averaged over the batch, added to their mean cross-entropy (0: one pass, plain cross-entropy)")
    early_stopping_patience: int = option(2, "epochs without a better validation score before training stops")
    average_weights: bool = option(False, "keep the mean of the weights at each epoch's end, not the best epoch's")
    unfreeze_layers_per_epoch: int = option(2, "lora-unfreeze: encoder layers joining the training each epoch, top first")
    probe_c: list[float] = option(help="linear probe: inverse regularisation strengths tried, best by 5-fold cross-validation",
                                  factory=lambda: [1.0, 3.0, 10.0, 30.0, 100.0])
    normalize_entities: bool = option(False, "replace amounts, currencies, dates and numbers by placeholders")
    augment: str | None = option(None, "confused-pairs: add perturbed copies of the most confused intents' queries (default: none)",
                                 choices=("confused-pairs",))
    intent_names: str = option("auto", "add each intent's name, as words ('card_arrival': 'card arrival'), to its training queries: "
                               "auto (for small data, when the names are words), on, off", choices=("auto", "on", "off"))
    thin_repeats: int = option(4, "repeat each thin intent's training queries (fewer than 20 and at most half the median "
                                  "intent's) up to this many times in all, to about the median's count (1: never)")
    oos_coverage: float = option(0.95, "out-of-scope threshold: share of new in-scope queries answered (set on the validation queries)")
    val_fraction: float = option(0.1, "share of the training file held out for validation when the data has no validation file")
    split_seed: int = option(42, "seed of the validation split (fixed, so that every run sees the same split)")
    max_train_samples: int | None = option(None, "train on a stratified sample of this many queries (default: all)")
    shots: int | None = option(None, "keep this many training examples per intent, drawn from the training file before any "
                               "validation split (few-shot experiments; default: all)")
    shots_seed: int | None = option(None, "seed of the --shots draw: the same seed draws the same examples (default: --seed, so "
                                    "that a sweep's seeds are also different draws)")
    pairs_per_example: int | None = option(None, "contrastive: same-intent pairs drawn per training query for each epoch "
                                           "(default: about 2,000 pairs in all, 1 to 4 a query)")
    seed: int = option(42, "seed of the training run (initialisation, shuffling)")
    allow_pickle: bool = option(False, "accept a base model stored as pickled .bin weights (loading them can run code)")
    output: str = option("runs/latest", "run folder: the model, its metrics, curves and evaluation")
    overwrite: bool = option(False, "replace what a non-empty output folder holds (without it, training refuses)")
    resume: bool = option(False, "continue the interrupted run in the output folder from its last checkpoint, "
                                        "with the options its config.yaml records (other options are refused)")
    strict_data: bool = option(False, "refuse a data file with empty or unlabelled rows instead of skipping them with a warning")
    oos_label: str = option("out_of_scope", "rows with this label are out-of-scope examples, not an intent")
    oos_file: str | None = option(None, "file of out-of-scope example queries: .txt (one a line), .csv, .jsonl or .parquet (default: none)")

    def __new__(cls, *args, **kwargs):
        # which options the config was made with, however equal to the defaults (``given_options``)
        unknown = sorted(set(kwargs) - set(FIELD_NAMES))
        if unknown:  # as train(epoch=2) says it, where the dataclass's TypeError would name no option meant
            raise ConfigError(f"{cls.__name__}: unknown option(s) {unknown_names(unknown, FIELD_NAMES)}")
        self = super().__new__(cls)
        object.__setattr__(self, "_given", frozenset(f.name for f in fields(cls)[:len(args)]) | frozenset(kwargs))
        return self

    def __post_init__(self) -> None:
        for name, (kind, optional) in _scalar_kinds().items():
            setattr(self, name, as_kind(name, getattr(self, name), kind, optional))
        for f in fields(self):  # the options with a fixed set of values: method, pooling, augment, intent_names
            value, allowed = getattr(self, f.name), f.metadata.get("choices")
            if allowed and value is not None and value not in allowed:
                raise ConfigError(f"unknown {f.name} {value!r}; choose one of {', '.join(allowed)}")
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if isinstance(self.probe_c, (int, float, str)):  # a YAML file's 3, "3" or "1,3"
            self.probe_c = str(self.probe_c).replace(",", " ").split() if isinstance(self.probe_c, str) else [self.probe_c]
        if isinstance(self.probe_c, (list, tuple)):
            self.probe_c = [as_kind("probe_c", c, float, optional=False) for c in self.probe_c]
        if self.resume and self.overwrite:
            raise ConfigError(f"{self.output}: --resume continues the run in the output folder and --overwrite replaces it; "
                              f"give one of them (in Python: resume=True or overwrite=True)")
        if self.rdrop < 0:
            raise ConfigError(f"rdrop must be at least 0, got {self.rdrop}")
        if self.thin_repeats < 1:
            raise ConfigError(f"thin_repeats must be at least 1 (1: no repeats), got {self.thin_repeats}")
        if self.rdrop and self.method in ("linear-probe", "contrastive"):  # auto becomes contrastive on small data
            raise ConfigError(f"rdrop: {self.method} fits its classifier as a logistic regression, with no dropout passes to "
                              f"compare; leave rdrop at 0")
        if self.rdrop and self.epochs == 0:
            raise ConfigError("rdrop: with 0 epochs nothing is fine-tuned; leave rdrop at 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be at least 0 and below 1, got {self.label_smoothing}")
        if self.shots is not None and self.shots < 1:
            raise ConfigError(f"shots must be at least 1, got {self.shots}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if not 0 < self.lr < math.inf:  # a nan fails every comparison
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (0 <= self.lora_dropout < 1 and 0 <= self.warmup_ratio < 1 and self.weight_decay >= 0):
            raise ConfigError(f"lora_dropout and warmup_ratio must be at least 0 and below 1, weight_decay at least 0 "
                              f"(got {self.lora_dropout}, {self.warmup_ratio}, {self.weight_decay})")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError(f"max_train_samples must be positive, got {self.max_train_samples}")
        if not self.probe_c or not all(0 < c < math.inf for c in self.probe_c):
            raise ConfigError(f"probe_c must be positive numbers, got {self.probe_c}")
        if not 0 < self.oos_coverage <= 1:
            share = f" (a share: {self.oos_coverage / 100:g} for {self.oos_coverage:g}%?)" if 1 < self.oos_coverage <= 100 else ""
            raise ConfigError(f"oos_coverage must be in (0, 1], got {self.oos_coverage}{share}")
        for name in ("epochs", "batch_size", "max_length", "lora_r", "pairs_per_example"):
            if getattr(self, name) is not None and getattr(self, name) < (0 if name == "epochs" else 1):
                raise ConfigError(f"{name} must be {'0 or more' if name == 'epochs' else 'positive'}, got {getattr(self, name)}")

    @property
    def draw_seed(self) -> int:
        """The seed of the ``shots`` draw: ``shots_seed``, else the run's ``seed``."""
        return self.seed if self.shots_seed is None else self.shots_seed

    @property
    def uses_lora(self) -> bool:
        return self.method in LORA_METHODS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path, comment: str = "") -> None:
        """Write the options as YAML, after ``comment`` (lines written as ``#`` comments) where given."""
        head = "".join(f"# {line}\n" for line in comment.splitlines())
        path.write_text(head + yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


@functools.cache
def _scalar_kinds() -> dict[str, tuple[type, bool]]:
    """The type of each ``TrainConfig`` field that holds one value (``int | None`` as int), and whether
    it may be None; lists aside."""
    import types
    import typing

    kinds = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kind = next((t for t in typing.get_args(hint) if t is not type(None)), None) if union else hint
        if kind in (bool, int, float, str):
            kinds[name] = kind, union and type(None) in typing.get_args(hint)
    return kinds


SPLITS = ("test", "validation")  # what evaluate measures a model on


def as_kind(name: str, value: Any, kind: type, optional: bool = True) -> Any:
    """``value`` as the option ``name``'s ``kind``, or a one-line ConfigError. A YAML file reads
    ``1e-4`` and a quoted number as text, and ``on`` as true: a number written as text is taken as
    that number, on/off for ``intent_names`` as the words; anything else of the wrong type is refused
    (it failed deep inside training with a TypeError), None too where the option is not ``optional``."""
    if (value is None and optional) or type(value) is kind:  # exactly: a bool is an int to isinstance
        return value
    if kind is str and isinstance(value, os.PathLike):  # data=Path("my_intents")
        return os.fspath(value)
    if kind is str and name == "intent_names" and isinstance(value, bool):
        return "on" if value else "off"
    if kind in (int, float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and (kind is float or number.is_integer()):
            return kind(number)
    wanted = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}[kind]
    if name == "data":
        wanted = "a .csv, .tsv, .jsonl or .parquet file, a folder holding train.csv, or 'banking77'"
    shown = " ".join(repr(value).split())
    got = f"{type(value).__name__} {shown[:60]}{'...' if len(shown) > 60 else ''}" if kind is str else shown
    hint = "; save a DataFrame first, e.g. frame.to_csv('train.csv', index=False)" if type(value).__name__ == "DataFrame" else ""
    raise ConfigError(f"{name} must be {wanted}, got {got}{hint}")


def load_yaml_file(path: Path, what: str = "config file") -> Any:
    """The parsed content of a YAML file; a missing file or bad YAML raises a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def check_output_folder(path: str | Path) -> None:
    """Refuse an ``--output`` that names a file: every command writes a folder there."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"{path}: exists and is not a folder; choose another --output")


def check_writable(path: str | Path, option: str = "--output", beside: bool = False) -> None:
    """Refuse, before the work, a place the command could not write in at its end (a read-only mount,
    another user's folder): a file is made and removed in the nearest of ``path`` and its parents that
    is a folder (asking the file system, as ``os.access`` does, passes a superuser); ``beside``: a
    folder written beside itself first and renamed, whose parent must be writable."""
    path = Path(path)
    folder = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists() and not (beside and p == path.absolute()))
    if folder == path.absolute() and folder.is_file():  # a file the command replaces: written beside it
        folder = folder.parent
    elif not folder.is_dir():
        raise ConfigError(f"{path}: {folder} is a file, not a folder; choose another {option}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be written ({folder}: {exc.strerror}); choose another {option}") from None


def check_port(host: str, port: int) -> None:
    """Refuse, before any model loads (here: before the service's imports, seconds), a port the service
    could not listen on (in use, or not allowed)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    try:
        with socket.create_server((host, port), reuse_port=False) as _:  # uvicorn binds with SO_REUSEADDR too
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        hint = "another --port?" if exc.errno == errno.EADDRINUSE else "check --host and --port"
        raise ConfigError(f"cannot listen on {host}:{port}: {reason} ({hint})") from None


def closest_name(name: str, known) -> str | None:
    """The name of ``known`` that ``name`` is most likely a misspelling of (difflib's closest match,
    similarity 0.6 or more; ``name`` itself left out), or None: a mistyped option, or label."""
    close = difflib.get_close_matches(name, [other for other in known if other != name], n=1)
    return close[0] if close else None


def first_few(items, count: int) -> str:
    """``a, b, c, ...``: the first ``count`` of ``items`` (texts) for a message, and an ellipsis where there are more."""
    items = list(items)
    return ", ".join(items[:count]) + (", ..." if len(items) > count else "")


def unknown_names(unknown: list[str], known) -> str:
    """``epoch (epochs?), lora_rank (lora_r?)``: each unknown option name with the one probably meant."""
    return ", ".join(f"{name} ({close}?)" if (close := closest_name(name, known)) else name for name in unknown)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    values = load_yaml_file(path)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {unknown_names(unknown, FIELD_NAMES)}")
    return values


MODEL_DIR = "adapter"  # a run folder's model folder: what predict, serve and export load
EXPORT_RECORD = "export.json"  # an export's record of how it was made, and from which model folder ("source")


def export_record(folder: str | Path) -> dict[str, Any]:
    """What ``folder``'s ``EXPORT_RECORD`` says; empty for a folder that is no export, or whose record
    cannot be read (it then answers as an export with no run around it)."""
    import json

    try:
        record = json.loads((Path(folder) / EXPORT_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def run_config_file(folder: str | Path) -> Path | None:
    """The ``config.yaml`` of the run ``folder`` is (or whose model folder, ``MODEL_DIR``, it is), or of the
    run an export was made from (its ``EXPORT_RECORD`` names the model folder) while that run is there;
    None for a model with no run around it (an export moved to another machine)."""
    folder = Path(folder)
    for saved in [folder / "config.yaml"] + ([folder.parent / "config.yaml"] if folder.name == MODEL_DIR else []):
        if saved.is_file():
            return saved
    source = export_record(folder).get("source")
    if not isinstance(source, str) or Path(source).resolve() == folder.resolve():
        return None
    return run_config_file(source)


def trained_text_column(folder: str | Path) -> str:
    """The query column of the data a run trained on (``run_config_file``, or as an export recorded it,
    so that an export handed to another team reads the same files), so that a file laid out like the
    training data needs no ``--text-column``; ``text`` for a model with neither."""
    saved = run_config_file(folder)
    return (read_yaml(saved).get("text_column") if saved else export_record(folder).get("text_column")) or "text"


def resolve_config(config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < recipe of the chosen method < config file < explicit overrides (None means unset).
    ``resume`` with an ``output`` run folder and no config file takes the run's ``config.yaml`` as the
    config file: ``train --output RUN --resume`` continues the run as it was started."""
    given = {k: v for k, v in overrides.items() if v is not None}
    recorded = Path(str(given.get("output", ""))).expanduser() / "config.yaml"
    if config_file is None and given.get("resume") and given.get("output") and recorded.is_file():
        config_file = recorded
    file_values = read_yaml(config_file) if config_file else {}
    unknown = sorted(set(given) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown_names(unknown, FIELD_NAMES)}")
    method = given.get("method", file_values.get("method", TrainConfig.method))
    if method not in RECIPES and method != AUTO:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join((AUTO, *METHODS))}")
    recipe = RECIPES["lpft" if method == AUTO else method]  # auto: lpft's, until the data decides (for_data)
    return TrainConfig(**{**recipe, **file_values, **given, "method": method})


def recipe_values(method: str) -> dict[str, Any]:
    """Every option's value in ``method``'s recipe: the defaults, with the recipe's own over them."""
    defaults = {f.name: (f.default_factory() if f.default is MISSING else f.default) for f in fields(TrainConfig)}
    return {**defaults, **RECIPES.get(method, {})}


def given_options(config: TrainConfig) -> dict[str, Any]:
    """The options a ``TrainConfig`` was made with (its constructor's arguments, or set since to other
    than the defaults), not the defaults it filled in. Given to ``resolve_config``,
    ``TrainConfig(method="contrastive")`` trains with the contrastive recipe's learning rate and epochs,
    as ``train(method="contrastive")`` and ``--method contrastive`` do, where the dataclass defaults
    would have overridden them; ``TrainConfig(method="lpft", average_weights=False)`` keeps the value
    given, though it is the default; a config ``resolve_config`` made resolves to itself."""
    defaults = recipe_values(AUTO)
    given = getattr(config, "_given", frozenset())
    return {f.name: getattr(config, f.name) for f in fields(config) if f.name in given or getattr(config, f.name) != defaults[f.name]}


def unused_options(cfg: TrainConfig) -> list[str]:
    """``name value`` of each option ``cfg.method`` (decided, not ``auto``) has no use for that is set
    to other than the method's recipe value (``--epochs 8`` for a linear probe, ``--lora-r`` for full)."""
    recipe = recipe_values(cfg.method)
    return [f"{name} {getattr(cfg, name)}" for name in UNUSED.get(cfg.method, ()) if getattr(cfg, name) != recipe[name]]


def recorded_path(key: str, value: str | None) -> str | None:
    """A path option (``data``, ``oos_file``, ``base_model``, ``output``) as a run's config.yaml records
    it, so that the run folder works from any directory: absolute; Banking77's name, and a base model
    that is no local folder (a hub id), as they are."""
    if value is None or key == "data" and value == "banking77":
        return value
    path = Path(value).expanduser()
    return value if key == "base_model" and not path.is_dir() else str(path.resolve())


def differences(was: dict, now: dict) -> str | None:
    """``key old -> new`` for each option that differs between ``was`` and ``now``, in key order;
    None if none does (a sweep's run, a search's study or a training run resumed with other options)."""
    absent = object()  # not given: differs from any value, None included
    changed = sorted(key for key in set(was) | set(now) if was.get(key, absent) != now.get(key, absent))
    return "; ".join(f"{key} {was.get(key, '(not given)')} -> {now.get(key, '(not given)')}" for key in changed) or None


def for_data(cfg: TrainConfig, few_examples: bool) -> TrainConfig:
    """``cfg`` with the ``auto`` method decided by the data: ``contrastive`` for few examples per intent
    (``Splits.few_examples``), else ``lpft``. Options still at lpft's recipe values take the chosen
    recipe's (an option set to exactly lpft's value is taken for one left at it); options given
    otherwise are kept."""
    if cfg.method != AUTO:
        return cfg
    method = "contrastive" if few_examples else "lpft"
    lpft, chosen = recipe_values("lpft"), recipe_values(method)
    changes = {name: chosen[name] for name in set(RECIPES["lpft"]) | set(RECIPES[method])
               if getattr(cfg, name) == lpft[name]}
    return dataclasses.replace(cfg, **changes, method=method)


@dataclass
class DistillConfig:
    """The options of ``bankintent distill`` (``bankintent.distill.distill``'s keyword arguments), each
    documented once by its ``help``, as ``TrainConfig``'s."""

    layers: int = option(3, "encoder layers the student keeps: the top layer of each of LAYERS equal blocks of the teacher's "
                            "(all of them: a student as deep as the teacher, as --teachers distils an ensemble)")
    teachers: list[str] | None = option(None, "more runs trained on the same data (other seeds, other methods): the student "
                                        "matches the mean of their logits and the teacher's, an ensemble in one model "
                                        "(default: the teacher alone)")
    unlabelled: str | None = option(None, "a .txt, .csv, .jsonl or .parquet file of unlabelled queries (e.g. chat logs) the teacher labels "
                                    "(default: none)")
    epochs: int = option(5, "passes over the distillation queries; the epoch with the best validation accuracy is kept "
                                  "(the last, where the data has no validation split)")
    temperature: float = option(2.0, "softens the teacher's and the student's probabilities in the KL term")
    alpha: float = option(0.5, "weight of the cross-entropy on the true labels; 1 - alpha: the KL term's")
    learning_rate: float = option(1e-4, "peak of AdamW's linear warm-up and decay")
    batch_size: int = option(32, "queries per optimizer step")
    augment_copies: int = option(1, "perturbed copies of each training query, labelled by the teacher")
    seed: int = option(42, "seed of the copies, the order of the queries and the student's dropout")

    def __post_init__(self) -> None:
        for name, low in (("epochs", 0), ("batch_size", 1), ("augment_copies", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.temperature <= 0 or self.learning_rate <= 0:
            raise ConfigError(f"temperature and learning_rate must be positive, got {self.temperature} and {self.learning_rate}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be between 0 and 1, got {self.alpha}")
