"""Reports: per-epoch history (CSV + learning-curve PNG) and the results table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_accuracy"]
TABLE_COLUMNS = ["Method", "Val Acc", "Test Acc", "Macro-F1", "Trainable %", "Adapter size", "Training time"]


def write_history(history: list[dict], out: Path) -> None:
    """``history.csv`` and ``learning_curves.png`` (loss and validation accuracy against epoch)."""
    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    frame.to_csv(out / "history.csv", index=False, float_format="%.5f")
    if frame.empty:
        return
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(frame.epoch, frame.train_loss, "o-", label="train")
    loss_ax.plot(frame.epoch, frame.val_loss, "o-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    loss_ax.legend()
    acc_ax.plot(frame.epoch, frame.val_accuracy, "o-", color="C1", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy")
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.set_xticks(frame.epoch)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def results_row(metrics: dict) -> dict[str, str]:
    return {
        "Method": metrics["method"],
        "Val Acc": _pct(metrics.get("val_accuracy")),
        "Test Acc": _pct(metrics.get("test_accuracy")),
        "Macro-F1": _pct(metrics.get("test_macro_f1")),
        "Trainable %": f"{metrics['trainable_pct']:.3f}%",
        "Adapter size": human_bytes(metrics["adapter_bytes"]),
        "Training time": f"{metrics['train_seconds'] / 60:.1f} min",
    }


def markdown_table(rows: list[dict[str, str]], columns: list[str] = TABLE_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
