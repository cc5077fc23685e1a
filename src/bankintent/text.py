"""Text preprocessing shared by training and prediction (entity normalisation) and data augmentation."""

from __future__ import annotations

from bankintent.errors import ConfigError


def preprocess(text: str, options: dict) -> str:
    """Apply the preprocessing a model was trained with (``ModelSpec.preprocessing``) to one query."""
    if options.get("normalize_entities"):
        raise ConfigError("normalize_entities is not implemented yet")
    return text
