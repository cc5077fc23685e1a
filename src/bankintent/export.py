"""Export a trained model for fast inference: ``bankintent export DIR --format onnx [--quantize int8]``.

- ``merged``: the LoRA weights merged into the base model, saved as a plain (non-PEFT) model folder
  holding every weight; it loads without PEFT and without merging.
- ``onnx``: ``model.onnx`` with two outputs, ``logits`` and ``features`` (the query embedding the
  out-of-scope score uses) and dynamic batch and sequence axes. It is exported by the TorchScript-based
  exporter from eager attention, then fused by ONNX Runtime's transformer optimizer (attention,
  embedding layer normalisation, GELU; not skip layer normalisation and bias GELU, whose fused CPU
  kernels are slower than the ops they replace). ``--quantize int8`` quantizes the weights of the
  encoder's matrix products and attention to int8 with per-channel scales (dynamic quantization:
  activations are quantized on the fly), leaving the embeddings and the classifier layer in float.
  The tokenizer (``tokenizer.json``), labels and spec go beside it, so ``Predictor.load`` and
  ``bankintent serve`` use the folder directly.

The output folder is written atomically, with a COMPLETE marker last, like every model folder.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

from bankintent.errors import ConfigError
from bankintent.modeling import atomic_folder, load_model, load_tokenizer, write_spec
from bankintent.predict import ONNX_FILE, TOKENIZER_FILE, WithFeatures, fast_tokenizer, model_folder

log = logging.getLogger(__name__)

FORMATS = ("onnx", "merged")
OPSET = 17
FUSABLE = ("bert", "distilbert", "roberta", "xlm-roberta")  # encoders ONNX Runtime's "bert" fusions know


def export(dir: str | Path, output: str | Path, format: str = "onnx", quantize: str | None = None) -> Path:
    """Export the model of ``dir`` (a run or model folder) to the folder ``output``; returns it."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"unknown quantization {quantize!r}; only int8 is supported")
    if quantize and format != "onnx":
        raise ConfigError("--quantize int8 needs --format onnx")
    source, output = model_folder(dir), Path(output)
    if output.resolve() in (source.resolve(), Path(dir).resolve()):
        raise ConfigError(f"{output}: the output folder must differ from the model folder")
    model, spec = load_model(source, merge=True)
    with atomic_folder(output) as folder:
        if format == "merged":
            save_file({n: p.detach().contiguous().cpu() for n, p in model.named_parameters()}, folder / "model.safetensors")
            spec.lora = False
        else:
            export_onnx(model.cpu().float(), folder / ONNX_FILE, quantize)
            fast_tokenizer(load_tokenizer(spec.base_model), spec.max_length).save(str(folder / TOKENIZER_FILE))
        write_spec(spec, folder)
        (folder / "export.json").write_text(json.dumps({"format": format, "quantize": quantize, "opset": OPSET, "source": str(source)}, indent=1))
    log.info("exported %s to %s", source, output)
    return output


def export_onnx(model: torch.nn.Module, path: Path, quantize: str | None = None) -> None:
    """Write ``model`` (merged, eval mode) as an ONNX graph (logits, features) to ``path``."""
    encoder = next(m for m in model.modules() if isinstance(m, PreTrainedModel))
    encoder.set_attn_implementation("eager")  # the attention pattern ONNX Runtime fuses into one op
    wrapper = WithFeatures(model).eval()
    head = next(name for name, module in wrapper.named_modules() if module is wrapper.head)
    ids = torch.ones((2, 8), dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the TorchScript exporter
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            wrapper, (ids, torch.ones_like(ids)), str(raw), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "attention_mask"], output_names=["logits", "features"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}, "features": {0: "batch"}},
        )
        fused = Path(tmp) / "fused.onnx"
        optimize(raw, fused, encoder.config)
        if quantize == "int8":
            quantize_int8(fused, path, exclude_prefix="/" + head.replace(".", "/") + "/")
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


def quantize_int8(source: Path, target: Path, exclude_prefix: str) -> None:
    """Dynamic int8 quantization of the attention and matrix products' weights, except the classifier layer's."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = onnx.load(str(source), load_external_data=False).graph.node
    keep_float = [node.name for node in nodes if node.name.startswith(exclude_prefix)]
    keep_float += [name + "_MatMul" for name in keep_float]  # the quantizer turns Gemm X into MatMul X_MatMul first
    # per-channel scales, embeddings left in float: on the first (2-epoch) demo model, Banking77 test accuracy
    # -0.32 points against fp32, where per-tensor weights lost 0.56 and quantized embeddings another 0.16;
    # on the later best-epoch demo model +0.19, on the current (weight-averaged) runs/demo -0.16 with the
    # present fusions (README, benchmarks/latency.py --accuracy)
    with quiet_logging():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Attention"],
                         nodes_to_exclude=keep_float, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops carry no inferred types
