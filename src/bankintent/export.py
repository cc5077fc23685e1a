"""Export a trained model for fast inference: ``bankintent export DIR --format onnx [--quantize int8]``.

- ``merged``: the LoRA weights merged into the base model, saved as a bankintent model folder holding
  every weight in one file (not a Hugging Face ``AutoModel`` folder: the pooling and head are
  bankintent's); it loads without PEFT and without merging.
- ``onnx``: ``model.onnx`` with two outputs, ``logits`` and ``features`` (the query embedding the
  out-of-scope score uses) and dynamic batch and sequence axes. It is exported by the TorchScript-based
  exporter from eager attention, then fused by ONNX Runtime's transformer optimizer (attention,
  embedding layer normalisation, GELU; not skip layer normalisation and bias GELU, whose fused CPU
  kernels are slower than the ops they replace). The tokenizer (``tokenizer.json``), labels and spec
  go beside it, so ``Predictor.load`` and ``bankintent serve`` use the folder directly.
- ``--quantize int8``: the encoder's matrix products and attention run on int8 weights (per-channel
  scales) and int8 activations; the embeddings and the classifier layer stay in float.

Why int8 activations get fixed (static) scales, calibrated at export. A query's answer must not
depend on the queries it is batched with: the service micro-batches concurrent requests and
``Predictor`` pads and batches each call's queries. ONNX Runtime's dynamic quantization computes each
activation's scale from the whole batch tensor, padding included, so one customer's confidence (and
at times intent) moved with other customers' traffic. With fixed scales the int8 model is a function
of each query alone. Of the alternatives compared on the MiniLM encoder: per-row activation
scales exist in ONNX Runtime only in the weight-only ``MatMulNBits`` operator, whose 8-bit kernels ran
batches several times slower than the integer matrix products used here and leave the fused attention
in float; per-row scales built from standard operators would add several operators to every
product; standard static quantization (``quantize_static``) has no quantized form of the fused
attention. So ONNX Runtime's calibrator measures each quantized input's min-max range over
``CALIBRATION_QUERIES`` queries, each run alone (padding never widens a range), and the integer-op
quantizer that ``quantize_dynamic`` runs is given those ranges: it writes constant scales where it
would compute them per call, and the graph keeps the same fast kernels (``QAttention``, integer matrix
products) without the per-call range reduction. The integer products with their rescaling and bias
are then written as ONNX Runtime's ``MatMulIntegerToFloat``: the session's own fusion into it does
not fire once its constant-folding has merged the two constant scales.

Calibration queries are queries like those the model will answer: by default a sample of the training
data the run records in its ``config.yaml``; ``calibration_data`` (``--calibration-data``) names other
ones (a .txt file, one query a line; a .csv, .jsonl or .parquet file's text column; a data folder or
``banking77``: its training file), e.g. to export a model folder that did not come with its run.
Queries go through the model's own preprocessing and tokenizer, as ``Predictor`` sends them.
Queries whose activations exceed the calibrated ranges are clipped to them, so a query unlike any
calibration query is answered less precisely, but still the same alone or in a batch.

The output folder is written atomically, with a COMPLETE marker last, like every model folder.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from bankintent.config import EXPORT_RECORD, check_output_folder, check_writable, first_few, read_yaml, run_config_file, trained_text_column
from bankintent.errors import BankintentError, ConfigError, DataError, ModelError
from bankintent.evaluation import evaluation_files
from bankintent.modeling import MARKER, OOD_FILE, SPEC_FILE, ModelSpec, atomic_folder, load_model, load_tokenizer, read_spec, write_spec
from bankintent.predict import ONNX_FILE, TOKENIZER_FILE, WithFeatures, fast_tokenizer, model_folder
from bankintent.text import preprocess

log = logging.getLogger(__name__)

FORMATS = ("onnx", "merged")
OPSET = 17
FUSABLE = ("bert", "distilbert", "roberta", "xlm-roberta")  # encoders ONNX Runtime's "bert" fusions know
CALIBRATION_QUERIES = 512  # sampled from the calibration data; each one forward pass at export
CALIBRATION_SEED = 0
AGREEMENT_QUERIES = 256  # calibration queries an int8 export's answers are compared with the source model's on
MIN_AGREEMENT = 0.95  # an int8 export that gives the source's intent to fewer of them is warned about
# what an export folder holds (either format): an earlier export may be replaced, nothing else
EXPORT_FILES = {ONNX_FILE, TOKENIZER_FILE, "model.safetensors", "labels.json", SPEC_FILE, OOD_FILE, EXPORT_RECORD, MARKER}


def check_output(output: Path, dir: str | Path, overwrite: bool) -> list[str]:
    """Refuse an ``output`` that the export would wrongly replace: the export writes a folder of its
    own and replaces what is there, so it may only be new, empty, or (with ``overwrite``) an earlier
    export holding nothing else; never the model folder, a folder holding it, or a file. Returns the
    files of the earlier export's evaluation that go with it."""
    source = model_folder(dir).resolve()
    target = output.resolve()
    if target in (source, Path(dir).resolve()) or target in source.parents:
        raise ConfigError(f"{output}: the output folder must differ from the model folder and not hold it")
    inside = next((parent for parent in target.parents if (parent / MARKER).is_file()), None)
    if inside is not None:  # replacing that model folder (an --overwrite of an export) would take this one with it
        raise ConfigError(f"{output}: inside the model folder {inside}; choose a folder of its own")
    check_output_folder(output)
    check_writable(output, beside=True)  # written as OUTPUT.partial, then renamed
    contents = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    if not contents:
        return []
    evaluated = {path.name for path in evaluation_files(output)}  # of the earlier export: replaced with it
    others = [name for name in contents if name not in EXPORT_FILES | evaluated]
    if others or EXPORT_RECORD not in contents:  # an earlier export names itself in its record
        shown = first_few(others or contents, 4)
        raise ConfigError(f"{output}: the folder holds other files ({shown}) and the export would replace them; choose another --output "
                          f"(the export writes a folder of its own)")
    if not overwrite:
        raise ConfigError(f"{output}: holds an earlier export; pass --overwrite to replace it, or choose another --output "
                          f"(in Python: overwrite=True)")
    return sorted(evaluated & set(contents))


