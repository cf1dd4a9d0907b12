"""Synthetic faces with ground truth: an on-the-fly stream and a TFDS dataset.

One function, `SyntheticRenderer`, renders every example: random faces from the
face model's prior (`mofa.code.random_code`) under random pose and light, at a
random distance and image-plane shift (that is our "random crop": the camera is
always `Camera.from_fov(DEFAULT_FOV_DEGREES, H, W)`, so the stored codes
re-render exactly), composited over random backgrounds (smooth colour
gradients, low-frequency noise textures and flat colours).

`synthetic_batches` streams batches of it; the `synthetic_faces` TFDS builder
stores the same examples (image as an sRGB PNG) in array_record files that
`builder.as_data_source()` reads without TensorFlow. Both yield the batch
contract of `mofa.data`: linear-RGB images, landmarks, landmark weights,
mask, depth and the flat "code/..." fields.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import re
from typing import Iterator, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mofa import images
from mofa.code import DEFAULT_DISTANCE_MM, DEFAULT_FOV_DEGREES, FIELDS, FaceCode, random_code
from mofa.facemodel import FaceModel
from mofa.render import Camera, render_face



# Per-split seeds: fixed so every split is reproducible and the splits differ.
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class Framing:
    """How faces sit in the crop (the synthetic stand-in for random crops).

    With the 12.6 degree camera and these defaults, the builtin face mesh spans
    55-69% of the width (5th-95th percentile, median 62%) and its 68 landmarks'
    box ~60%, which photo crops match (`faces.CROP_SCALE`). Distance and shift
    are drawn per example. The shift is in mm at the face,
    scaled with distance so it is the same fraction of the image at any scale.
    """

    min_distance_mm: float = 0.92 * DEFAULT_DISTANCE_MM
    max_distance_mm: float = 1.12 * DEFAULT_DISTANCE_MM
    shift_mm: float = 7.0  # std of the x/y offset at 1 m (~3% of the width)
    max_yaw_degrees: float = 35.0
    max_pitch_degrees: float = 15.0
    max_roll_degrees: float = 10.0
    expression_scale: float = 0.7
    light_strength: float = 0.8
    # Consecutive groups of this many examples show one person (same identity and
    # reflectance, own pose, expression and light); batches then carry "person_id".
    views_per_person: int = 1

    def __post_init__(self):
        if self.views_per_person < 1:
            raise ValueError(f"views_per_person must be at least 1, got {self.views_per_person}")


def framing_from_config(overrides) -> Framing:
    """A `Framing` with the fields of `overrides` (a dict / ConfigDict, e.g.
    `config.data.framing`) replaced; unknown names are an error that lists the valid ones."""
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(Framing)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"config.data.framing has unknown fields {unknown}; valid: {sorted(names)}")
    return Framing(**overrides)


def person_ids(batch_size: int, views_per_person: int) -> np.ndarray:
    """(B,) int32 person index of each example (consecutive groups share one)."""
    return (np.arange(batch_size) // views_per_person).astype(np.int32)


def random_backgrounds(key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
    """(B, H, W, 3) linear-RGB backgrounds: a third each (in expectation) of smooth
    two-colour gradients, low-frequency colour noise and flat colours."""
    keys = jax.random.split(key, 8)
    # Colours drawn in sRGB (perceptually even), converted to linear below.
    c0 = jax.random.uniform(keys[0], (batch, 1, 1, 3))
    c1 = jax.random.uniform(keys[1], (batch, 1, 1, 3))
    ys = (jnp.arange(height) + 0.5) / height - 0.5
    xs = (jnp.arange(width) + 0.5) / width - 0.5
    angle = jax.random.uniform(keys[2], (batch, 1, 1), maxval=2.0 * jnp.pi)
    ramp = jnp.cos(angle) * xs[None, None, :] + jnp.sin(angle) * ys[None, :, None]
    ramp = jnp.clip(ramp / 1.2 + 0.5, 0.0, 1.0)[..., None]
    gradient = c0 * (1.0 - ramp) + c1 * ramp
    # Noise: a coarse random grid (4x4 cells) upsampled smoothly, around a base colour.
    coarse = jax.random.normal(keys[3], (batch, 5, 5, 3))
    amplitude = jax.random.uniform(keys[4], (batch, 1, 1, 1), minval=0.05, maxval=0.2)
    noise = jax.image.resize(coarse, (batch, height, width, 3), "cubic")
    fine = jax.random.normal(keys[5], (batch, 17, 17, 3))
    noise = noise + 0.3 * jax.image.resize(fine, (batch, height, width, 3), "cubic")
    textured = c0 + amplitude * noise
    flat = jnp.broadcast_to(c1, (batch, height, width, 3))
    kind = jax.random.randint(keys[6], (batch, 1, 1, 1), 0, 3)
    srgb = jnp.where(kind == 0, gradient, jnp.where(kind == 1, textured, flat))
    return images.srgb_to_linear(srgb)


def random_face_codes(model: FaceModel, key: jax.Array, batch: int,
                      framing: Framing = Framing()) -> FaceCode:
    """Prior faces under random pose/light at a random distance and image-plane shift."""
    k_code, k_dist, k_shift = jax.random.split(key, 3)
    code = random_code(model, k_code, (batch,), expression_scale=framing.expression_scale,
                       max_yaw_degrees=framing.max_yaw_degrees,
                       max_pitch_degrees=framing.max_pitch_degrees,
                       max_roll_degrees=framing.max_roll_degrees, shift_mm=0.0,
                       light_strength=framing.light_strength)
    if framing.views_per_person > 1:  # a person's views share the first view's identity
        first = jnp.asarray(person_ids(batch, framing.views_per_person) * framing.views_per_person)
        code = code.replace(identity=code.identity[first], reflectance=code.reflectance[first])
    distance = jax.random.uniform(k_dist, (batch,), minval=framing.min_distance_mm,
                                  maxval=framing.max_distance_mm)
    shift = (framing.shift_mm * jax.random.normal(k_shift, (batch, 2))
             * (distance / DEFAULT_DISTANCE_MM)[:, None])
    translation = jnp.concatenate([shift, -distance[:, None]], axis=-1)
    return code.replace(translation=translation)


@functools.partial(jax.jit, static_argnames=("batch_size", "image_size", "framing"))
def random_inputs(model: FaceModel, key: jax.Array, batch_size: int, image_size: int,
                  framing: Framing = Framing()) -> tuple[FaceCode, jax.Array]:
    """Random codes and backgrounds (B, H, W, 3) for one batch."""
    k_code, k_bg = jax.random.split(key)
    code = random_face_codes(model, k_code, batch_size, framing)
    return code, random_backgrounds(k_bg, batch_size, image_size, image_size)


@functools.partial(jax.jit, static_argnames=("image_size",))
def render_codes(model: FaceModel, code: FaceCode, background: jax.Array, image_size: int):
    """The batch-contract arrays (a dict) of rendered codes.

    Module-level and jitted with the model as an argument, so every renderer
    (and every re-render of stored codes) of the same shapes shares one compilation.
    """
    size = image_size
    camera = Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
    out = render_face(model, code, camera, background=background)
    lm = out.landmarks
    inside = (lm[..., 0] >= 0) & (lm[..., 0] < size) & (lm[..., 1] >= 0) & (lm[..., 1] < size)
    batch = {
        "image": jnp.clip(out.image, 0.0, 1.0),
        "mask": out.mask,
        "depth": out.depth,
        "landmarks": lm,
        "landmark_weight": inside.astype(jnp.float32),
    }
    for field in FIELDS:
        batch[f"code/{field}"] = getattr(code, field)
    return batch


@flax.struct.dataclass
class CodeDistribution:
    """Per-dimension Gaussian moments of face codes: `mean` and `std` are FaceCodes
    without batch dimensions (InverseFaceNet's corpus distribution)."""

    mean: FaceCode
    std: FaceCode

    @classmethod
    def fit(cls, codes: FaceCode, floor: Optional["CodeDistribution"] = None,
            min_relative_std: float = 0.0, error_std: Optional[FaceCode] = None
            ) -> "CodeDistribution":
        """Moments of a batch of codes (B, ...). `error_std` (per dimension) is added in
        quadrature, undoing the shrinkage of an estimator's predictions; each std is at
        least `min_relative_std` times `floor`'s, so no direction of the corpus collapses."""
        values = jax.tree.map(np.asarray, codes)
        if len(values.identity) < 2:
            raise ValueError("fitting a code distribution needs at least 2 codes")
        mean = jax.tree.map(lambda x: jnp.asarray(x.mean(0)), values)
        std = jax.tree.map(lambda x: x.std(0), values)
        if error_std is not None:
            std = jax.tree.map(lambda s, e: np.sqrt(s**2 + np.asarray(e) ** 2), std, error_std)
        if floor is not None:
            std = jax.tree.map(lambda s, f: np.maximum(s, min_relative_std * np.asarray(f)),
                               std, floor.std)
        return cls(mean=mean, std=jax.tree.map(jnp.asarray, std))

    @classmethod
    def of_framing(cls, model: FaceModel, framing: Framing = Framing(),
                   num_samples: int = 8192) -> "CodeDistribution":
        """The moments of the codes `random_face_codes` draws (a fixed Monte-Carlo sample)."""
        codes = random_face_codes(model, jax.random.key(0), num_samples, framing)
        return cls.fit(codes)


def redraw(code: FaceCode, source: CodeDistribution, target: CodeDistribution) -> FaceCode:
    """Maps codes drawn from `source` onto `target`'s moments, dimension by dimension
    (the same standardized draw, new mean and std)."""
    return jax.tree.map(lambda x, ms, ss, mt, st: mt + st * (x - ms) / ss,
                        code, source.mean, source.std, target.mean, target.std)


class SyntheticRenderer:
    """Renders batches of random faces; `__call__(key)` -> one batch-contract dict.

    With `quantize` (default) the image goes through 8-bit sRGB and back, so the
    stream matches what the TFDS dataset stores (and what photos look like).
    With `distribution`, the codes drawn under `framing` are redrawn to its
    moments (`redraw`), as InverseFaceNet's bootstrapped corpus is.
    """

    def __init__(self, model: FaceModel, image_size: int, batch_size: int,
                 framing: Framing = Framing(), quantize: bool = True,
                 distribution: Optional[CodeDistribution] = None):
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model, self.image_size, self.batch_size = model, image_size, batch_size
        self.framing, self.quantize, self.distribution = framing, quantize, distribution
        self._prior = None if distribution is None else CodeDistribution.of_framing(model, framing)

    def __call__(self, key: jax.Array, rows: slice = slice(None)) -> dict:
        """The batch of `key`, or only its `rows` (the same faces; only those are rendered:
        one process's share of a global batch)."""
        code, background = random_inputs(self.model, key, self.batch_size, self.image_size,
                                          self.framing)
        if self.distribution is not None:
            code = redraw(code, self._prior, self.distribution)
        take = lambda x: x[rows]  # noqa: E731
        code, background = jax.tree.map(take, code), take(background)
        batch = jax.device_get(render_codes(self.model, code, background, self.image_size))
        batch = {k: np.asarray(v, np.float32) for k, v in batch.items()}
        if self.quantize:
            batch["image"] = decode_srgb8(encode_srgb8(batch["image"]))
        if self.framing.views_per_person > 1:
            batch["person_id"] = take(person_ids(self.batch_size, self.framing.views_per_person))
        return batch


def encode_srgb8(linear: np.ndarray) -> np.ndarray:
    """Linear RGB in [0, 1] -> uint8 sRGB."""
    return images.to_uint8(images.linear_to_srgb(linear))


def decode_srgb8(srgb8: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear RGB in [0, 1] (a 256-entry table: exact and fast)."""
    return _SRGB8_TO_LINEAR[np.asarray(srgb8, np.uint8)]


_SRGB8_TO_LINEAR = images.srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0).astype(
    np.float32)


def synthetic_batches(model: FaceModel, image_size: int, batch_size: int,
                      key: jax.Array, framing: Framing = Framing(),
                      quantize: bool = True) -> Iterator[dict]:
    """An endless stream of rendered batches; batch i uses `fold_in(key, i)`."""
    renderer = SyntheticRenderer(model, image_size, batch_size, framing, quantize)
    index = 0
    while True:
        yield renderer(jax.random.fold_in(key, index))
        index += 1


# ---------------------------------------------------------------------------
# The TFDS builder. Imported lazily so the stream above needs no tfds import.

_RENDER_BATCH = 64


def config_name(face_model: str, image_size: int, num_train: int, num_validation: int,
                num_test: int) -> str:
    """A config name from the parameters, e.g. 'builtin-128px-20000-1000-1000'."""
    kind, _, path = face_model.partition(":")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", kind).strip("_") or "model"
    if path:
        # Paths are long and full of separators: a short digest keeps names valid.
        slug += "_" + hashlib.sha1(os.path.abspath(os.path.expanduser(path)).encode()
                                   ).hexdigest()[:8]
    return f"{slug}-{image_size}px-{num_train}-{num_validation}-{num_test}"


# Depth is stored as uint16 in 1/16 mm (0 to 4 m): a third of float32's size after
# zlib, and 0.03 mm error at most, far below a pixel's footprint (~1.7 mm at 128 px).
DEPTH_UNITS_PER_MM = 16.0


def encode_depth(depth_mm: np.ndarray) -> np.ndarray:
    return np.clip(np.round(depth_mm * DEPTH_UNITS_PER_MM), 0, 65535).astype(np.uint16)


def decode_depth(stored: np.ndarray) -> np.ndarray:
    return np.asarray(stored, np.float32) / np.float32(DEPTH_UNITS_PER_MM)


def _png(srgb8: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(srgb8).save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def _builder_module():
    """Defines the builder class on first use (tfds is a heavy import)."""
    import tensorflow_datasets as tfds

    class SyntheticFacesConfig(tfds.core.BuilderConfig):
        def __init__(self, *, face_model: str = "builtin", image_size: int = 128,
                     num_train: int = 20000, num_validation: int = 1000,
                     num_test: int = 1000, name: Optional[str] = None, **kwargs):
            name = name or config_name(face_model, image_size, num_train, num_validation,
                                       num_test)
            super().__init__(name=name, description=(
                f"{face_model} faces at {image_size}px: {num_train} train, "
                f"{num_validation} validation, {num_test} test"), **kwargs)
            self.face_model = face_model
            self.image_size = image_size
            self.num_train = num_train
            self.num_validation = num_validation
            self.num_test = num_test

    class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
        """Rendered faces of a mofa face model with their ground-truth codes."""

        name = "synthetic_faces"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First release."}
        BUILDER_CONFIGS = [
            SyntheticFacesConfig(face_model="builtin", image_size=128),
            SyntheticFacesConfig(face_model="builtin", image_size=64),
        ]

        def _info(self):
            cfg = self.builder_config
            size = cfg.image_size
            model = self._model()
            tensor = tfds.features.Tensor
            code = {
                "rotation": tensor(shape=(3,), dtype=np.float32),
                "translation": tensor(shape=(3,), dtype=np.float32),
                "identity": tensor(shape=(model.num_identity,), dtype=np.float32),
                "expression": tensor(shape=(model.num_expression,), dtype=np.float32),
                "reflectance": tensor(shape=(model.num_albedo,), dtype=np.float32),
                "illumination": tensor(shape=(9, 3), dtype=np.float32),
            }
            # Image is passed pre-encoded (PIL): tfds would need TensorFlow to encode arrays.
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                # zlib: the background is constant, so these shrink several-fold.
                "mask": tensor(shape=(size, size), dtype=np.uint8, encoding="zlib"),
                "depth": tensor(shape=(size, size), dtype=np.uint16, encoding="zlib"),
                "landmarks": tensor(shape=(68, 2), dtype=np.float32),
                "landmark_weight": tensor(shape=(68,), dtype=np.float32),
                "code": tfds.features.FeaturesDict(code),
            })
            return tfds.core.DatasetInfo(
                builder=self, description=self.__doc__, features=features,
                metadata=tfds.core.MetadataDict(
                    face_model=cfg.face_model, fov_degrees=DEFAULT_FOV_DEGREES,
                    model_name=model.name, image_size=size))

        def _model(self) -> FaceModel:
            from mofa import facemodel
            if getattr(self, "_face_model", None) is None:
                self._face_model = facemodel.load(self.builder_config.face_model)
            return self._face_model

        def _split_generators(self, dl_manager):
            cfg = self.builder_config
            counts = {"train": cfg.num_train, "validation": cfg.num_validation,
                      "test": cfg.num_test}
            return {split: self._generate_examples(split, n)
                    for split, n in counts.items() if n > 0}

        def _generate_examples(self, split: str, count: int):
            # One fixed render batch size: the examples do not depend on the split sizes
            # (a bigger config extends a smaller one), and it compiles once for all splits.
            if getattr(self, "_renderer", None) is None:
                self._renderer = SyntheticRenderer(
                    self._model(), self.builder_config.image_size, _RENDER_BATCH,
                    quantize=False)
            yield from generate_examples(self._renderer, SPLIT_SEEDS[split], count, split)

    return SyntheticFacesConfig, SyntheticFaces


def generate_examples(renderer: SyntheticRenderer, seed: int, count: int, prefix: str):
    """(key, example) pairs of a split: batch i is rendered from fold_in(key(seed), i)."""
    key = jax.random.key(seed)
    for start in range(0, count, renderer.batch_size):
        batch = renderer(jax.random.fold_in(key, start // renderer.batch_size))
        srgb8 = encode_srgb8(batch["image"])
        for j in range(min(renderer.batch_size, count - start)):
            example = {
                "image": _png(srgb8[j]),
                "mask": (batch["mask"][j] > 0.5).astype(np.uint8),
                "depth": encode_depth(batch["depth"][j]),
                "landmarks": batch["landmarks"][j],
                "landmark_weight": batch["landmark_weight"][j],
                "code": {f: batch[f"code/{f}"][j] for f in FIELDS},
            }
            yield f"{prefix}-{start + j:08d}", example


def builder_class():
    """The `synthetic_faces` tfds builder class (registered with tfds on first call)."""
    return _builder_module()[1]


def prepare(face_model: str = "builtin", image_size: int = 128, num_train: int = 20000,
            num_validation: int = 1000, num_test: int = 1000,
            data_dir: Optional[str] = None, file_format: str = "array_record"):
    """Generates (once) and returns the `synthetic_faces` builder for these parameters.

    Written as array_record files, read with `builder.as_data_source()[split]` or
    `dataset_batches(builder, split, ...)`: neither needs TensorFlow (nor does
    writing). file_format="tfrecord" would need TensorFlow to read.
    """
    config_cls, builder_cls = _builder_module()
    config = config_cls(face_model=face_model, image_size=image_size, num_train=num_train,
                        num_validation=num_validation, num_test=num_test)
    builder = builder_cls(config=config, data_dir=data_dir, file_format=file_format)
    builder.download_and_prepare()
    return builder


def decode_example(example: dict) -> dict:
    """A stored example (from a data source) -> one batch-contract example (no batch dim)."""
    out = {
        "image": decode_srgb8(example["image"]),
        "mask": np.asarray(example["mask"], np.float32),
        "depth": decode_depth(example["depth"]),
        "landmarks": np.asarray(example["landmarks"], np.float32),
        "landmark_weight": np.asarray(example["landmark_weight"], np.float32),
    }
    for field in FIELDS:
        out[f"code/{field}"] = np.asarray(example["code"][field], np.float32)
    return out


def dataset_batches(builder, split: str, batch_size: int, shuffle: bool = True,
                    seed: int = 0, repeat: bool = True, drop_remainder: bool = True,
                    rows: slice = slice(None)) -> Iterator[dict]:
    """Batch-contract batches of a prepared `synthetic_faces` split (no TensorFlow);
    `rows` of every batch only."""
    from mofa.data.common import source_batches
    source = builder.as_data_source(split=split)
    return source_batches(source, decode_example, batch_size, shuffle=shuffle, seed=seed,
                          repeat=repeat, drop_remainder=drop_remainder, rows=rows)
