from pathlib import Path

import pytest
import yaml

from bankintent.cli import build_parser
from bankintent.config import METHODS, RECIPES, TrainConfig, resolve_config
from bankintent.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("method", METHODS)
def test_config_file_matches_recipe(method):
    from_file = resolve_config(CONFIGS / f"{method}.yaml")
    from_flag = resolve_config(None, method=method)
    assert from_file == from_flag
    assert from_file.method == method
    for key, value in RECIPES[method].items():
        assert getattr(from_file, key) == value


def test_precedence_flags_over_file_over_recipe(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": "lora", "lr": 3e-4, "epochs": 7}))
    cfg = resolve_config(path, epochs=2, lora_r=None)
    assert (cfg.method, cfg.lr, cfg.epochs, cfg.lora_r, cfg.pooling) == ("lora", 3e-4, 2, 8, "auto")
    # a method given on the command line takes that method's recipe under the file's values
    assert resolve_config(None, method="full").lr == 1e-4


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config(None, method="lora-unfreeze", target_modules="query,value", seed=3)
    cfg.save(tmp_path / "config.yaml")
    again = resolve_config(tmp_path / "config.yaml")
    assert again == cfg and again.target_modules == ["query", "value"]


@pytest.mark.parametrize(
    "content, message",
    [("lr: [", "not valid YAML"), ("learning_rate: 1", r"unknown option\(s\) learning_rate"), ("- 1", "expected a mapping")],
)
def test_bad_config_file(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        resolve_config(path)


def test_a_mistyped_option_in_python_names_the_one_meant():
    with pytest.raises(ConfigError, match=r"^unknown option\(s\) epoch \(epochs\?\), zzz$"):
        resolve_config(None, data="my_intents", epoch=3, zzz=1)
    with pytest.raises(ConfigError, match=r"^TrainConfig: unknown option\(s\) epoch \(epochs\?\)$"):  # was a TypeError naming none
        TrainConfig(data="my_intents", epoch=3)


def test_bad_values():
    with pytest.raises(ConfigError, match="unknown method 'qlora'"):
        resolve_config(None, method="qlora")
    with pytest.raises(ConfigError, match="pooling"):
        TrainConfig(pooling="max")
    with pytest.raises(ConfigError, match="unknown intent_names 'maybe'; choose one of auto, on, off"):
        TrainConfig(intent_names="maybe")  # was taken as "on"
    with pytest.raises(ConfigError, match="unknown augment 'pairs'; choose one of confused-pairs"):
        TrainConfig(augment="pairs")
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="epochs must be 0 or more, got -1"):  # 0 is allowed (no fine-tuning epoch)
        TrainConfig(epochs=-1)


@pytest.mark.parametrize("option, value, message", [
    ("lr", float("nan"), "lr must be a positive number, got nan"), ("lr", -1.0, "lr must be a positive number"),
    ("lora_dropout", 1.5, "lora_dropout and warmup_ratio must be at least 0 and below 1"), ("warmup_ratio", 3.0, "warmup_ratio"),
    ("probe_c", [-1.0], r"probe_c must be positive numbers, got \[-1.0\]"), ("max_train_samples", 0, "max_train_samples must be positive"),
    ("val_fraction", 1.5, "val_fraction must be between 0 and 1"), ("oos_coverage", 2.0, r"oos_coverage must be in \(0, 1\]"),
    ("oos_coverage", 95, r"oos_coverage must be in \(0, 1\], got 95.0 \(a share: 0.95 for 95%\?\)$"),
])
def test_values_that_would_fail_inside_training_are_refused_before_it(option, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{option: value})


def test_cli_flags_mirror_config_fields():
    args = build_parser().parse_args(
        ["train", "--output", "o", "--lora-r", "16", "--lr", "1e-5", "--target-modules", "q_lin,v_lin", "--resume"]
    )
    assert (args.lora_r, args.lr, args.target_modules, args.resume, args.epochs) == (16, 1e-5, ["q_lin", "v_lin"], True, None)


def test_a_yaml_number_read_as_text_is_taken_and_a_wrong_type_refused_in_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text('epochs: "3"\nlr: 1e-4\nbatch_size: 1e1\nintent_names: on\n')  # PyYAML: text, text, text and true
    cfg = resolve_config(path)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.intent_names) == (3, 1e-4, 10, "on")
    for written, probe_c in (('"1,3"', [1.0, 3.0]), ('"3"', [3.0]), ("3", [3.0]), ('[1, "3e-1"]', [1.0, 0.3])):
        path.write_text(f"probe_c: {written}\n")
        assert resolve_config(path).probe_c == probe_c
    for content, message in (("epochs: three", "epochs must be a whole number, got 'three'"), ("epochs: 2.5", "got 2.5"),
                             ("overwrite: maybe", "overwrite must be true or false, got 'maybe'"),
                             ("data: 5", "data must be a .csv, .tsv, .jsonl or .parquet file, a folder holding train.csv, or 'banking77', got int 5"),
                             ("base_model: [a, b]", r"base_model must be text, got list \['a', 'b'\]"),
                             ("probe_c: [1, x]", "probe_c must be a number, got 'x'"),  # was a TypeError in the range check
                             ("seed: null", "seed must be a whole number, got None")):  # was a TypeError inside torch
        path.write_text(content + "\n")
        with pytest.raises(ConfigError, match=message):
            resolve_config(path)


