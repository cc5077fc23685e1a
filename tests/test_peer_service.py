"""The hand-written peer that ``benchmarks/serve_load.py --peer`` measures our service against must
serve the same model: a Hugging Face pipeline on the merged weights gives the answers ``Predictor``
gives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bankintent import Predictor
from bankintent.export import export

PEER = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_service.py"


def _peer_module():
    spec = importlib.util.spec_from_file_location("peer_service", PEER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_peer_answers_as_predictor_does_on_the_same_model(tiny_runs, tmp_path):
    run = tiny_runs["distilbert"]  # the model's own classification head, as a pipeline needs
    merged = export(run, tmp_path / "merged", format="merged")
    client = TestClient(_peer_module().app_for(merged))
    queries = ["my card was stolen", "what exchange rate do you use", "top up failed again"]
    answers = client.post("/v1/predict", json={"texts": queries, "top_k": 2}).json()
    expected = Predictor.load(run).predict(queries, top_k=2)
    assert [a["top_k"][0]["intent"] for a in answers] == [e["top_k"][0]["intent"] for e in expected]
    assert client.get("/readyz").status_code == 200


def test_the_peer_refuses_a_mean_pooled_model(tiny_probe_run, tmp_path):
    merged = export(tiny_probe_run, tmp_path / "merged", format="merged")
    with pytest.raises(SystemExit, match="needs a model with its own classification head"):
        _peer_module().classifier(merged)


def _floor_module():
    spec = importlib.util.spec_from_file_location("floor_service", PEER.with_name("floor_service.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_floor_takes_our_request_and_answers_in_our_shape():
    """``serve_load.py --floor`` is a fair floor only if it parses the same body and sends an answer
    of the same fields, so that only the model's work is missing."""
    from bankintent.serving import Prediction

    client = TestClient(_floor_module().app())
    answers = client.post("/v1/predict", json={"texts": ["my card was stolen", "hi"], "top_k": 2}).json()
    assert len(answers) == 2 and [a["text"] for a in answers] == ["my card was stolen", "hi"]
    assert all(set(a) == set(Prediction.model_fields) and len(a["top_k"]) == 2 for a in answers)
    assert Prediction.model_validate(answers[0]).intent == "card_arrival"
    assert client.post("/v1/predict", json={"texts": ["  "]}).status_code == 422  # validated as ours is
