"""The models a service answers for, by name.

One model folder (``bankintent serve DIR``) is loaded as it is: merged LoRA, or whatever backend
``Predictor.load`` finds there. A folder of model folders (``--models-dir DIR``) shares the base
model: every LoRA adapter is loaded with PEFT's ``load_adapter`` onto one copy of the base (unmerged),
and the active adapter is switched per batch under a lock. ``Predictor`` views over the shared model
do the rest. Folders that are not PEFT adapters (full fine-tuning, exported models) load whole.

Names are only ever looked up in the folder's listing, never joined into a path, so ``../x`` is just
an unknown name. The listing is re-read at most every ``rescan_s`` seconds, and at once for a name it
does not know: a folder dropped in is served without a restart, one rewritten (a new ``COMPLETE``
marker) is reloaded and one removed is unloaded. A served folder that has lost its marker (emptied by
``train --overwrite`` into it) keeps answering with the model loaded until the new one is saved. A
folder that cannot be loaded (damaged, or copied marker first) is said once in the log and left out of
the names served; it is tried again once its files change.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel
from peft.utils.other import ModulesToSaveWrapper
from safetensors import safe_open
from torch import nn

from bankintent.errors import ModelError
from bankintent.config import MODEL_DIR
from bankintent.modeling import MARKER, SPEC_FILE, ModelSpec, build_model, load_tokenizer, loading, read_spec, saved_at
from bankintent.predict import Predictor, model_folder

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class UnknownModel(ModelError):
    """A request named a model that is not served (or named none where several are)."""


class Unloaded(ModelError):
    """A model taken for a request was unloaded (its folder rewritten or removed) before the request's
    batch ran: the request is sent again, to the model the folder holds now."""


def model_name(path: str | Path) -> str:
    """The name a single served folder answers to: the run folder's name (``runs/demo`` -> ``demo``)."""
    path = Path(path).resolve()
    return path.parent.name if path.name == MODEL_DIR else path.name


class SharedBase:
    """One base model in memory carrying any number of LoRA adapters."""

    def __init__(self, name: str, folder: Path, spec: ModelSpec):
        self.lock = threading.Lock()
        self.tokenizer = load_tokenizer(spec.base_model)
        self.model = PeftModel.from_pretrained(build_model(spec), folder, adapter_name=name).eval()

    @property
    def adapters(self) -> list[str]:
        return list(self.model.peft_config)

    def add(self, name: str, folder: Path) -> None:
        with self.lock:
            try:
                self._fit_heads(name, folder)
                self.model.load_adapter(folder, adapter_name=name)
            except Exception:
                if name in self.model.peft_config:  # half loaded
                    self.model.delete_adapter(name)
                raise
            self.model.eval()

    def remove(self, name: str) -> None:
        with self.lock, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was active which is now deleted")  # the next batch sets its own
            self.model.delete_adapter(name)

    def _fit_heads(self, name: str, folder: Path) -> None:
        """PEFT gives a new adapter a copy of the first adapter's classification head, which only fits
        the same number of labels; give it a head of the size its own checkpoint holds."""
        with safe_open(folder / ADAPTER_WEIGHTS, "pt") as weights:
            shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}
        for module_name, module in self.model.named_modules():
            if isinstance(module, ModulesToSaveWrapper) and isinstance(module.original_module, nn.Linear):
                shape = shapes.get(module_name + ".weight")
                original = module.original_module
                if shape and list(original.weight.shape) != shape:
                    module.modules_to_save[name] = nn.Linear(shape[1], shape[0], bias=original.bias is not None)


@dataclass
class ServedModel:
    """A named predictor; on a shared base it activates its own adapter for each batch."""

    name: str
    predictor: Predictor
    stamp: int = 0  # mtime of the folder's COMPLETE marker when loaded
    base: SharedBase | None = None
    saved: str | None = None  # when the model folder was saved (modeling.saved_at)
    adapter: str | None = None  # its adapter's name on the shared base: one of each load, never the folder's name,
    # which a folder rewritten with other intents reuses (its old labels would read the new adapter's scores)

    @property
    def labels(self) -> list[str]:
        return self.predictor.labels

    def predict(self, texts: list[str], top_k: int) -> list[dict]:
        if self.base is None:
            return self.predictor.predict(texts, top_k=top_k)
        with self.base.lock:
            if self.adapter not in self.base.adapters:
                raise Unloaded(f"model {self.name} was unloaded while a request waited for it")
            self.base.model.set_adapter(self.adapter, inference_mode=True)
            return self.predictor.predict(texts, top_k=top_k)


def _stamp(folder: Path) -> int:
    try:
        return (folder / MARKER).stat().st_mtime_ns
    except OSError:
        return 0


def _contents(folder: Path) -> frozenset:
    """What a folder's files are now (name, inode, size, times): a folder that failed to load is tried
    again once they change (a copy that was still being made, a file put back, its permissions mended)."""
    try:
        return frozenset((e.name, e.inode(), e.stat().st_size, e.stat().st_mtime_ns, e.stat().st_ctime_ns) for e in os.scandir(folder))
    except OSError:
        return frozenset()


