"""Any TFDS dataset with an image feature (CelebA, ...) as face crops with landmarks.

Reads through `tfds.data_source` (array_record, random access, no TensorFlow)
and runs the same detection and cropping as the folder pipeline
(`mofa.data.faces`). Landmarks are cached per example under the cache folder,
keyed by dataset name, config, version, split and index.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator, Optional

import numpy as np

from mofa.data import faces as faces_lib
from mofa.data.folder import DetectedFaces, LandmarkCache, detector_tag


def find_image_key(features) -> str:
    """The (flattened) name of the first Image feature of a tfds FeaturesDict."""
    import tensorflow_datasets as tfds

    def walk(feature, prefix):
        if isinstance(feature, tfds.features.Image):
            return prefix
        if isinstance(feature, tfds.features.FeaturesDict):
            for name, sub in feature.items():
                found = walk(sub, f"{prefix}/{name}" if prefix else name)
                if found:
                    return found
        return None

    key = walk(features, "")
    if not key:
        raise ValueError("the dataset has no image feature")
    return key


def _get(example: dict, key: str):
    for part in key.split("/"):
        example = example[part]
    return example


class TfdsImageDataset(DetectedFaces):
    """Face crops of a TFDS split, e.g. `TfdsImageDataset("celeb_a", "train", 128)`.

    The split is scanned once (with a progress bar) for faces; `max_examples`
    limits the scan to the first examples. `download=True` lets tfds prepare
    the dataset (as array_record) where it is not prepared yet. `scan_workers` and
    `scan_shard` as for `FolderDataset`.
    """

    def __init__(self, name: str, split: str, image_size: int, data_dir: Optional[str] = None,
                 image_key: Optional[str] = None, detector=None, cache_dir: Optional[str] = None,
                 max_examples: Optional[int] = None, max_faces_per_image: int = 1,
                 download: bool = False, progress: bool = True,
                 scan_workers: Optional[int] = None, scan_shard: tuple = (0, 1)):
        super().__init__(image_size, max_faces_per_image, scan_workers, scan_shard)
        import tensorflow_datasets as tfds

        self.name, self.split = name, split
        self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        builder = tfds.builder(name, data_dir=data_dir)
        self.image_key = image_key or find_image_key(builder.info.features)
        self._detector = detector
        stamp = f"{builder.info.full_name}|{split}"
        if cache_dir is None:
            from mofa.facemodel import cache_dir as mofa_cache
            digest = hashlib.sha1(stamp.encode()).hexdigest()[:16]
            cache_dir = os.path.join(mofa_cache(), "tfds", digest)
        self.cache = LandmarkCache(cache_dir)
        self._stamp = stamp
        count = len(self.source) if max_examples is None else min(max_examples, len(self.source))
        self._scan(count, progress)

    @property
    def detector(self):
        if self._detector is None:
            self._detector = faces_lib.MediaPipeDetector(max_faces=max(4, self.max_faces_per_image))
        return self._detector

    def _tag(self) -> str:
        if self._detector is None:
            return faces_lib.MediaPipeDetector.tag(max(4, self.max_faces_per_image))
        return detector_tag(self._detector)

    def _load(self, index: int) -> np.ndarray:
        try:
            image = np.asarray(_get(self.source[index], self.image_key))
        except Exception as err:  # corrupt record: reported, never fatal
            raise faces_lib.ImageError(f"cannot read example: {type(err).__name__}: {err}")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise faces_lib.ImageError(f"image has shape {image.shape}, expected (H, W, 1|3|4)")
        if image.dtype != np.uint8:
            top = 65535.0 if image.dtype == np.uint16 else (1.0 if image.max() <= 1.0 else 255.0)
            image = np.clip(np.round(image.astype(np.float64) * (255.0 / top)), 0, 255)
            image = image.astype(np.uint8)
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        elif image.shape[-1] == 4:
            # Alpha on mid grey, as for photo files.
            alpha = image[..., 3:].astype(np.float32) / 255.0
            image = (image[..., :3] * alpha + 128.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
        if min(image.shape[:2]) < faces_lib.MIN_IMAGE_SIZE:
            raise faces_lib.ImageError(f"image too small ({image.shape[1]}x{image.shape[0]} px)")
        return image

    def _scan(self, count: int, progress: bool) -> None:
        tag = self._tag()
        self._scan_sources(
            list(range(count)), lambda i: f"{self._stamp}|{i}|{tag}|{self.max_faces_per_image}",
            lambda i: f"{self.name}/{self.split}[{i}]", self._detect,
            f"finding faces in {self.name}/{self.split}", progress)

    def _detect(self, index: int) -> dict:
        return self._detection_record(lambda: (self._load(index), 1.0))


def tfds_image_batches(name: str, split: str, image_size: int, batch_size: int,
                       shuffle: bool = True, seed: int = 0, repeat: bool = True,
                       drop_remainder: bool = True, rows: slice = slice(None),
                       **dataset_options) -> Iterator[dict]:
    """Batch-contract batches of face crops from a TFDS image dataset (see TfdsImageDataset);
    `rows` of every batch only."""
    dataset = TfdsImageDataset(name, split, image_size, **dataset_options)
    return dataset.batches(batch_size, shuffle=shuffle, seed=seed, repeat=repeat,
                           drop_remainder=drop_remainder, rows=rows)
