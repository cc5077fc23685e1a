"""Backends: merged PyTorch and ONNX Runtime (fp32, int8) exports predict what the PyTorch model
predicts, load through ``Predictor.load`` and fail with one-line errors."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers
import yaml
from conftest import INTENTS

import bankintent
from bankintent.errors import ConfigError, DataError, ModelError
from bankintent.export import CALIBRATION_QUERIES, calibration_inputs, export, optimize
from bankintent.modeling import load_tokenizer
from bankintent.predict import SLOW_FUSIONS, OnnxModel, Predictor, fast_tokenizer

QUERIES = [phrase for phrases in INTENTS.values() for phrase in phrases] + [
    "hello, my top-up failed again yesterday evening and I would like to know why", "rate?"]


def decisions(results: list[dict]) -> list[list[str]]:
    """The ranked intents (the out-of-scope flag is checked through the features: a query sitting
    exactly on the threshold may flip on a last-digit difference)."""
    return [[t["intent"] for t in r["top_k"]] for r in results]


@pytest.fixture(scope="module")
def runs(tiny_runs):
    """A LoRA run on mean-pooled BERT (lpft) and one on DistilBERT's own classification head (lora)."""
    return tiny_runs


def test_onnx_fp32_matches_pytorch(runs, tmp_path):
    for name, run in runs.items():
        torch_predictor = Predictor.load(run)
        folder = export(run, tmp_path / name, format="onnx")
        onnx_predictor = Predictor.load(folder)
        assert isinstance(onnx_predictor.model, OnnxModel)
        assert sorted(p.name for p in folder.iterdir()) == ["COMPLETE", "bankintent.json", "export.json", "labels.json",
                                                            "model.onnx", "ood.safetensors", "tokenizer.json"]
        expected, features = torch_predictor.outputs(QUERIES)
        logits, onnx_features = onnx_predictor.outputs(QUERIES)
        np.testing.assert_allclose(logits, expected, atol=1e-4)
        np.testing.assert_allclose(onnx_features, features, atol=1e-4)
        assert decisions(onnx_predictor.predict(QUERIES, top_k=3)) == decisions(torch_predictor.predict(QUERIES, top_k=3))
    assert isinstance(Predictor.load(folder, device="cpu").model, OnnxModel)
    with pytest.raises(ModelError, match=r"device 'cuda': .+ is an ONNX export, which runs on the CPU"):  # was run on the CPU, unsaid
        Predictor.load(folder, device="cuda")


def test_an_export_handed_on_reads_the_query_column_its_run_trained_on(runs, tmp_path):
    """A run trained on a `message` column: its export, once the run is gone, still reads `message` files."""
    from bankintent.config import trained_text_column

    run = shutil.copytree(runs["bert"], tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "text_column": "message"}))
    folder = export(run, tmp_path / "handed_on", format="onnx")
    shutil.rmtree(run)  # the other team has the export alone
    assert trained_text_column(folder) == "message" and json.loads((folder / "export.json").read_text())["text_column"] == "message"


def session_ops(path, disabled: list[str]) -> set[str]:
    """The operators of ``path`` after ONNX Runtime's session-time graph optimizations."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


def test_onnx_graph_is_fused_without_the_slow_fusions_and_has_dynamic_axes(runs, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bankintent.export"):
        path = export(runs["bert"], tmp_path / "onnx") / "model.onnx"
    assert "fused no attention" not in caplog.text
    # a step of seconds each, with no bar of its own: the export says what it is doing
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("export: ")] == ["export"] * 2
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"Attention", "EmbedLayerNormalization", "LayerNormalization", "Gelu"} <= ops
    assert not ops & {"SkipLayerNormalization", "BiasGelu"}
    # the session would fuse them again (the names in SLOW_FUSIONS are the ones ONNX Runtime knows)
    assert {"SkipLayerNormalization", "BiasGelu"} <= session_ops(path, disabled=[])
    assert not session_ops(path, disabled=SLOW_FUSIONS) & {"SkipLayerNormalization", "BiasGelu"}
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "sequence"], ["batch", "sequence"]]
    assert [o.name for o in graph.output] == ["logits", "features"]


def test_export_warns_when_no_attention_is_fused(tmp_path, caplog):
    """A graph ONNX Runtime's optimizer finds no attention in (here: one with none) is kept, with a warning."""
    raw = tmp_path / "raw.onnx"
    torch.onnx.export(torch.nn.Linear(8, 4), (torch.ones(2, 8),), str(raw), dynamo=False, opset_version=17)
    with caplog.at_level(logging.WARNING, logger="bankintent.export"):
        optimize(raw, tmp_path / "fused.onnx", transformers.BertConfig(hidden_size=8, num_attention_heads=2))
    assert "ONNX Runtime fused no attention" in caplog.text
    assert len(onnx.load(str(tmp_path / "fused.onnx")).graph.node) >= 1