def _not_served(entry: Path, folder: Path, rewriting: bool) -> str:
    """Why a folder of the models folder holds no model to serve: one being written (training, or
    stopped before saving), or no model folder at all, with where models lie one level down."""
    if (not any(entry.iterdir()) or (folder / SPEC_FILE).is_file() or (entry / "config.yaml").is_file()
            or (entry / "checkpoints").is_dir()):  # empty: a training just started, or emptying it (--overwrite)
        return (f"{entry}: no complete model in it (no {MARKER} marker: training, or stopped before saving); "
                + ("answering with the model loaded before until a new one is saved" if rewriting
                   else "not served until a model is saved there"))
    deeper = sorted(p.parent.parent.relative_to(entry) if p.parent.name == MODEL_DIR else p.parent.relative_to(entry)
                    for p in entry.glob("**/" + MARKER))[:3]
    hint = (f"; it holds model folders further down ({', '.join(map(str, deeper))}): --models-dir serves the folders directly in it, "
            f"so copy or link those there") if deeper else ""
    return f"{entry}: not a model folder (no {SPEC_FILE}, config.yaml or checkpoints/ in it), not served{hint}"


@dataclass
class Registry:
    """``Registry(model_dir=...)`` serves one folder; ``Registry(models_dir=...)`` every model folder in it."""

    model_dir: str | Path | None = None
    models_dir: str | Path | None = None
    rescan_s: float = 1.0
    threads: int | None = None  # ONNX Runtime's intra-op threads (PyTorch's are set process-wide)
    oos_score: str | None = None  # the out-of-scope score of every model served (default: each model's own)
    oos_threshold: float | None = None  # its threshold, for the one model of model_dir (default: chosen at training)
    _listing: dict[str, Path] = field(default_factory=dict, init=False, repr=False)
    _scanned: float = field(default=float("-inf"), init=False, repr=False)
    _loaded: dict[str, ServedModel] = field(default_factory=dict, init=False, repr=False)
    _incomplete: set[str] = field(default_factory=set, init=False, repr=False)  # folders seen without a complete model
    _failed: dict[str, tuple[frozenset, str]] = field(default_factory=dict, init=False, repr=False)  # name: (_contents, error)
    _bases: dict[tuple[str, str], SharedBase] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _loads: itertools.count = field(default_factory=itertools.count, init=False, repr=False)  # numbers each adapter loaded

    def __post_init__(self) -> None:
        if bool(self.model_dir) == bool(self.models_dir):
            raise ModelError("give either a model folder or a folder of model folders")
        if self.models_dir and not Path(self.models_dir).is_dir():
            raise ModelError(f"{self.models_dir}: models folder not found")
        if self.model_dir:
            folder = model_folder(self.model_dir)
            if not folder.is_dir():
                raise ModelError(f"{self.model_dir}: model folder not found")
            self._listing = {model_name(self.model_dir): folder}

    @property
    def bases(self) -> list[SharedBase]:
        """The base models in memory that carry adapters (one per base model, pooling and logit scale)."""
        return list(self._bases.values())

    def names(self) -> list[str]:
        """The models served: the folders listed, less those that failed to load as they are now."""
        return sorted(name for name in self._scan(force=False) if name not in self.failed())

    def unloaded(self) -> list[str]:
        """The models served but not loaded yet (a folder added since start-up: loaded at its first use)."""
        return [name for name in self.names() if name not in self._loaded]

    def failed(self) -> list[str]:
        """The folders listed that could not be loaded as their files are now (the log says why); one whose
        files have changed since is served again, and loaded at its first request."""
        listing, failed = self._scan(force=False), dict(self._failed)  # a copy: a load in another thread may change it
        return sorted(name for name, (contents, _) in failed.items() if name in listing and contents == _contents(listing[name]))

    def load_all(self) -> list[str]:
        """Load every listed model now (at start-up); returns the names loaded. With a models folder
        a folder that fails to load is logged and skipped (requests for it get an error), so one
        broken model does not take the others down; a single model's error is raised."""
        loaded = []
        for name in self.names():
            try:
                loaded.append(self.get(name).name)
            except ModelError:
                if self.model_dir:
                    raise
        return loaded

    def cached(self, name: str | None) -> ServedModel | None:
        """The loaded model ``name`` while the listing is fresh; None where ``get`` has work to do."""
        if self.models_dir and time.monotonic() - self._scanned > self.rescan_s:
            return None
        if name is None:
            return next(iter(self._loaded.values())) if len(self._loaded) == len(self._listing) == 1 else None
        return self._loaded.get(name)

    def get(self, name: str | None) -> ServedModel:
        """The model called ``name`` (None: the only one), loaded on first use. May take seconds."""
        with self._lock:
            listing = self._scan(force=False)
            if name not in listing and name is not None:
                listing = self._scan(force=True)
            if name is None:
                if not listing:
                    raise UnknownModel("no model is served yet: the models folder holds no model folder (the service's log "
                                       "says what it found)")
                if len(listing) != 1:
                    raise UnknownModel(f"model: required when serving several models; {self._choices(listing)}")
                name = next(iter(listing))
            if name not in listing:
                raise UnknownModel(f"model: unknown model {name!r}; {self._choices(listing)}")
            served = self._loaded.get(name)
            if served is None:
                served = self._loaded[name] = self._load_once(name, listing[name])
            return served

    def _choices(self, listing: dict[str, Path]) -> str:
        """The clause offering the names a request may give, those whose folder failed to load said apart
        (they answer 503), and saying so when none can be loaded."""
        failed = [name for name in sorted(listing) if name in self._failed]
        working = ", ".join(name for name in sorted(listing) if name not in self._failed)
        if not working:
            return f"no model here can be loaded ({', '.join(failed)} cannot be)" if failed else "none is served yet"
        return f"one of {working}" + (f" ({', '.join(failed)} cannot be loaded)" if failed else "")

    def _load_once(self, name: str, folder: Path) -> ServedModel:
        """``_load``, where a models folder's folder that failed to load is not loaded again (nor its
        error logged again) until its files change. Why it failed is in the log only: the error names
        the server's paths (the model folder's, the base model's), which are not a client's to see."""
        if self.model_dir:
            return self._load(name, folder)
        contents = _contents(folder)
        if self._failed.get(name, (None,))[0] != contents:
            try:
                served = self._load(name, folder)
            except ModelError as exc:
                log.error("model %s not loaded: %s", name, exc)
                self._failed[name] = (contents, str(exc))
            else:
                self._failed.pop(name, None)
                return served
        raise ModelError(f"model {name}: cannot be loaded (the service's log says why)")

    def _scan(self, force: bool) -> dict[str, Path]:
        """Re-read the models folder's listing (at most every ``rescan_s``), unloading models whose
        folder has gone or has been rewritten since they were loaded."""
        if self.model_dir or (not force and time.monotonic() - self._scanned < self.rescan_s):
            return self._listing  # (the time of the last scan kept: polled more often, the folder is still read again)
        with self._lock:
            listing, rewriting, incomplete = {}, set(), set()
            for entry in os.scandir(self.models_dir):
                folder = model_folder(entry.path)
                if not entry.is_dir() or entry.name.startswith(".") or entry.name.endswith(".partial"):  # atomic_folder's
                    continue
                if (folder / MARKER).is_file():
                    listing[entry.name] = folder
                    continue
                incomplete.add(entry.name)
                if entry.name in self._loaded:  # being rewritten (`train --overwrite`): answers until the new model is saved
                    listing[entry.name] = folder
                    rewriting.add(entry.name)
                if entry.name not in self._incomplete:  # said once, when the folder is first seen without a model
                    log.warning("%s", _not_served(Path(entry.path), folder, entry.name in rewriting))
            self._incomplete = incomplete
            for name, served in list(self._loaded.items()):
                if name not in listing or (name not in rewriting and _stamp(listing[name]) != served.stamp):
                    self._unload(name)
            self._listing, self._scanned = listing, time.monotonic()
            return listing

    def _load(self, name: str, folder: Path) -> ServedModel:
        with loading(folder):
            return self._load_unchecked(name, folder)

    def _load_unchecked(self, name: str, folder: Path) -> ServedModel:
        stamp = _stamp(folder)
        if not self.models_dir or not (folder / ADAPTER_CONFIG).is_file():
            log.info("loading model %s from %s", name, folder)
            return ServedModel(name, Predictor.load(folder, threads=self.threads, oos_score=self.oos_score,
                                                    oos_threshold=self.oos_threshold), stamp, saved=saved_at(folder))
        spec = read_spec(folder)
        key = (spec.base_model, spec.pooling, spec.logit_scale)  # the scale lives in the shared MeanPoolClassifier
        base = self._bases.get(key)
        adapter = f"adapter{next(self._loads)}"
        if base is None:
            log.info("loading base model %s with adapter %s", spec.base_model, name)
            base = self._bases[key] = SharedBase(adapter, folder, spec)
        else:
            log.info("loading adapter %s onto %s", name, spec.base_model)
            base.add(adapter, folder)
        try:
            return ServedModel(name, Predictor(base.model, base.tokenizer, spec, oos_score=self.oos_score), stamp, base,
                               saved_at(folder), adapter)
        except ModelError as exc:  # a score the model cannot use (Predictor's check)
            self._release(adapter, base)
            raise ModelError(f"{folder}: {exc}") from None

    def _unload(self, name: str) -> None:
        served = self._loaded.pop(name)
        log.info("unloading model %s (folder removed or rewritten)", name)
        if served.base is not None:
            self._release(served.adapter, served.base)

    def _release(self, adapter: str, base: SharedBase) -> None:
        """Take ``adapter`` off ``base``, and drop the base when it was the last one."""
        if base.adapters == [adapter]:
            self._bases = {key: other for key, other in self._bases.items() if other is not base}
        else:
            base.remove(adapter)
