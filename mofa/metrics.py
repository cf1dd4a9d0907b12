"""Metric writers: TensorBoard event files (tensorboardX), a JSON-lines log and logging.

clu's writers import TensorFlow at import time; mofa does not depend on
TensorFlow, so this small writer with the same methods (write_scalars,
write_images, flush, close) takes their place.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np


class MetricWriter:
    """Writes scalars and images to `workdir` (TensorBoard + metrics.jsonl) on process 0."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # TensorBoard output is optional; the JSON log is not.
            logging.warning("tensorboardX not installed: writing metrics.jsonl only")

    def write_scalars(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()  # a killed run keeps every line it logged
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, int(step))
        logging.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in values.items()))

    def write_images(self, step: int, images: dict) -> None:
        """images: name -> (H, W, 3) float in [0, 1]."""
        if not self.enabled or self._tb is None:
            return
        for key, image in images.items():
            self._tb.add_image(key, np.clip(np.asarray(image), 0.0, 1.0), int(step),
                               dataformats="HWC")

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(records: list[dict], keys: list[str], path: str, title: str = "") -> None:
    """Writes a PNG with one panel per metric key: value vs step (from `read_jsonl`).

    A key's records without the key are skipped; a baseline dashed line marks its
    value at step 0 (the untrained encoder: the mean face) where there is one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(k in r for r in records)]
    if not present:
        raise ValueError(f"none of {keys} is in the metric records")
    columns = min(3, len(present))
    rows = -(-len(present) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), present):
        points = sorted((r["step"], r[key]) for r in records if key in r)
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, ms=3)
        if steps[0] == 0:
            ax.axhline(values[0], color="gray", ls="--", lw=0.8)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(present):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
