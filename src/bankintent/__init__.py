"""bankintent: parameter-efficient (LoRA) intent classification for banking chatbots.

The names below are imported when first used (PEP 562), so that ``import bankintent`` and the
command's ``--help`` do not pay for PyTorch and Transformers: ``from bankintent import Predictor``
imports them, ``from bankintent.errors import DataError`` does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from bankintent.errors import BankintentError, ConfigError, DataError, ModelError

if TYPE_CHECKING:
    from bankintent.config import TrainConfig, resolve_config
    from bankintent.predict import Predictor

__all__ = ["Predictor", "TrainConfig", "resolve_config", "train", "evaluate", "BankintentError", "ConfigError", "DataError", "ModelError"]

_LAZY = {"Predictor": "bankintent.predict", "TrainConfig": "bankintent.config", "resolve_config": "bankintent.config"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bankintent")  # pyproject.toml's, the one place it is written
    except PackageNotFoundError:  # a source tree that was not installed
        return "0+unknown"


def __getattr__(name: str):
    if name == "__version__":
        globals()[name] = _version()
        return globals()[name]
    if name not in _LAZY:
        raise AttributeError(f"module 'bankintent' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"__version__"})


def train(config: TrainConfig | None = None, **options) -> dict:
    """Train and evaluate; returns the content of metrics.json. ``train(method="lora", output="runs/x")``,
    or ``train(TrainConfig(...))``: the options a config was made with (``given_options``) are taken as
    the same keywords would be, the method's recipe filling in the rest; ``options`` given with a
    ``config`` override its values, as flags do a config file's."""
    from bankintent.config import TrainConfig, given_options, resolve_config

    if config is not None and not isinstance(config, TrainConfig):
        raise ConfigError(f"train(config): expected a bankintent.TrainConfig, got {type(config).__name__} {str(config)[:40]!r}; "
                          f"give options by name: train(data=..., output=...)")
    cfg = resolve_config(None, **{**(given_options(config) if config else {}), **options})  # a mistyped option: said at once
    from bankintent.training import train as run  # PyTorch and Transformers: seconds to import

    return run(cfg)


def evaluate(run, split: str = "test", data=None, **options) -> dict:
    """Evaluate the model in ``run`` as ``bankintent evaluate`` does: on ``split`` of its own data, or
    on ``data``, a file of labelled queries (evaluated as the test split); returns the summary
    (accuracy, macro-F1, the fallback's coverage, ...) and writes the evaluation files into the run, or
    into ``output=``. ``options``: ``evaluate_run``'s (``output``, ``overwrite``, ``text_column``, ...)."""
    import inspect
    import os

    from bankintent.config import SPLITS, unknown_names

    if data is not None and not isinstance(data, (str, os.PathLike)):  # not train's advice: a folder or 'banking77' is no held-out file
        hint = "; save it first, e.g. frame.to_csv('held_out.csv', index=False)" if type(data).__name__ == "DataFrame" else ""
        raise ConfigError(f"evaluate: data must be a file of labelled queries (.csv, .tsv, .jsonl or .parquet), got "
                          f"{type(data).__name__}{hint}")
    from bankintent.evaluation import evaluate_run  # PyTorch and Transformers: seconds to import

    known = [name for name in inspect.signature(evaluate_run).parameters if name not in ("run_dir", "split", "data")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"evaluate: unknown option(s) {unknown_names(unknown, known)}")
    if split not in SPLITS:  # another name evaluated the validation split and wrote it as that name's
        raise ConfigError(f"evaluate: split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    try:
        return evaluate_run(run, split, None if data is None else os.fspath(data), **options)
    except BankintentError as exc:  # its messages name the command's flags
        if "--" not in str(exc) or "in Python" in str(exc):  # none, or said already in its own words
            raise
        raise type(exc)(f"{exc} (in Python each --flag is a keyword: --output DIR is output=DIR, --overwrite is overwrite=True)") from None
