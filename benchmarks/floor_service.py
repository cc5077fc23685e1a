"""The floor under any FastAPI intent service on this machine: ``POST /v1/predict`` with the same
request body as ``bankintent serve``, validated by the same pydantic model, answered by a fixed
prediction of the same shape, with no model, no tokenizer and no out-of-scope score.
``serve_load.py --floor`` drives it beside ours with the same clients and queries: its latency is
what the HTTP stack (uvicorn, FastAPI, pydantic, JSON) and the load generator cost before any model
runs, so a latency goal below it cannot be met by a faster model.

    python benchmarks/floor_service.py --port 8002
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from bankintent.serving import PredictRequest


def app() -> FastAPI:
    floor = FastAPI()

    @floor.post("/v1/predict")
    async def predict(request: PredictRequest) -> JSONResponse:
        ranked = [{"intent": "card_arrival", "confidence": 0.9}] * request.top_k
        return JSONResponse([{"text": text, "intent": "card_arrival", "confidence": 0.9, "out_of_scope": False,
                              "oos_score": 0.1, "oos_threshold": 0.5, "oos_method": "knn+msp",
                              "closest_intent": "card_arrival", "top_k": ranked} for text in request.texts])

    @floor.get("/readyz")
    async def ready() -> dict:
        return {"status": "ready"}

    return floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    uvicorn.run(app(), host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