def export(dir: str | Path, output: str | Path, format: str = "onnx", quantize: str | None = None,
           calibration_data: str | Path | None = None, overwrite: bool = False, allow_pickle: bool = False) -> Path:
    """Export the model of ``dir`` (a run or model folder) to the folder ``output``; returns it.
    ``calibration_data``: int8 only, the queries that set the activation scales (default: the run's
    training data, from its ``config.yaml``); ``overwrite``: replace an earlier export in ``output``;
    ``allow_pickle``: read a base model stored as pickled weights (the export holds them as ONNX)."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"unknown quantization {quantize!r}; only int8 is supported")
    if quantize and format != "onnx":
        raise ConfigError("--quantize int8 needs --format onnx")
    if calibration_data is not None and not quantize:
        raise ConfigError("--calibration-data is for --quantize int8 (only int8 activations are calibrated)")
    source, output = model_folder(dir), Path(output)
    if (source / ONNX_FILE).is_file():
        raise ConfigError(f"{dir}: an ONNX export already; export the run or model folder it came from (its {EXPORT_RECORD} names it)")
    read_spec(source)  # the source is a complete model folder, and
    replaced = check_output(output, dir, overwrite)  # the output can be written, before the model loads
    model, spec = load_model(source, merge=True, allow_pickle=allow_pickle)
    queries, calibration_source = calibration_queries(dir, calibration_data) if quantize else (None, None)
    record = {"format": format, "quantize": quantize, "opset": OPSET, "source": str(source.resolve()),
              "source_saved_ns": (source / MARKER).stat().st_mtime_ns,  # when the source model was saved: a retrain shows
              "text_column": trained_text_column(dir)}  # the query column of its data, for when the run is not beside it
    spec.lora = False  # the LoRA weights are merged into the exported weights
    with atomic_folder(output) as folder:
        if format == "merged":
            save_file({n: p.detach().contiguous().cpu() for n, p in model.named_parameters()}, folder / "model.safetensors")
        else:
            tokenizer = fast_tokenizer(load_tokenizer(spec.base_model), spec.max_length)
            calibration = calibration_inputs(queries, tokenizer, spec) if quantize else None
            export_onnx(model.cpu().float(), folder / ONNX_FILE, quantize, calibration)
            tokenizer.save(str(folder / TOKENIZER_FILE))
            if quantize:
                checked = calibration[:AGREEMENT_QUERIES]
                same = same_intent(model, folder / ONNX_FILE, checked)
                record["calibration"] = {"data": calibration_source, "queries": len(queries), "method": "minmax",
                                         "same_intent": round(same, 4), "same_intent_queries": len(checked)}
                said = f"int8: the source model's most probable intent for {100 * same:.1f}% of {len(checked)} calibration queries"
                if same < MIN_AGREEMENT:
                    log.warning("%s; evaluate the export (bankintent evaluate EXPORT) before serving it, or export without --quantize", said)
                else:
                    log.info("%s", said)
        write_spec(spec, folder)
        (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=1))
    if replaced:  # what `evaluate` wrote of the earlier model went with it: said, not silent
        log.warning("--overwrite: the earlier export's evaluation went with it (%s)", ", ".join(replaced))
    log.debug("exported %s to %s", source, output)
    return output


def calibration_queries(dir: str | Path, data: str | Path | None = None) -> tuple[list[str], str]:
    """Up to ``CALIBRATION_QUERIES`` queries of ``data`` (default: the training data recorded in the
    run's ``config.yaml``), a fixed random sample so that an export is reproducible; and where they came from."""
    from bankintent.data import data_files, iter_queries

    config = run_config_file(dir)
    saved = read_yaml(config) if config else {}
    text_column = saved.get("text_column", "text")  # a file in the training data's format
    hint = "pass --calibration-data (a file of queries like those the model will answer)"
    if data is None:
        if config is None:
            raise ConfigError(f"{dir}: no config.yaml records the training data to calibrate the int8 scales on; {hint}")
        source, data = f"{config}: the training data it records: ", saved.get("data", "banking77")
    else:
        source, hint = "calibration data: ", ""
    path = Path(str(data)).expanduser()
    try:
        file = path if path.is_file() else data_files(str(data)).train
        texts = [text for _, text in iter_queries(file, text_column)]
    except BankintentError as exc:
        raise DataError(f"{source}{exc}" + (f"; {hint}" if hint else "")) from None
    if not texts:
        raise DataError(f"{file}: no queries to calibrate the int8 scales on")
    if len(texts) < CALIBRATION_QUERIES // 4:
        log.warning("%s: only %d calibration queries; the int8 scales may not cover the queries the model will answer",
                    file, len(texts))
    if len(texts) > CALIBRATION_QUERIES:
        keep = np.random.default_rng(CALIBRATION_SEED).choice(len(texts), CALIBRATION_QUERIES, replace=False)
        texts = [texts[i] for i in sorted(keep)]
    return texts, str(file)


def calibration_inputs(queries: list[str], tokenizer, spec: ModelSpec) -> list[dict[str, np.ndarray]]:
    """The model inputs of each query alone (no padding), preprocessed and tokenized as ``Predictor`` does."""
    tokenizer = fast_tokenizer(tokenizer, spec.max_length)  # a copy: the one saved with the model pads
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch([preprocess(q, spec.preprocessing) for q in queries])
    return [{"input_ids": np.array([e.ids], dtype=np.int64), "attention_mask": np.array([e.attention_mask], dtype=np.int64)}
            for e in encodings]


def same_intent(model: torch.nn.Module, path: Path, inputs: list[dict[str, np.ndarray]]) -> float:
    """The share of ``inputs`` (single queries, tokenized) for which the ONNX graph at ``path`` gives the
    most probable intent ``model`` gives: int8's rounding can move a query whose top intents are close."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    same = 0
    with torch.no_grad():
        for feed in inputs:
            theirs = model(**{name: torch.from_numpy(array) for name, array in feed.items()}).logits.argmax(-1).numpy()
            same += int((session.run(["logits"], feed)[0].argmax(-1) == theirs).all())
    return same / max(len(inputs), 1)


def export_onnx(model: torch.nn.Module, path: Path, quantize: str | None = None,
                calibration: list[dict[str, np.ndarray]] | None = None) -> None:
    """Write ``model`` (merged, eval mode) as an ONNX graph (logits, features) to ``path``;
    ``quantize="int8"`` needs ``calibration``, the inputs its activation scales are measured on."""
    if quantize == "int8" and not calibration:
        raise ConfigError("int8 export needs calibration inputs")
    encoder = next(m for m in model.modules() if isinstance(m, PreTrainedModel))
    encoder.set_attn_implementation("eager")  # the attention pattern ONNX Runtime fuses into one op
    wrapper = WithFeatures(model).eval()
    head = next(name for name, module in wrapper.named_modules() if module is wrapper.head)
    ids = torch.ones((2, 8), dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the TorchScript exporter
        raw = Path(tmp) / "raw.onnx"
        log.info("export: tracing the model into an ONNX graph")  # each step takes seconds, and shows no bar of its own
        torch.onnx.export(
            wrapper, (ids, torch.ones_like(ids)), str(raw), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "attention_mask"], output_names=["logits", "features"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}, "features": {0: "batch"}},
        )
        fused = Path(tmp) / "fused.onnx"
        log.info("export: fusing attention and layer norms (ONNX Runtime's transformer optimizer)")
        optimize(raw, fused, encoder.config)
        if quantize == "int8":
            log.info("export: int8 weights, activation scales calibrated on %d queries", len(calibration))
            quantize_int8(fused, path, "/" + head.replace(".", "/") + "/", calibration)
        else:
            fused.replace(path)


@contextmanager
def quiet_logging():
    """ONNX Runtime's optimizer and quantizer log each fusion and tensor (about 150 lines an export)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def optimize(source: Path, target: Path, config) -> None:
    """ONNX Runtime's transformer fusions where the architecture is known, else the graph as exported."""
    if config.model_type not in FUSABLE:
        log.warning("no ONNX Runtime fusions for model type %s; exporting the unfused graph", config.model_type)
        source.replace(target)
        return
    import onnxruntime
    import transformers
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False  # the fused kernels are slower on a CPU than the ops they
    options.enable_bias_gelu = False  # replace (predict.SLOW_FUSIONS); the session must not fuse them either
    heads = getattr(config, "num_attention_heads", None) or config.n_heads
    hidden = getattr(config, "hidden_size", None) or config.dim
    with quiet_logging():
        optimized = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0,
                                   optimization_options=options)
        optimized.save_model_to_file(str(target))
        fused = optimized.get_fused_operator_statistics()
    if not fused.get("Attention"):  # seen on a machine with torch 2.11, transformers 5.17, onnxruntime 1.30
        log.warning("ONNX Runtime fused no attention in this graph (transformers %s, onnxruntime %s): the export predicts "
                    "the same, only slower", transformers.__version__, onnxruntime.__version__)


