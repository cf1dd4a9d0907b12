"""Data pipelines. Every one yields numpy dict batches with a leading batch dim B:

  "image"            float32 (B, H, W, 3) linear RGB in [0, 1] (photos sRGB-decoded)
  "landmarks"        float32 (B, 68, 2) pixels in the crop (x right, y down, pixel
                     centres at +0.5), Multi-PIE 68 order
  "landmark_weight"  float32 (B, 68): 1 valid, 0 missing
synthetic data also has
  "mask", "depth"    float32 (B, H, W) (depth in mm, 0 on background)
  "code/rotation", "code/translation", "code/identity", "code/expression",
  "code/reflectance", "code/illumination": the ground-truth FaceCode fields,
rendered with `Camera.from_fov(mofa.code.DEFAULT_FOV_DEGREES, H, W)`;
multi-view synthetic batches (`Framing.views_per_person` > 1) also have
  "person_id"        int32 (B,): examples with one id show one person.

Pipelines: `synthetic_batches` (rendered on the fly), `synthetic.prepare` (the
`synthetic_faces` TFDS dataset, read with `synthetic.dataset_batches`),
`FolderDataset(root, size).batches(...)` (a user's photos) and
`tfds_image_batches(name, split, ...)` (CelebA or any TFDS image dataset).
Submodules import lazily: mediapipe and tfds load only when used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "synthetic_batches": "mofa.data.synthetic",
    "SyntheticRenderer": "mofa.data.synthetic",
    "Framing": "mofa.data.synthetic",
    "CodeDistribution": "mofa.data.synthetic",
    "prepare_synthetic": ("mofa.data.synthetic", "prepare"),
    "synthetic_dataset_batches": ("mofa.data.synthetic", "dataset_batches"),
    "FolderDataset": "mofa.data.folder",
    "TfdsImageDataset": "mofa.data.tfds_images",
    "tfds_image_batches": "mofa.data.tfds_images",
    "MediaPipeDetector": "mofa.data.faces",
}


def __getattr__(name):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'mofa.data' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(module), attr)


__all__ = sorted(_EXPORTS)
