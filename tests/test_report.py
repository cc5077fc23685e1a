"""The report renders from tiny runs (a two-run sweep and a single run) with every section, and each
trained model folder gets a model card."""

import base64
import json
import re
import shlex

import pytest
import yaml

from bankintent import resolve_config, train
from bankintent.errors import ConfigError
from bankintent.report import write_report
from bankintent.sweep import read_sweep, run_folder, train_command, write_results
from conftest import tiny_options

SECTIONS = ["## Data set", "## Results", "### Method comparison", "### LoRA hyperparameters", "## Learning curves",
            "## Error analysis", "### Most confused intents", "### Most confused pairs", "### Per-intent F1 (worst 15 highlighted)",
            "### Accuracy by query length", "## What the adapter costs", "## How each run was made"]


@pytest.fixture(scope="module")
def tiny_sweep(tiny_bert, tiny_data, tmp_path_factory):
    """A sweep folder made by the sweep's own functions, its runs trained in this process."""
    out = tmp_path_factory.mktemp("sweep")
    options = tiny_options(tiny_bert, tiny_data, out)
    del options["output"]
    runs = [{"name": "lpft", "options": {"method": "lpft"}},
            {"name": "linear-probe", "tables": ["methods", "hyperparameters"], "options": {"method": "linear-probe"}}]
    (out / "sweep.yaml").write_text(yaml.safe_dump({"base": options, "runs": runs}))
    _, specs = read_sweep(out / "sweep.yaml")
    for spec in specs:
        folder = run_folder(out, spec.name, 42)
        train(resolve_config(None, **spec.options, seed=42, output=str(folder)))
        (folder / "command.txt").write_text(shlex.join(train_command(spec.options, 42, folder)))
    write_results(out, specs, "bankintent sweep --config sweep.yaml --output " + str(out))
    return out


def test_report_has_every_section_and_embeds_its_figures(tiny_sweep, tiny_bert, tiny_data, tmp_path):
    single = tmp_path / "single"
    train(resolve_config(None, method="lora", lr=1e-3, **tiny_options(tiny_bert, tiny_data, single)))
    html_path, md_path = write_report([tiny_sweep, single], tmp_path / "report")
    md = md_path.read_text()
    for section in SECTIONS:
        assert f"\n{section}\n" in md, section

    assert "| train | 72 | 4 |" in md and "| test | 20 | 4 |" in md  # 80 rows, 10% validation; 20 test rows
    lpft = json.loads((tiny_sweep / "runs/lpft/seed-42/metrics.json").read_text())
    assert f"| lpft | 1 (single seed) | {100 * lpft['val_accuracy']:.2f}% | {100 * lpft['test_accuracy']:.2f}% |" in md
    assert "| single | lora |" in md  # the run outside the sweep gets its own row
    best = max([lpft, json.loads((tiny_sweep / "runs/linear-probe/seed-42/metrics.json").read_text()),
                json.loads((single / "metrics.json").read_text())], key=lambda m: m["val_accuracy"])
    assert f"accuracy {best['test_accuracy']:.2%})" in md
    assert md.count("`bankintent train ") == 3 and f"bankintent train --config {single}/config.yaml" in md

    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(figures) == 5 and all((tmp_path / "report" / f).stat().st_size > 5000 for f in figures)
    html = html_path.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 5 and 'src="figures/' not in html
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    assert "<table>" in html and "&lt;=5 words" in html  # tables rendered, text escaped


def test_report_of_a_folder_without_runs_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="neither a training run .no metrics.json. nor a sweep .no sweep.yaml."):
        write_report([tmp_path], tmp_path / "report")


def test_model_card_in_the_model_folder(tiny_sweep):
    run = tiny_sweep / "runs/lpft/seed-42"
    card = (run / "adapter/README.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-classification"
    assert front["base_model"] == metrics["base_model"]
    results = {r["dataset"]["split"]: r["metrics"][0]["value"] for r in front["model-index"][0]["results"]}
    assert results == {"validation": round(metrics["val_accuracy"], 4), "test": round(metrics["test_accuracy"], 4)}
    for heading in ("## Intended uses and limitations", "## How to use", "## Training data", "## Training procedure", "## Evaluation"):
        assert heading in card
    assert "Predictor.load" in card and "Model Card for Model ID" not in card  # not PEFT's generic card
