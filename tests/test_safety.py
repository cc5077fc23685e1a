"""Safe loading: safetensors only unless --allow-pickle, never remote code, label count must fit."""

from pathlib import Path

import pytest

from bankintent import BankintentError, ConfigError, ModelError, Predictor, resolve_config, train
from conftest import _save_tiny, tiny_options

SOURCE = Path(__file__).resolve().parents[1] / "src" / "bankintent"


@pytest.fixture(scope="module")
def pickled_bert(tmp_path_factory) -> Path:
    """A tiny BERT stored the old way: pytorch_model.bin (a pickle), no safetensors."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    folder = tmp_path_factory.mktemp("pickled")
    _save_tiny(model, folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickled_base_model_is_refused_without_the_flag(pickled_bert, tiny_data, tmp_path):
    with pytest.raises(ModelError, match=r"pickled weights \(pytorch_model.bin\).*--allow-pickle"):
        train(resolve_config(None, method="linear-probe", **tiny_options(pickled_bert, tiny_data, tmp_path)))
    assert not (tmp_path / "adapter").exists()
    metrics = train(resolve_config(None, method="linear-probe", allow_pickle=True, **tiny_options(pickled_bert, tiny_data, tmp_path)))
    assert metrics["test_accuracy"] is not None
    # the model is used as it was trained: every command that loads the base model takes the flag
    from bankintent.cli import main

    for command in (["evaluate", str(tmp_path), "--output", str(tmp_path / "ev")], ["export", str(tmp_path), "--output", str(tmp_path / "ex")]):
        with pytest.raises(SystemExit):
            main(command)
        main([*command, "--allow-pickle"])
    assert (tmp_path / "ev" / "test_evaluation.json").is_file() and (tmp_path / "ex" / "model.onnx").is_file()


def test_model_folder_with_pickles_is_refused(tiny_bert, tiny_data, tmp_path):
    train(resolve_config(None, method="lora", **tiny_options(tiny_bert, tiny_data, tmp_path)))
    (tmp_path / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelError, match="holds pickled weights .*; bankintent writes none: remove them"):
        Predictor.load(tmp_path)  # not --allow-pickle, which is for a base model only


class _Payload:
    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_base_model_s_pickle_that_is_code_is_one_line_even_when_allowed(pickled_bert, tiny_data, tmp_path):
    """--allow-pickle takes pickled tensors; a pickle that calls a function (torch's weights_only load
    refuses it) ended training in a traceback."""
    import pickle
    import shutil

    hostile = tmp_path / "hostile"
    shutil.copytree(pickled_bert, hostile)
    payload = _Payload()
    payload.marker = tmp_path / "ran"
    (hostile / "pytorch_model.bin").write_bytes(pickle.dumps(payload))
    with pytest.raises(ModelError, match=r"cannot load base model .*hostile.*: its pickled weights hold more than tensors"):
        train(resolve_config(None, method="linear-probe", allow_pickle=True, **tiny_options(hostile, tiny_data, tmp_path / "run")))
    assert not payload.marker.exists()


def test_remote_code_is_never_trusted():
    for path in SOURCE.rglob("*.py"):
        assert "trust_remote_code" not in path.read_text(), path


def test_huge_query_is_truncated_with_a_warning(tiny_bert, tiny_data, tmp_path, caplog):
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, tmp_path)))
    predictor = Predictor.load(tmp_path)
    huge = "my card was stolen " * 55_000  # about 1 MB
    [result] = predictor.predict([huge])
    assert "1 query over 2000 characters truncated to the first 2000 (the longest: 1044999 characters)" in caplog.text
    assert "my card was stolen" not in caplog.text  # a query's text is no log's: a service's would keep card numbers
    assert result["intent"] == predictor.predict([huge[:2000]])[0]["intent"]
    caplog.clear()
    predictor.predict([huge, "lost card", huge + "!"])  # one line for the batch, not one a query
    assert caplog.text.count("truncated") == 1 and "2 queries over 2000 characters truncated" in caplog.text


def test_a_max_length_past_the_base_model_s_positions_is_refused(tiny_bert, tiny_data, tmp_path):
    """A model folder's bankintent.json saying max_length 100000 loaded, then answered any query over the
    base model's 128 (here) positions with an internal error."""
    import json

    with pytest.raises(ModelError, match=r"max_length 200 is past what base model .* reads \(128 tokens\); --max-length 128 at most"):
        train(resolve_config(None, method="linear-probe", **{**tiny_options(tiny_bert, tiny_data, tmp_path / "long"), "max_length": 200}))
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, tmp_path / "run")))
    spec_file = tmp_path / "run" / "adapter" / "bankintent.json"
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), "max_length": 100000}))
    with pytest.raises(ModelError, match=r"max_length 100000 is past what base model"):
        Predictor.load(tmp_path / "run")