def test_int8_quantizes_the_encoder_and_keeps_the_head_float(runs, tmp_path):
    fp32 = export(runs["bert"], tmp_path / "fp32")
    int8 = export(runs["bert"], tmp_path / "int8", quantize="int8")
    nodes = onnx.load(str(int8 / "model.onnx")).graph.node
    ops = [n.op_type for n in nodes]
    # 2 layers: QKV in QAttention; attention output and 2 feed-forward products as integer products
    assert ops.count("MatMulIntegerToFloat") == 3 * 2 and ops.count("QAttention") == 2
    assert not {"MatMulInteger", "DynamicQuantizeLinear"} & set(ops)  # fused, and no scale computed per batch
    assert "EmbedLayerNormalization" in ops and "QEmbedLayerNormalization" not in ops
    assert any(n.name.startswith("/model/head/") and n.op_type in ("MatMul", "Gemm") for n in nodes)
    # the session keeps them (its own fusions undo none of it)
    assert {"MatMulIntegerToFloat", "QAttention"} <= session_ops(int8 / "model.onnx", disabled=SLOW_FUSIONS)
    # a random tiny model has near-tied logits: compare values, not only the winner
    diff = np.abs(Predictor.load(int8).logits(QUERIES) - Predictor.load(fp32).logits(QUERIES))
    assert diff.max() < 0.05


def int8_scales(folder) -> dict[str, float]:
    """The activation scales (constants) of an int8 export, by tensor."""
    graph = onnx.load(str(folder / "model.onnx")).graph
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: float(constants[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"}


def test_int8_is_calibrated_on_the_runs_training_data_by_default(runs, tiny_data, tmp_path, capfd):
    int8 = export(runs["bert"], tmp_path / "int8", quantize="int8")
    record = json.loads((int8 / "export.json").read_text())
    train_rows = len((tiny_data / "train.csv").read_text().splitlines()) - 1
    done = min(train_rows, CALIBRATION_QUERIES)  # the bar's last frame is left in a log (leave=False blanked it)
    frames = [frame for frame in capfd.readouterr().err.split("\r") if "calibrating int8 scales" in frame]
    assert f"{done}/{done}" in frames[-1]
    calibration = record.pop("calibration")
    assert calibration.pop("same_intent") >= 0.9 and calibration.pop("same_intent_queries") == min(train_rows, CALIBRATION_QUERIES, 256)
    assert calibration == {"data": str((tiny_data / "train.csv").resolve()), "queries": min(train_rows, CALIBRATION_QUERIES), "method": "minmax"}
    # reproducible: the same export twice has the same scales
    assert int8_scales(int8) == int8_scales(export(runs["bert"], tmp_path / "again", quantize="int8"))


def test_an_int8_export_s_agreement_with_its_source_is_measured_and_warned_about(runs, tmp_path, monkeypatch, caplog):
    from bankintent import export as export_module
    from bankintent.modeling import load_model

    fp32 = export(runs["bert"], tmp_path / "fp32")
    model, spec = load_model(runs["bert"] / "adapter")
    inputs = calibration_inputs(QUERIES, load_tokenizer(spec.base_model), spec)
    assert export_module.same_intent(model, fp32 / "model.onnx", inputs) == 1.0  # the same graph in float: every answer alike
    monkeypatch.setattr(export_module, "MIN_AGREEMENT", 1.01)  # as an export that moved some answers
    with caplog.at_level(logging.INFO, logger="bankintent"):
        export(runs["bert"], tmp_path / "int8", quantize="int8")
    assert "int8: the source model's most probable intent for " in caplog.text
    assert "evaluate the export (bankintent evaluate EXPORT) before serving it, or export without --quantize" in caplog.text


def test_calibration_inputs_are_single_unpadded_queries(runs):
    predictor = Predictor.load(runs["bert"])
    tokenizer = fast_tokenizer(load_tokenizer(predictor.spec.base_model), predictor.spec.max_length)  # pads, as exported
    inputs = calibration_inputs(QUERIES, tokenizer, predictor.spec)
    assert len(inputs) == len(QUERIES)
    for query, feed in zip(QUERIES, inputs):
        assert feed["input_ids"].shape == feed["attention_mask"].shape == (1, len(predictor.tokenizer.encode(query).ids))
        assert feed["attention_mask"].all() and feed["input_ids"].dtype == np.int64
    assert len({feed["input_ids"].shape[1] for feed in inputs}) > 3


def test_int8_calibration_data_sets_the_scales(runs, tmp_path):
    """``calibration_data`` (``--calibration-data``): a .txt file of queries, or a data folder's training file."""
    default = int8_scales(export(runs["bert"], tmp_path / "default", quantize="int8"))
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(["what is the exchange rate", "", "my card never arrived, where is it?",
                                   "top up failed twice today and I was still charged for it"]) + "\n")
    folder = export(runs["bert"], tmp_path / "own", quantize="int8", calibration_data=queries)
    assert json.loads((folder / "export.json").read_text())["calibration"]["data"] == str(queries)
    assert json.loads((folder / "export.json").read_text())["calibration"]["queries"] == 3  # the blank line skipped
    own = int8_scales(folder)
    assert own.keys() == default.keys() and own != default
    np.testing.assert_allclose(Predictor.load(folder).logits(QUERIES), Predictor.load(runs["bert"]).logits(QUERIES), atol=0.1)


def test_int8_calibration_errors(runs, tmp_path):
    # a model folder away from its run: nothing records the training data
    alone = tmp_path / "model"
    shutil.copytree(runs["bert"] / "adapter", alone)
    with pytest.raises(ConfigError, match="no config.yaml records the training data.*--calibration-data"):
        export(alone, tmp_path / "out", quantize="int8")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="calibration data: .*missing.txt"):
        export(alone, tmp_path / "out", quantize="int8", calibration_data=tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="--calibration-data is for --quantize int8"):
        export(runs["bert"], tmp_path / "out", calibration_data=tmp_path / "missing.txt")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    with pytest.raises(DataError, match="no queries to calibrate"):
        export(alone, tmp_path / "out", quantize="int8", calibration_data=blank)
    # a run whose training data has moved away
    moved = tmp_path / "run"
    shutil.copytree(runs["bert"], moved)
    config = yaml.safe_load((moved / "config.yaml").read_text())
    (moved / "config.yaml").write_text(yaml.safe_dump({**config, "data": str(tmp_path / "gone")}))
    with pytest.raises(DataError, match=r"config.yaml: the training data it records: .*gone.*; pass --calibration-data"):
        export(moved, tmp_path / "out", quantize="int8")
    assert not (tmp_path / "out").exists()


