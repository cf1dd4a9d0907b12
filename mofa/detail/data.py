"""The coarse codes of photos (estimated once per face and cached) and the photo source
that serves them with the images."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mofa import inference, train
from mofa.code import FIELDS, FaceCode
from mofa.facemodel import FaceModel
from mofa.render import Camera
from mofa.detail.synthetic import coarse_inputs, detailed_batch


class CoarseCodes:
    """Coarse codes of photos, estimated once per face and kept.

    `reconstructor` (`inference.Reconstructor`: the encoder's estimate and/or
    analysis-by-synthesis fitting) runs only on faces not seen before, keyed by the
    crop's content; the codes are saved to `path` (npz), so a resumed run or a later
    evaluation of the same photos does not fit them again. `settings` describes how
    the codes are estimated: a saved file with other settings is not reused.
    """

    def __init__(self, reconstructor, path: Optional[str] = None, settings: str = ""):
        self.reconstructor, self.path, self.settings = reconstructor, path, settings
        self.codes: dict[str, dict] = {}
        if path and os.path.exists(path):
            with np.load(path) as saved:
                if str(saved["settings"]) != settings:
                    logging.warning("%s holds coarse codes estimated with other settings "
                                    "(%s, now %s): estimating them again", path,
                                    saved["settings"], settings)
                    return
                for i, key in enumerate(saved["keys"]):
                    self.codes[str(key)] = {f: saved[f][i] for f in FIELDS}

    def __call__(self, batch: dict) -> FaceCode:
        """The codes (B,) of a batch-contract batch (image, landmarks, landmark_weight)."""
        keys = [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
                for image in np.asarray(batch["image"])]
        first = {}
        for i, key in enumerate(keys):
            if key not in self.codes:
                first.setdefault(key, i)
        if first:
            crops = [{name: np.asarray(batch[name][i])
                      for name in ("image", "landmarks", "landmark_weight")}
                     for i in first.values()]
            fitted = self.reconstructor.codes(crops)
            for j, key in enumerate(first):
                self.codes[key] = {f: np.asarray(getattr(fitted, f))[j] for f in FIELDS}
            self._save()
        return FaceCode(**{f: jnp.asarray(np.stack([self.codes[k][f] for k in keys]))
                           for f in FIELDS})

    def _save(self) -> None:
        if not self.path:
            return
        keys = list(self.codes)
        temporary = self.path + ".tmp.npz"
        np.savez(temporary, keys=np.asarray(keys), settings=np.asarray(self.settings),
                 **{f: np.stack([self.codes[k][f] for k in keys]) for f in FIELDS})
        os.replace(temporary, self.path)  # atomic: a killed run leaves the old file whole


class CoarseSource:
    """Batches for FineNet: image, coarse depth, mask, albedo, light (+ true detailed depth).

    data.source "synthetic_detail" renders `detailed_batch`; its coarse estimate is the
    true code (isolates FineNet) unless detail.coarse_workdir names a trained encoder.
    Photos (data.source "folder" or "tfds") get their coarse code from that encoder
    and/or detail.coarse_fit_steps of analysis-by-synthesis fitting (`mofa.fitting`),
    once per face (`CoarseCodes`, kept in workdir/coarse_codes.npz).
    """

    def __init__(self, config: ml_collections.ConfigDict, model: FaceModel, camera: Camera,
                 workdir: Optional[str] = None):

        self.config, self.model, self.camera = config, model, camera
        self.key = jax.random.key(config.seed + 1)
        self.encoder = None
        coarse_workdir = config.detail.get("coarse_workdir", "")
        fit_steps = config.detail.get("coarse_fit_steps", 0)
        if coarse_workdir:
            coarse_config, coarse_state, decoder, _ = train.load_trained(coarse_workdir)
            if coarse_config.image_size != config.image_size:
                raise ValueError(f"CoarseNet {coarse_workdir} works at {coarse_config.image_size}"
                                 f" px, the detail config at {config.image_size} px")
            self.encoder = train.code_encoder(coarse_state, decoder,
                                              train.config_refine_steps(coarse_config))
        self.photos = self.coarse_codes = None
        if self.encoder is not None or fit_steps > 0:
            reconstructor = inference.Reconstructor(
                model, camera, batch_size=config.batch_size, fit_steps=max(fit_steps, 0),
                encoder=self.encoder)
            settings = (f"face_model={config.face_model} image_size={config.image_size} "
                        f"encoder={coarse_workdir or None} fit_steps={max(fit_steps, 0)}")
            self.coarse_codes = CoarseCodes(
                reconstructor, os.path.join(workdir, "coarse_codes.npz") if workdir else None,
                settings)
        if config.data.source != "synthetic_detail":
            from mofa.data import sources
            self.photo_codes()  # fails early, naming the settings
            self.photos = sources.make_source(config, model, split="train")

    def photo_codes(self) -> CoarseCodes:
        """The coarse codes of photos; an error naming the settings where there are none."""
        if self.coarse_codes is None:
            raise ValueError("photos have no ground-truth code: set detail.coarse_workdir to a "
                             "trained MoFA workdir and/or detail.coarse_fit_steps > 0 to fit "
                             "each photo")
        return self.coarse_codes

    def batch(self, step: int, batch_size: int, rows: slice = slice(None)) -> dict:
        """Batch `step`, or its `rows` (photos: only those are read; synthetic faces: the
        whole batch is drawn, then sliced)."""
        key = jax.random.fold_in(self.key, step)
        if self.photos is not None:
            photos = self.photos.batch(step, batch_size, rows)
            image = jnp.asarray(photos["image"])
            return {"image": image,
                    **coarse_inputs(self.model, self.coarse_codes(photos), self.camera)}
        full = detailed_batch(self.model, key, batch_size, self.config.image_size)
        full = jax.tree.map(lambda x: x[rows], full)
        if self.encoder is None:  # the true code's render is already there
            return {**{k: full[k] for k in ("image", "depth", "coarse_depth", "mask", "albedo",
                                            "landmarks")},
                    "illumination": full["code"].illumination}
        coarse = coarse_inputs(self.model, self.encoder(full["image"]), self.camera)
        # The truth is known only where the true face is, too.
        return {"image": full["image"], "depth": full["depth"],
                "depth_mask": coarse["mask"] * full["mask"], **coarse}