@pytest.mark.parametrize("kind, longest", [("roberta", 18), ("deberta-v2", None)])
def test_the_longest_max_length_is_what_the_encoder_reads(kind, longest, tmp_path):
    """RoBERTa's positions start after the padding token's (20 positions read 18 tokens); DeBERTa-v3's
    are relative (no limit from them): each as its forward pass takes it."""
    import torch
    from transformers import DebertaV2Config, DebertaV2Model, RobertaConfig, RobertaModel

    from bankintent.modeling import check_encoder

    shape = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=20)
    model = (RobertaModel(RobertaConfig(**shape)) if kind == "roberta"
             else DebertaV2Model(DebertaV2Config(**shape, position_biased_input=False, relative_attention=True))).eval()
    model.save_pretrained(tmp_path)
    for length in (18, 19, 64):
        reads = True
        try:
            model(input_ids=torch.full((1, length), 5))
        except (IndexError, RuntimeError):
            reads = False
        assert reads == (longest is None or length <= longest)
        if reads:
            check_encoder(str(tmp_path), length)
        else:
            with pytest.raises(ModelError, match=f"max_length {length} is past what base model .* reads \\(18 tokens\\)"):
                check_encoder(str(tmp_path), length)


def test_a_base_model_that_is_not_there_is_one_line(tiny_data, tmp_path, monkeypatch):
    """A mistyped folder is not looked up on the hub as an id; a hub id the hub cannot give (offline
    here) names the model; neither is a traceback, and no run folder is left."""
    with pytest.raises(ModelError, match=r"^base model ./no_such_dir: no such folder$"):
        train(resolve_config(None, method="linear-probe", **tiny_options("./no_such_dir", tiny_data, tmp_path / "a")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"^cannot load the tokenizer of base model 'no-such-org/no-such-model': "):
        train(resolve_config(None, method="linear-probe", **tiny_options("no-such-org/no-such-model", tiny_data, tmp_path / "b")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_trained_model_or_a_folder_without_config_is_no_base_model(tiny_probe_run, tiny_data, tmp_path):
    """A run folder or its model folder given as --base-model (hoping to continue from it) is said to be
    one, rather than a tokenizer's traceback; a folder without config.json is not a model folder."""
    for given in (tiny_probe_run, tiny_probe_run / "adapter"):
        with pytest.raises(ModelError, match=rf"^base model {given}: a model bankintent trained, not a base encoder; .*train again"):
            train(resolve_config(None, method="linear-probe", **tiny_options(given, tiny_data, tmp_path / "a")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=rf"^base model {tmp_path / 'empty'}: no config.json in the folder"):
        train(resolve_config(None, method="linear-probe", **tiny_options(tmp_path / "empty", tiny_data, tmp_path / "b")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_base_model_that_cannot_be_trained_here_is_refused_in_one_line(tiny_bert, tiny_data, tmp_path):
    """No tokenizer beside the weights (Transformers would make an empty one: every word unknown), another
    model's larger tokenizer, a decoder or an encoder-decoder: refused before training, not deep inside it."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModel

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert / name, bare / name)
    with pytest.raises(ModelError, match=rf"^base model {bare}: no tokenizer in the folder \(none of tokenizer.json, "):
        train(resolve_config(None, method="lora", **tiny_options(bare, tiny_data, tmp_path / "a")))
    torch.manual_seed(0)
    small = AutoConfig.for_model("bert", vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    smaller = _save_tiny(AutoModel.from_config(small), tmp_path / "small_vocab")  # with the 30,522-token BERT tokenizer
    with pytest.raises(ModelError, match=r"its tokenizer has 30,522 tokens and the model's embeddings 1,000: the tokenizer is another"):
        train(resolve_config(None, method="lora", **tiny_options(smaller, tiny_data, tmp_path / "b")))
    for model_type, kind in (("gpt2", "not an encoder"), ("t5", "an encoder-decoder model")):
        sizes = dict(n_embd=32, n_layer=1, n_head=2) if model_type == "gpt2" else dict(d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16)
        other = _save_tiny(AutoModel.from_config(AutoConfig.for_model(model_type, vocab_size=30522, **sizes)), tmp_path / model_type)
        with pytest.raises(ModelError, match=rf"model type '{model_type}' is {kind}; bankintent fine-tunes encoders of the BERT family"):
            train(resolve_config(None, method="contrastive", **tiny_options(other, tiny_data, tmp_path / model_type / "run")))
    assert not any((tmp_path / name).exists() for name in ("a", "b"))


def test_lora_layers_that_are_not_there_are_refused_before_training(tiny_bert, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"target_modules: no layer named 'bogus' in the base model \(its linear layers: .*query"):
        train(resolve_config(None, method="lora", target_modules=["bogus"], **tiny_options(tiny_bert, tiny_data, tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_threshold_that_is_not_a_finite_number_is_refused(tiny_probe_run):
    """nan answered every query in scope; inf was taken, and the service's JSON has no inf: every request a 500."""
    from bankintent.serving import check_serve_options, create_app

    for value in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match=f"the out-of-scope threshold must be a finite number, got {value}"):
            Predictor.load(tiny_probe_run, oos_threshold=float(value))
    with pytest.raises(ConfigError, match="the out-of-scope threshold must be a finite number, got inf"):
        create_app(tiny_probe_run, oos_threshold=float("inf"))
    with pytest.raises(ConfigError, match="the out-of-scope threshold must be a finite number, got -inf"):
        check_serve_options(None, 64, 2.0, float("-inf"))  # before --workers start, each of which said it in a traceback


def test_a_model_whose_outputs_are_not_numbers_says_so(tiny_probe_run):
    """A model whose weights hold nan (a diverged training, a broken file) answered in scope at confidence nan."""
    import torch

    predictor = Predictor.load(tiny_probe_run)
    assert predictor.oos_threshold is not None  # the fallback, which a nan score would pass silently
    with torch.no_grad():
        list(predictor.model.parameters())[-1][1] = float("nan")  # the head's bias: one intent's logit
    with pytest.raises(ModelError, match=r"^the model's outputs are not numbers \(nan or inf\) for 2 of 2 texts, the first text 1: "):
        predictor.predict(["my card", "where is my money"])


def test_a_hub_id_is_refused_at_once_where_the_hub_cannot_be_reached(monkeypatch):
    """Not a minute of retries with backoff: one request tells. The hub's client is replaced by one that
    cannot connect, so that the test means the same on a machine that reaches the hub."""
    import huggingface_hub

    from bankintent.modeling import _check_hub_reachable, resolve_base_model

    def unreachable(self, name, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # the suite runs in offline mode, which says so at once itself
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    _check_hub_reachable.cache_clear()
    with pytest.raises(ModelError, match=r"^base model 'some-org/some-model': no such folder here, not in the local Hugging Face "
                                         r"cache, and the hub cannot be reached \(\[Errno -2\] Name or service not known\); download it"):
        resolve_base_model("some-org/some-model")

    def not_found(self, name, **kwargs):
        raise huggingface_hub.errors.RepositoryNotFoundError("404 no such repository", response=None)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", not_found)
    assert resolve_base_model("some-org/other-model") == "some-org/other-model"  # loading reports a missing repository itself


def test_a_model_folder_copied_without_its_detector_is_refused_at_load(tiny_probe_run, tmp_path):
    """Its out-of-scope score's statistics missing (a copy cut short), the folder loaded and failed at every query."""
    import shutil

    copy = shutil.copytree(tiny_probe_run / "adapter", tmp_path / "copy")
    (copy / "ood.safetensors").unlink()
    with pytest.raises(ModelError, match=r"copy: no ood.safetensors, or one without what its .* out-of-scope score needs: an "
                                         r"incomplete copy of the model folder\?"):
        Predictor.load(copy)
    assert Predictor.load(copy, oos_score="msp").predict("hi")[0]["oos_method"] == "msp"  # the score that needs none still serves


def test_a_file_given_for_a_model_folder_is_said_to_be_a_file(tiny_probe_run, tmp_path):
    from bankintent import evaluate

    data = tmp_path / "train.csv"  # the data's file where the model's folder goes: it read "model folder not found"
    data.write_text("text,category\nhi,a\n")
    with pytest.raises(ModelError, match=r"train.csv: a file, not a model folder \(a run's folder, or its adapter/ folder\)$"):
        Predictor.load(data)
    with pytest.raises(BankintentError, match=r"train.csv: a file, not a model folder \(a run's folder, or its adapter/ folder\)$"):
        evaluate(data)


def test_a_predictor_shows_its_model_and_fallback(tiny_probe_run):
    from bankintent.ood import threshold_text

    predictor = Predictor.load(tiny_probe_run, device="cpu")  # a notebook showed <bankintent.predict.Predictor object at 0x...>
    assert repr(predictor) == (f"Predictor(4 intents, linear-probe on {predictor.spec.base_model}, PyTorch on cpu, out of scope: "
                               f"{predictor.oos_score} > {threshold_text(predictor.oos_threshold)})")
    assert repr(Predictor.load(tiny_probe_run, device="cpu", oos_score="msp", oos_threshold=0.5)).endswith("out of scope: msp > 0.5)")
