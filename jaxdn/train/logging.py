"""Training output on the host: progress bar, JSON-lines metrics log, loss-curve PNG.

Only process 0 of a multi-process run writes (the loop passes ``enabled=False`` elsewhere).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable


def _clean(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if isinstance(v, (bool, int)) and not isinstance(v, float):
        return v
    return f if math.isfinite(f) else str(f)


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per line, with ``step`` and ``kind``.

    Args:
      path: the log file (created with its folder).
      enabled: False makes every method a no-op (non-zero processes).
    """

    def __init__(self, path: str | Path, *, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` (written after the checkpoint a run resumes from)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """All records (a torn last line from a killed run is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def plot_loss_curve(records: Iterable[dict[str, Any]], path: str | Path, *, title: str = "") -> Path | None:
    """Write a PNG of every ``loss``-like metric against step (train and eval); None if no data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend, fast import

    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for k, v in r.items():
            if "loss" in k and isinstance(v, (int, float)) and not isinstance(v, bool):
                name = f"{r.get('kind', 'train')} {k}"
                xs, ys = series.setdefault(name, ([], []))
                xs.append(r["step"])
                ys.append(float(v))
    if not series:
        return None
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    ax = fig.add_subplot()
    for name, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, label=name, marker="." if len(xs) < 30 else None)
    if all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


class Progress:
    """tqdm bar over steps showing step/s and the latest loss; silent when disabled."""

    def __init__(self, *, total: int, initial: int, enabled: bool, desc: str = "train"):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                             dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_metrics(self, metrics: dict[str, Any]) -> None:
        if self._bar is not None:
            shown = {k: f"{float(v):.4g}" for k, v in metrics.items()
                     if isinstance(v, (int, float)) and ("loss" in k or k.startswith("eval"))}
            self._bar.set_postfix(shown, refresh=False)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
