"""The semantic code: what the encoder emits and the decoder renders."""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mofa.facemodel import FaceModel
from mofa.render import sh

# A face about 1 m from a camera with a ~12.6 degree field of view fills a
# 224 px crop the way face-reconstruction crops do (Deep3DFaceRecon, MoFA).
DEFAULT_DISTANCE_MM = 1000.0
DEFAULT_FOV_DEGREES = 12.6


# The code's fields, in order: the one list every module uses (batches carry them as
# "code/<field>", saved codes as arrays of these names).
FIELDS = ("rotation", "translation", "identity", "expression", "reflectance", "illumination")


@flax.struct.dataclass
class FaceCode:
    """Pose, shape, expression, reflectance and illumination of a batch of faces.

    rotation: (..., 3) Euler angles in radians (pitch, yaw, roll), see
      `render.camera.euler_to_matrix`; translation: (..., 3) mm, camera space.
    identity / expression / reflectance: standardized model coefficients.
    illumination: (..., 9, 3) SH coefficients of incident radiance (camera space).
    """

    rotation: jax.Array
    translation: jax.Array
    identity: jax.Array
    expression: jax.Array
    reflectance: jax.Array
    illumination: jax.Array

    @property
    def batch_shape(self) -> tuple:
        return tuple(self.rotation.shape[:-1])

    @classmethod
    def from_batch(cls, batch: dict) -> "FaceCode":
        """The ground-truth code of a synthetic batch (its "code/<field>" entries)."""
        return cls(**{f: jnp.asarray(batch[f"code/{f}"]) for f in FIELDS})

    def as_dict(self) -> dict:
        """{field: array} in `FIELDS` order."""
        return {f: getattr(self, f) for f in FIELDS}

    def validate(self, model: FaceModel) -> "FaceCode":
        """Raises ValueError naming the field whose shape does not fit `model`."""
        batch = self.batch_shape
        expected = {
            "rotation": batch + (3,),
            "translation": batch + (3,),
            "identity": batch + (model.num_identity,),
            "expression": batch + (model.num_expression,),
            "reflectance": batch + (model.num_albedo,),
            "illumination": batch + (sh.NUM_SH, 3),
        }
        for field, shape in expected.items():
            actual = tuple(getattr(self, field).shape)
            if actual != shape:
                raise ValueError(f"FaceCode.{field} has shape {actual}, expected {shape} "
                                 f"for face model '{model.name}'")
        return self

    @classmethod
    def neutral(cls, model: FaceModel, batch_shape=(), distance_mm: float = DEFAULT_DISTANCE_MM
                ) -> "FaceCode":
        """Mean face, frontal, at `distance_mm`, under uniform unit light."""
        batch_shape = tuple(batch_shape)
        zeros = lambda n: jnp.zeros(batch_shape + (n,), jnp.float32)  # noqa: E731
        translation = zeros(3).at[..., 2].set(-distance_mm)
        rest = model.expression_bounds[0] if model.blendshapes else 0.0  # no blendshape active
        return cls(rotation=zeros(3), translation=translation, identity=zeros(model.num_identity),
                   expression=zeros(model.num_expression) + rest, reflectance=zeros(model.num_albedo),
                   illumination=sh.ambient_light(1.0, batch_shape))


def random_illumination(key: jax.Array, batch_shape=(), light_strength: float = 0.8
                        ) -> jax.Array:
    """Random SH light (..., 9, 3) of the synthetic faces: an ambient level, a
    clamped-cosine lobe from the front hemisphere, mild colour."""
    return _illumination_from_keys(jax.random.split(key, 4), tuple(batch_shape), light_strength)


