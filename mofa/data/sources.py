"""Step-indexed data sources for training: `source.batch(step, batch_size, rows)`.

A batch is a pure function of (seed, split, step), so a resumed run sees
exactly the batches the interrupted run would have seen. `rows` (a slice of
the global batch, default all of it) is what one process of a multi-process
run produces: each process renders or decodes only its own rows, and the
processes' rows together are exactly the global batch.
"""

from __future__ import annotations

import zlib
from typing import Callable, Iterator

import jax

from mofa.facemodel import FaceModel

SOURCES = ("synthetic", "synthetic_tfds", "folder", "tfds")
# Photo sources: their landmarks are a 2D detector's (MediaPipe, `mofa.data.faces`); the
# synthetic ones carry the face model's own landmark vertices, exactly projected.
DETECTED_SOURCES = ("folder", "tfds")


class SyntheticSource:
    """Faces rendered on the fly (batch i uses fold_in(key, i)): from the model prior
    under `framing` (default `synthetic.Framing()`), or redrawn to `distribution`."""

    def __init__(self, model: FaceModel, image_size: int, seed: int, split: str,
                 framing=None, distribution=None):
        from mofa.data.synthetic import Framing, SyntheticRenderer

        framing = framing or Framing()
        self._make = lambda batch_size: SyntheticRenderer(model, image_size, batch_size,
                                                          framing, distribution=distribution)
        self._renderers: dict = {}
        # Splits draw from disjoint key streams.
        self._key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(split.encode()))

    def batch(self, step: int, batch_size: int, rows: slice = slice(None)) -> dict:
        if batch_size not in self._renderers:
            self._renderers[batch_size] = self._make(batch_size)
        return self._renderers[batch_size](jax.random.fold_in(self._key, step), rows)


class IteratorSource:
    """Wraps a deterministic batch iterator factory `make_iterator(batch_size, rows)`
    (the rows of every global batch of `batch_size`); seeks by replaying from the start."""

    def __init__(self, make_iterator: Callable[[int, slice], Iterator[dict]]):
        self._make_iterator = make_iterator
        self._iterator: Iterator[dict] | None = None
        self._next_step = 0
        self._shape = None

    def batch(self, step: int, batch_size: int, rows: slice = slice(None)) -> dict:
        shape = (batch_size, rows.indices(batch_size))
        if self._iterator is None or step != self._next_step or shape != self._shape:
            self._iterator, self._next_step = self._make_iterator(batch_size, rows), 0
            self._shape = shape
        while self._next_step < step:  # resume: skip what the interrupted run consumed
            next(self._iterator)
            self._next_step += 1
        self._next_step += 1
        return next(self._iterator)


def process_shard() -> tuple:
    """(this process's index, process count): the share of a photo source's first
    detection pass this process takes first (processes share the cache folder)."""
    return jax.process_index(), jax.process_count()


def make_source(config, model: FaceModel, split: str = "train"):
    """The data source named by `config.data.source` for `split`."""
    kind = config.data.source
    shuffle = split == "train"
    framing = config.data.get("framing") or {}
    if kind == "synthetic":
        from mofa.data.synthetic import framing_from_config

        return SyntheticSource(model, config.image_size, config.seed, split,
                               framing_from_config(framing))
    if framing:
        raise ValueError(f"config.data.framing={dict(framing)} only applies to "
                         f"config.data.source='synthetic', not {kind!r}")
    if kind == "synthetic_tfds":
        from mofa.data import synthetic

        builder = synthetic.prepare(
            face_model=config.data.get("face_model") or config.face_model, image_size=config.image_size,
            num_train=config.data.num_train, num_validation=config.data.num_test,
            num_test=config.data.num_test, data_dir=config.data.data_dir or None)
        return IteratorSource(lambda bs, rows: synthetic.dataset_batches(
            builder, split, bs, shuffle=shuffle, seed=config.seed, rows=rows))
    if kind == "folder":
        if not config.data.path:
            raise ValueError("config.data.path must name a folder of photos for source=folder")
        from mofa.data.folder import FolderDataset

        dataset = FolderDataset(config.data.path, config.image_size, scan_shard=process_shard())
        return IteratorSource(lambda bs, rows: dataset.batches(
            bs, shuffle=shuffle, seed=config.seed, repeat=True, rows=rows))
    if kind == "tfds":
        from mofa.data.tfds_images import tfds_image_batches

        tfds_split = {"test": "test", "validation": "validation"}.get(split, "train")
        return IteratorSource(lambda bs, rows: tfds_image_batches(
            config.data.name, tfds_split, config.image_size, bs, shuffle=shuffle,
            seed=config.seed, data_dir=config.data.data_dir or None, rows=rows,
            scan_shard=process_shard()))
    raise ValueError(f"config.data.source={kind!r}: expected one of {SOURCES}")