def test_thin_repeats_below_one_is_refused():
    with pytest.raises(ConfigError, match=r"thin_repeats must be at least 1 \(1: no repeats\), got 0"):
        resolve_config(None, thin_repeats=0)


def test_python_callers_may_give_paths_and_a_dataframe_is_refused_with_what_to_do(tmp_path):
    import pandas as pd

    cfg = resolve_config(None, data=tmp_path / "my_intents", output=tmp_path / "run")
    assert (cfg.data, cfg.output) == (str(tmp_path / "my_intents"), str(tmp_path / "run"))
    frame = pd.DataFrame({"text": [f"query {i}" for i in range(50)], "category": ["a", "b"] * 25})
    with pytest.raises(ConfigError) as error:
        resolve_config(None, data=frame)
    message = str(error.value)
    assert "\n" not in message and len(message) < 250, message
    assert message.startswith("data must be a .csv, .tsv, .jsonl or .parquet file, a folder holding train.csv, or 'banking77', got DataFrame ")
    assert message.endswith("; save a DataFrame first, e.g. frame.to_csv('train.csv', index=False)")


def test_options_a_method_has_no_use_for_are_named_when_set():
    from bankintent.config import UNUSED, unused_options

    assert unused_options(resolve_config(None, method="full", lora_r=16, lr=3e-5)) == ["lora_r 16"]
    assert unused_options(resolve_config(None, method="linear-probe", epochs=8, probe_c=[3.0])) == ["epochs 8"]
    assert unused_options(resolve_config(None, method="lora-unfreeze", unfreeze_layers_per_epoch=1)) == []
    for method in METHODS:  # every recipe as it stands says nothing
        assert method in UNUSED and unused_options(resolve_config(None, method=method)) == []


@pytest.mark.parametrize("method", ["auto", *METHODS])
def test_a_train_config_object_trains_what_the_same_keywords_train(method, monkeypatch):
    """TrainConfig(method=M) took every dataclass default as given, so a contrastive run got lpft's
    learning rate (ten times the recipe's) and lora the wrong pooling; it now gets the method's recipe."""
    import bankintent
    import bankintent.training

    trained = []
    monkeypatch.setattr(bankintent.training, "train", lambda cfg: trained.append(cfg) or {})
    bankintent.train(TrainConfig(method=method, data="mine", output="runs/a", seed=7))
    bankintent.train(method=method, data="mine", output="runs/a", seed=7)
    bankintent.train(trained[1])  # a resolved config trains as itself
    bankintent.train(TrainConfig(method=method, data="mine", output="runs/a"), seed=7)  # keywords over a config's values
    assert trained[0] == trained[1] == trained[2] == trained[3]
    assert trained[0].lr == RECIPES.get(method, RECIPES["lpft"]).get("lr", TrainConfig.lr)
    with pytest.raises(ConfigError, match=r"train\(config\): expected a bankintent.TrainConfig, got str 'mine.csv'"):
        bankintent.train("mine.csv")
    # a value given, though it is the dataclass default, is kept over the recipe's
    bankintent.train(TrainConfig(method=method, average_weights=False, lr=TrainConfig.lr, pooling="mean"))
    assert (trained[-1].average_weights, trained[-1].lr, trained[-1].pooling) == (False, TrainConfig.lr, "mean")


def test_resume_and_overwrite_together_are_refused():
    """Together they resumed a finished run and then advised --overwrite, the flag already given."""
    with pytest.raises(ConfigError, match=r"runs/a: --resume continues the run in the output folder and --overwrite replaces it; give one"):
        resolve_config(None, output="runs/a", resume=True, overwrite=True)


def test_a_mistyped_option_to_train_is_said_before_pytorch_is_imported():
    """bankintent.train(epoch=3) took seconds (PyTorch and Transformers imported) to say 'epochs?'."""
    import subprocess
    import sys

    script = ("import sys, bankintent\n"
              "try:\n    bankintent.train(epoch=3)\nexcept bankintent.ConfigError as exc:\n    print(exc)\n"
              "print('torch' in sys.modules)\n")
    said = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert said == ["unknown option(s) epoch (epochs?)", "False"]