def test_merged_folder_loads_without_peft_and_predicts_the_same(runs, tmp_path):
    run = runs["distilbert"]
    folder = export(run, tmp_path / "merged", format="merged")
    assert not (folder / "adapter_config.json").exists()
    assert not bankintent.modeling.read_spec(folder).lora
    np.testing.assert_allclose(Predictor.load(folder).logits(QUERIES), Predictor.load(run).logits(QUERIES), atol=1e-5)


def test_export_errors(runs, tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        export(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ConfigError, match="needs --format onnx"):
        export(runs["bert"], tmp_path / "out", format="merged", quantize="int8")
    with pytest.raises(ConfigError, match="must differ"):
        export(runs["bert"], runs["bert"] / "adapter")
    with pytest.raises(ConfigError, match="must differ"):
        export(runs["bert"], runs["bert"])
    broken = export(runs["bert"], tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load the ONNX model"):
        Predictor.load(broken)


def test_export_replaces_only_an_earlier_export_and_only_when_told(runs, tiny_data, tmp_path, caplog):
    """The export replaces its output folder whole: a folder of other files, or one holding the run
    itself, was deleted without a word."""
    shelf = tmp_path / "shelf"
    shutil.copytree(runs["bert"], shelf / "run")
    (shelf / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="must differ from the model folder and not hold it"):
        export(shelf / "run", shelf)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match=r"other: the folder holds other files \(notes.txt\) and the export would replace them"):
        export(shelf / "run", tmp_path / "other")
    (tmp_path / "a-file").write_text("keep")
    with pytest.raises(ConfigError, match="a-file: exists and is not a folder"):
        export(shelf / "run", tmp_path / "a-file")
    assert (shelf / "notes.txt").read_text() == (tmp_path / "other" / "notes.txt").read_text() == (tmp_path / "a-file").read_text() == "keep"
    assert (shelf / "run" / "adapter").is_dir() and not list(tmp_path.glob("*.partial"))
    (tmp_path / "look-alike").mkdir()
    (tmp_path / "look-alike" / "labels.json").write_text("mine")  # a file an export would write, but no export.json
    with pytest.raises(ConfigError, match=r"look-alike: the folder holds other files \(labels.json\)"):
        export(shelf / "run", tmp_path / "look-alike", overwrite=True)
    assert (tmp_path / "look-alike" / "labels.json").read_text() == "mine"
    folder = export(shelf / "run", tmp_path / "export")
    with pytest.raises(ConfigError, match="an ONNX export already; export the run or model folder it came from"):
        export(folder, tmp_path / "again")
    from bankintent.evaluation import evaluate_run

    evaluate_run(folder, data=str(tiny_data / "test.csv"))  # what evaluating the export leaves in it is replaced with it
    assert (folder / "test_evaluation.json").is_file()
    with pytest.raises(ConfigError, match="holds an earlier export; pass --overwrite to replace it"):
        export(shelf / "run", folder, format="merged")
    assert (folder / "model.onnx").is_file()
    with caplog.at_level(logging.WARNING, logger="bankintent.export"):
        export(shelf / "run", folder, format="merged", overwrite=True)
    assert (folder / "model.safetensors").is_file() and not (folder / "model.onnx").exists()
    assert not (folder / "test_evaluation.json").exists()  # it was about the model replaced, and that is said
    assert "the earlier export's evaluation went with it (" in caplog.text and "test_evaluation.json" in caplog.text
    with pytest.raises(ConfigError, match=r"inside the model folder .*; choose a folder of its own"):
        export(shelf / "run", folder / "nested")  # it would go with the next --overwrite of the folder holding it


def test_cli_export_writes_a_folder_predict_uses(runs, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "bankintent.cli", "export", str(runs["bert"]), "--output", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"exported to {out}" in done.stdout
    done = subprocess.run([sys.executable, "-m", "bankintent.cli", "predict", str(out), "i lost my card", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '"out_of_scope"' in done.stdout
    done = subprocess.run([sys.executable, "-m", "bankintent.cli", "export", str(tmp_path / "nope"), "--output", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and "model folder not found" in done.stderr


def test_concurrent_threads_get_their_own_embeddings(runs):
    from concurrent.futures import ThreadPoolExecutor

    predictor = Predictor.load(runs["bert"])
    chunks = [QUERIES[i : i + 3] for i in range(0, len(QUERIES), 3)]
    expected = [predictor.outputs(chunk)[1] for chunk in chunks]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            for got, want in zip(pool.map(lambda chunk: predictor.outputs(chunk)[1], chunks), expected):
                np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("backend", ["pytorch", "onnx"])
def test_batches_sorted_by_length_answer_in_input_order(runs, tmp_path, backend):
    """Queries of different lengths go through in length-sorted, padded batches; each answer is the
    one the query gets alone, in the order given."""
    folder = runs["bert"] if backend == "pytorch" else export(runs["bert"], tmp_path / "onnx", format="onnx")
    queries = QUERIES[::-1]
    alone = np.concatenate([Predictor.load(folder, batch_size=1).logits([q]) for q in queries])
    batched = Predictor.load(folder, batch_size=4)
    np.testing.assert_allclose(batched.logits(queries), alone, atol=1e-4)
    lengths = [len(e.ids) for e in batched.tokenizer.encode_batch(queries)]
    assert len(set(lengths)) > 3 and lengths != sorted(lengths)  # the batches do reorder


def test_an_export_of_a_model_saved_again_since_warns_when_loaded(runs, tmp_path, caplog):
    import os

    from bankintent.modeling import MARKER, read_spec
    from bankintent.predict import model_folder

    shelf = tmp_path / "run"
    shutil.copytree(runs["bert"], shelf)
    folder = export(shelf, tmp_path / "export")
    assert read_spec(folder).lora is False  # merged into the exported weights
    with caplog.at_level(logging.WARNING, logger="bankintent"):
        Predictor.load(folder)
    assert "saved again" not in caplog.text
    marker = model_folder(shelf) / MARKER
    later = marker.stat().st_mtime_ns + 10**9
    os.utime(marker, ns=(later, later))  # the run retrained in place
    with caplog.at_level(logging.WARNING, logger="bankintent"):
        Predictor.load(folder)
    assert f"{folder}: the model it was exported from ({model_folder(shelf).resolve()}) has been saved again since" in caplog.text


def test_the_service_says_an_export_runs_on_onnx(runs, tmp_path):
    import httpx

    from bankintent.serving import create_app, serve_in_background

    folder = export(runs["bert"], tmp_path / "export")
    with serve_in_background(create_app(model_dir=folder)) as url:
        info = httpx.get(f"{url}/v1/models/export", timeout=30).json()
    assert info["backend"] == "onnx" and info["intents"] == Predictor.load(folder).labels and info["saved"]