def quantize_int8(source: Path, target: Path, exclude_prefix: str, calibration: list[dict[str, np.ndarray]]) -> None:
    """int8 weights (per channel) and calibrated, fixed activation scales for the attention and matrix
    products, except the classifier layer's (nodes named ``exclude_prefix``...)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, create_calibrator
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    class Feeds(CalibrationDataReader):
        """The prepared inputs, one query each, with a progress bar."""

        def __init__(self):
            self.inputs = iter(calibration)
            # left, like every other bar: with leave=False, closing it wrote blanks over the only frame a log held
            self.bar = tqdm(total=len(calibration), desc="calibrating int8 scales", unit="q")

        def get_next(self) -> dict[str, np.ndarray] | None:
            feed = next(self.inputs, None)
            if feed is None:
                self.bar.close()
            else:
                self.bar.update()
            return feed

    op_types = ["MatMul", "Attention"]
    with tempfile.TemporaryDirectory() as tmp, quiet_logging():
        # ONNX Runtime's own shape inference types the outputs of its fused operators (attention,
        # embedding layer normalisation, GELU), without which the calibrator and quantizer skip them
        model = SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True)
        typed = Path(tmp) / "typed.onnx"
        onnx.save(model, str(typed))
        # Gemm too: the quantizer turns a Gemm (a linear layer on a 2-D input) into a MatMul
        calibrator = create_calibrator(typed, op_types + ["Gemm"], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(Feeds())
        ranges = calibrator.compute_data()
        keep_float = [node.name for node in model.graph.node if node.name.startswith(exclude_prefix)]
        keep_float += [name + "_MatMul" for name in keep_float]  # the quantizer turns Gemm X into MatMul X_MatMul first
        # the quantizer quantize_dynamic runs (integer ops: QAttention, MatMulInteger, per-channel int8 weights)
        # given the calibrated ranges: it writes QuantizeLinear with constant scales where it would compute them
        quantizer = ONNXQuantizer(model, True, False, QuantizationMode.IntegerOps, False, QuantType.QInt8, QuantType.QUInt8,
                                  ranges, [], keep_float, op_types,
                                  {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        quantizer.quantize_model()
        graph = quantizer.model.model.graph
    dynamic = [node.input[0] for node in graph.node if node.op_type == "DynamicQuantizeLinear"]
    if dynamic:
        raise ModelError(f"int8 export: no calibrated range for {', '.join(dynamic[:3])}: its scale would depend on the batch")
    fuse_integer_matmuls(graph)
    onnx.save(quantizer.model.model, str(target))


def fuse_integer_matmuls(graph) -> None:
    """Rewrite each ``MatMulInteger -> Cast -> Mul(scale) [-> Add(bias)]`` of the quantizer as one
    ``MatMulIntegerToFloat`` (ONNX Runtime's contrib operator for it): with constant scales, the
    session's constant folding merges the two scales before its own fusion could match them."""
    from onnx import helper

    producer = {name: node for node in graph.node for name in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {tensor.name for tensor in graph.initializer}
    replaced, dropped = {}, set()
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        cast = _only(consumers, node.output[0], "Cast")
        mul = cast and _only(consumers, cast.output[0], "Mul")
        scales = mul and producer.get(next(name for name in mul.input if name != cast.output[0]))
        quantize = producer.get(node.input[0])
        if (scales is None or scales.op_type != "Mul" or not set(scales.input) <= constants or quantize is None
                or quantize.op_type != "QuantizeLinear" or quantize.input[1] not in scales.input):
            continue
        a_scale = quantize.input[1]
        b_scale = next((name for name in scales.input if name != a_scale), a_scale)
        inputs = [node.input[0], node.input[1], a_scale, b_scale, node.input[2], node.input[3]]
        output, drop = mul.output[0], [cast, mul, scales]
        add = _only(consumers, mul.output[0], "Add")
        bias = add and [name for name in add.input if name != mul.output[0]]
        if bias and bias[0] in constants and _shape(graph, bias[0]) is not None and len(_shape(graph, bias[0])) == 1:
            inputs.append(bias[0])
            output = add.output[0]
            drop.append(add)
        replaced[id(node)] = helper.make_node("MatMulIntegerToFloat", inputs, [output], node.name, domain="com.microsoft")
        dropped.update(id(n) for n in drop)
    nodes = [replaced.get(id(node), node) for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)


def _only(consumers: dict, name: str, op_type: str):
    """The single consumer of ``name`` if it is an ``op_type`` node, else None."""
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _shape(graph, name: str) -> list[int] | None:
    tensor = next((t for t in graph.initializer if t.name == name), None)
    return None if tensor is None else list(tensor.dims)
