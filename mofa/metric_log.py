"""The metric log of a run: a writer to TensorBoard event files (tensorboardX), a JSON-lines
log (metrics.jsonl) and logging, and its reader.

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