def _illumination_from_keys(keys, batch_shape: tuple, light_strength: float) -> jax.Array:
    direction = (jax.random.normal(keys[0], batch_shape + (3,)) * jnp.array([0.8, 0.6, 0.3])
                 + jnp.array([0.0, 0.3, 1.0]))
    direction = direction * jax.lax.rsqrt(jnp.sum(direction**2, -1, keepdims=True))
    lobe = sh.sh_basis(direction) * sh.BAND_FACTORS  # (..., 9)
    ambient = jax.random.uniform(keys[1], batch_shape + (1,), minval=0.4, maxval=0.8)
    strength = jax.random.uniform(keys[2], batch_shape + (1,), minval=0.3, maxval=1.0)
    tint = 1.0 + 0.04 * jax.random.normal(keys[3], batch_shape + (1, 3))
    return (ambient[..., None] / sh.Y00 * (jnp.arange(sh.NUM_SH) == 0)[:, None]
            + light_strength * strength[..., None] * lobe[..., None]) * tint


@functools.lru_cache(maxsize=None)
def illumination_statistics(light_strength: float = 0.8) -> tuple:
    """Mean and standard deviation (9, 3) of each SH coefficient of
    `random_illumination`, estimated once from 65,536 draws of a fixed key (a
    sampling error below 0.5% of each deviation): the illumination prior's Gaussian.
    numpy arrays, so they are constants in any jitted caller."""
    with jax.ensure_compile_time_eval():
        mean, std = _illumination_moments(jax.random.key(20171), light_strength)
        return np.asarray(mean), np.asarray(std)


# One program: run op by op, the draws compiled 46 small ones, 1.4 s in every process
# that first traced a caller (an encoder, the fit's prior).
@functools.partial(jax.jit, static_argnames="light_strength")
def _illumination_moments(key: jax.Array, light_strength: float) -> tuple:
    light = random_illumination(key, (65536,), light_strength)
    return jnp.mean(light, 0), jnp.std(light, 0)


def random_code(model: FaceModel, key: jax.Array, batch_shape=(), *,
                shape_scale: float = 1.0, expression_scale: float = 0.7,
                max_yaw_degrees: float = 35.0, max_pitch_degrees: float = 15.0,
                max_roll_degrees: float = 10.0, distance_mm: float = DEFAULT_DISTANCE_MM,
                shift_mm: float = 8.0, light_strength: float = 0.8) -> FaceCode:
    """Random faces from the prior under random pose and random, mostly frontal light."""
    return _random_code(model, key, tuple(batch_shape), shape_scale, expression_scale,
                        max_yaw_degrees, max_pitch_degrees, max_roll_degrees, distance_mm,
                        shift_mm, light_strength)


# One program per model and setting: called eagerly, the draw would compile each of its
# dozens of small operations on its own.
@functools.partial(jax.jit, static_argnums=tuple(range(2, 11)))
def _random_code(model, key, batch_shape, shape_scale, expression_scale, max_yaw_degrees,
                 max_pitch_degrees, max_roll_degrees, distance_mm, shift_mm, light_strength):
    keys = jax.random.split(key, 7)
    normal = lambda k, n, s=1.0: s * jax.random.normal(k, batch_shape + (n,))  # noqa: E731
    limits = jnp.radians(jnp.array([max_pitch_degrees, max_yaw_degrees, max_roll_degrees]))
    rotation = jax.random.uniform(keys[0], batch_shape + (3,), minval=-1.0, maxval=1.0) * limits
    translation = normal(keys[1], 3, shift_mm).at[..., 2].add(-distance_mm)
    illumination = _illumination_from_keys(keys[2:6], batch_shape, light_strength)
    ids = jax.random.split(keys[6], 3)
    if model.blendshapes:  # sparse weights: each blendshape active with probability 0.1
        low, high = model.expression_bounds
        shape = batch_shape + (model.num_expression,)
        active = jax.random.bernoulli(jax.random.fold_in(ids[1], 1), 0.1, shape)
        level = jax.random.uniform(ids[1], shape, maxval=min(expression_scale, 1.0))
        expression = low + (high - low) * jnp.where(active, level, 0.0)
    else:
        expression = normal(ids[1], model.num_expression, expression_scale)
    return FaceCode(
        rotation=rotation,
        translation=translation,
        identity=normal(ids[0], model.num_identity, shape_scale),
        expression=expression,
        reflectance=normal(ids[2], model.num_albedo, shape_scale),
        illumination=illumination,
    )
