"""A query's answer does not depend on the queries it is batched with, on every backend: the service
micro-batches concurrent requests and ``Predictor`` pads and batches each call's queries, so a customer's
intent and confidence must be the same alone, in a batch of 8 and in a batch of 64 of mixed lengths
(issue 12, item 1: dynamic int8 quantization scaled activations per batch)."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from conftest import INTENTS

from bankintent.export import export
from bankintent.predict import Predictor, length_batches

TOLERANCE = 1e-4


def mixed_queries(n: int = 64, seed: int = 0) -> list[str]:
    """``n`` queries from one phrase to several (truncated at the model's max_length), in no length order."""
    rng = random.Random(seed)
    phrases = [phrase for phrases in INTENTS.values() for phrase in phrases]
    queries = [" ".join(rng.choice(phrases) for _ in range(rng.choice([1, 1, 1, 2, 3, 6]))) + rng.choice(["", "?", " please"])
               for _ in range(n)]
    return queries + ["card?", "hi"][: max(0, n - len(queries))]


QUERIES = mixed_queries()


@pytest.fixture(scope="module")
def backends(tiny_runs, tmp_path_factory) -> dict[str, object]:
    """(run, backend) -> the folder ``Predictor.load`` reads: the run itself (PyTorch) or its export."""
    out = tmp_path_factory.mktemp("exports")
    folders = {}
    for name, run in tiny_runs.items():
        folders[f"{name}-pytorch"] = run
        folders[f"{name}-onnx-fp32"] = export(run, out / f"{name}-fp32")
        folders[f"{name}-onnx-int8"] = export(run, out / f"{name}-int8", quantize="int8")
    return folders


def assert_same_answers(got: list[dict], alone: list[dict], what: str) -> None:
    """Same closest intent, same calibrated probabilities of the top intents (within TOLERANCE), same
    out-of-scope score; the same answer, except where the query's score sits on the threshold itself
    (a query equal to a validation query the threshold was chosen at), where a last-digit difference
    of the float arithmetic may flip the comparison."""
    assert [g["closest_intent"] for g in got] == [a["closest_intent"] for a in alone], what
    np.testing.assert_allclose([[t["confidence"] for t in g["top_k"]] for g in got],
                               [[t["confidence"] for t in a["top_k"]] for a in alone], atol=TOLERANCE, rtol=0, err_msg=what)
    for g, a in zip(got, alone):
        if a["oos_score"] is not None:
            assert abs(g["oos_score"] - a["oos_score"]) <= TOLERANCE, what
        on_threshold = a["oos_score"] is not None and abs(a["oos_score"] - a["oos_threshold"]) <= TOLERANCE
        if not on_threshold:
            assert (g["intent"], g["confidence"] is None) == (a["intent"], a["confidence"] is None), f"{what}: {a['text']!r}"
            if a["confidence"] is not None:
                assert abs(g["confidence"] - a["confidence"]) <= TOLERANCE, what


@pytest.mark.parametrize("backend", [f"{run}-{kind}" for run in ("bert", "distilbert") for kind in ("pytorch", "onnx-fp32", "onnx-int8")])
def test_a_query_gets_the_same_answer_alone_and_in_batches_of_8_and_64(backends, backend):
    """The answers use the msp out-of-scope score (1 - the top probability); the Mahalanobis score's
    input, the query embedding, is compared directly (the tiny DistilBERT's nearly singular covariance
    would magnify any difference in its float32 distance)."""
    folder = backends[backend]
    predictor = Predictor.load(folder, device="cpu", oos_score="msp")
    alone = [predictor.predict(query, top_k=4)[0] for query in QUERIES]
    lengths = [len(e.ids) for e in predictor.tokenizer.encode_batch(QUERIES)]
    assert max(lengths) >= 3 * min(lengths) and lengths != sorted(lengths)  # padded batches of mixed lengths
    # batches of 8 of similar lengths (the predictor's own batching), and 8 queries in one call
    assert predictor.batch_size == 8
    assert_same_answers(predictor.predict(QUERIES, top_k=4), alone, f"{backend}: in batches of 8")
    assert_same_answers(predictor.predict(QUERIES[8:16], top_k=4), alone[8:16], f"{backend}: a call of 8")
    # one forward pass of 64 queries, each padded to the longest
    wide = Predictor.load(folder, device="cpu", batch_size=64, oos_score="msp")
    wide.backend.pass_tokens = float("inf")  # not cut by length
    assert len(length_batches(np.array(lengths), 64, wide.backend.pass_tokens)) == 1
    assert_same_answers(wide.predict(QUERIES, top_k=4), alone, f"{backend}: in one batch of 64")
    # the model's outputs: logits and the query embedding (the Mahalanobis score's input)
    logits_alone, features_alone = (np.concatenate(arrays) for arrays in zip(*(wide.outputs([q]) for q in QUERIES)))
    for batched in (predictor, wide):
        logits, features = batched.outputs(QUERIES)
        np.testing.assert_allclose(logits, logits_alone, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(features, features_alone, atol=TOLERANCE, rtol=0)


def test_int8_activation_scales_are_constants(backends):
    """No operator of the int8 graph computes a scale from the batch (ONNX Runtime's dynamic quantization does)."""
    for run in ("bert", "distilbert"):
        graph = onnx.load(str(backends[f"{run}-onnx-int8"] / "model.onnx")).graph
        ops = [node.op_type for node in graph.node]
        assert "DynamicQuantizeLinear" not in ops and "DynamicQuantizeMatMul" not in ops
        constants = {tensor.name for tensor in graph.initializer}
        quantizers = [node for node in graph.node if node.op_type == "QuantizeLinear"]
        assert quantizers and all(node.input[1] in constants and node.input[2] in constants for node in quantizers)


def test_passes_are_cut_where_padding_would_cost_more_than_a_pass():
    lengths = np.array([40, 5, 6, 5, 39, 5])
    as_sets = lambda passes: [sorted(p.tolist()) for p in passes]  # noqa: E731
    # one pass: 6 x 40 padded tokens + 8; two: 4 x 6 + 8 and 2 x 40 + 8
    assert as_sets(length_batches(lengths, 8, 8)) == [[1, 2, 3, 5], [0, 4]]
    assert as_sets(length_batches(lengths, 8, 0)) == [[1, 3, 5], [2], [4], [0]]  # no cost to a pass: no padding
    assert as_sets(length_batches(lengths, 8, 1e6)) == [[0, 1, 2, 3, 4, 5]]
    assert as_sets(length_batches(lengths, 4, float("inf"))) == [[1, 2, 3, 5], [0, 4]]  # a GPU: chunks in length order
    assert [p.tolist() for p in length_batches(lengths, 4, float("inf"))] == [[1, 3, 5, 2], [4, 0]]
    same = length_batches(np.full(20, 10), 8, 8)
    assert [len(p) for p in same] == [4, 8, 8] and sorted(np.concatenate(same).tolist()) == list(range(20))


def test_predictions_that_overlap_leave_numpy_its_blas_threads():
    """Threads predicting at once (the service's, a user's) limit BLAS to one thread while scoring: the
    first in sets the process's limit and the last out restores it. Each restoring the limit it found
    left numpy on one thread for good (the second in found the first's limit of one)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from bankintent.predict import one_blas_thread

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    with threadpool_limits(limits=2, user_api="blas"):
        assert set(blas_threads()) == {2}
        one_blas_thread.__enter__()  # a first call scores
        one_blas_thread.__enter__()  # a second starts scoring before the first ends
        assert set(blas_threads()) == {1}
        one_blas_thread.__exit__(None, None, None)  # the first ends
        assert set(blas_threads()) == {1}  # the second still scores
        one_blas_thread.__exit__(None, None, None)
        assert set(blas_threads()) == {2}
