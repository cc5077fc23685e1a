"""bankintent: parameter-efficient (LoRA) intent classification for banking chatbots."""

from bankintent.config import TrainConfig, resolve_config
from bankintent.errors import BankintentError, ConfigError, DataError, ModelError
from bankintent.predict import Predictor

__all__ = ["Predictor", "TrainConfig", "resolve_config", "train", "BankintentError", "ConfigError", "DataError", "ModelError"]
__version__ = "0.1.0"


def train(config: TrainConfig | None = None, **options) -> dict:
    """Train and evaluate; returns the content of metrics.json. ``train(method="lora", output="runs/x")``."""
    from bankintent.training import train as run

    return run(config or resolve_config(None, **options))
