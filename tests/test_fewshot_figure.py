"""``benchmarks/fewshot_figure.py`` draws the sweeps' methods and, with ``--line``, other runs as a line of their own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

FIGURE = Path(__file__).resolve().parents[1] / "benchmarks" / "fewshot_figure.py"


def test_extra_runs_are_one_more_line_of_their_mean_per_shots(tmp_path):
    pd.DataFrame({"method": ["contrastive"] * 2, "shots": [5, 10], "test_accuracy": [0.80, 0.86]}).to_csv(tmp_path / "few.csv", index=False)
    pd.DataFrame({"name": ["lpft"], "method": ["lpft"], "test_accuracy": [0.93], "train_size": [9002]}).to_csv(tmp_path / "full.csv", index=False)
    runs = []
    for i, (shots, accuracy) in enumerate([(5, 0.82), (5, 0.84), (10, 0.87)]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"shots": {"per_intent": shots}, "test_accuracy": accuracy}))
        runs.append(str(run))
    out = subprocess.run([sys.executable, str(FIGURE), str(tmp_path / "few.csv"), str(tmp_path / "full.csv"),
                          "--output", str(tmp_path / "fig.png"), "--line", "with names", *runs],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.lstrip().startswith("with names")]
    assert [(float(r[2]), round(float(r[3]), 6), int(r[-1])) for r in rows] == [(5.0, 83.0, 2), (10.0, 87.0, 1)]
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
