"""The service a team would otherwise write by hand, as the peer ``serve_load.py --peer`` measures
ours against: FastAPI and a Hugging Face ``pipeline("text-classification")`` on the trained model's
merged weights (``bankintent export RUN --format merged``), one forward pass per request (no
batching), answering ``POST /v1/predict`` with the same request body as ``bankintent serve``.

    python benchmarks/peer_service.py MERGED_DIR --port 8001

The pipeline runs the base model's own classification head, so the model must have one: a run of a
recipe with ``pooling: cls`` (``lora``, ``full``, ``lora-unfreeze``). A mean-pooled model (``lpft``,
the default) has no equivalent Transformers architecture for a pipeline to load.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bankintent.modeling import resolve_base_model


class Query(BaseModel):
    texts: list[str]
    top_k: int = 3


def classifier(merged: Path):
    """The pipeline of a merged export: the base model with the trained weights loaded over it."""
    spec = json.loads((merged / "bankintent.json").read_text())
    labels = json.loads((merged / "labels.json").read_text())
    if spec["pooling"] != "cls":
        raise SystemExit(f"{merged}: pooling {spec['pooling']!r}; the pipeline peer needs a model with its own "
                         "classification head (a lora, full or lora-unfreeze run)")
    base = resolve_base_model(spec["base_model"])
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)},
        dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_file(merged / "model.safetensors"), strict=False)
    if unexpected or any(name.startswith("classifier") for name in missing):
        raise SystemExit(f"{merged}: the weights do not fit {type(model).__name__} ({unexpected[:3] or missing[:3]})")
    return pipeline("text-classification", model=model.eval(), tokenizer=AutoTokenizer.from_pretrained(base), device=-1)


def app_for(merged: Path) -> FastAPI:
    classify = classifier(merged)
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(query: Query) -> list[dict]:
        answers = []
        for text in query.texts:
            ranked = classify(text, top_k=query.top_k, truncation=True, max_length=64)
            answers.append({"text": text, "intent": ranked[0]["label"], "confidence": ranked[0]["score"],
                            "top_k": [{"intent": r["label"], "confidence": r["score"]} for r in ranked]})
        return answers

    @app.get("/readyz")
    def ready() -> dict:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("merged", type=Path, help="a merged export (bankintent export RUN --format merged --output DIR)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app_for(args.merged), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
