"""Flax (Linen) encoders and the head that maps image features to a `FaceCode`.

Linen is used throughout (train state, checkpoints, batch statistics). Under
`jax.jit` with a data-parallel `NamedSharding` the batch axis is global, so
BatchNorm's batch statistics are computed over the whole global batch across
devices, which is what synchronized BatchNorm gives under pmap.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mofa.code import DEFAULT_DISTANCE_MM, FaceCode
from mofa.corrective import CorrectiveSpace
from mofa.facemodel import FaceModel
from mofa.render import sh

ModuleDef = Any


def stem_stride_for(image_size: int) -> int:
    """MoFA's stride-4 stem at its 240 px leaves a 60 px map; at 64 px stride 4 leaves
    16 px, where a 1-2 px mouth or landmark offset is gone before the second layer.
    Keep the stem's map at least 24 px: 64 px inputs -> 2 (quickstart landmark NME
    after 1,400 steps 0.087 -> 0.063, pose error 8.8 -> 4.8 degrees, for 1.4x the
    step time), 96 px and up -> 4."""
    return max(1, min(4, image_size // 24))


class AlexNetEncoder(nn.Module):
    """The AlexNet-style encoder of MoFA (five conv layers, two fully connected)."""

    width: int = 64
    hidden: int = 1024
    dtype: Any = jnp.float32
    stem_stride: int = 0  # 0: from the input size (`stem_stride_for`)

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 dtype=self.dtype)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        w = self.width
        stride = self.stem_stride or stem_stride_for(x.shape[1])
        x = nn.relu(norm()(conv(w, (11, 11), strides=stride, padding=5)(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = nn.relu(norm()(conv(3 * w, (5, 5), padding=2)(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = nn.relu(norm()(conv(6 * w, (3, 3), padding=1)(x)))
        x = nn.relu(norm()(conv(4 * w, (3, 3), padding=1)(x)))
        x = nn.relu(norm()(conv(4 * w, (3, 3), padding=1)(x)))
        spatial = x
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
        return nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x)), spatial


class ResNetBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters, (3, 3))(y))
        if residual.shape != y.shape:
            residual = self.norm()(self.conv(self.filters, (1, 1), self.strides)(residual))
        return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
        y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(4 * self.filters, (1, 1))(y))
        if residual.shape != y.shape:
            residual = self.norm()(self.conv(4 * self.filters, (1, 1), self.strides)(residual))
        return nn.relu(residual + y)


class ResNetEncoder(nn.Module):
    stage_sizes: Sequence[int]
    block: ModuleDef
    width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype)
        x = nn.relu(norm()(conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)])(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block(self.width * 2**i, conv=conv, norm=norm, strides=strides)(x)
        return jnp.mean(x, axis=(1, 2)), x


# Backbones return (pooled features, their last spatial feature map).
# `hidden` is AlexNet's fully connected width (the ResNets pool instead).
ENCODERS = {
    "alexnet": lambda dtype, width, hidden: AlexNetEncoder(width=width, hidden=hidden,
                                                           dtype=dtype),
    "resnet18": lambda dtype, width, hidden: ResNetEncoder((2, 2, 2, 2), ResNetBlock, width,
                                                           dtype),
    "resnet50": lambda dtype, width, hidden: ResNetEncoder((3, 4, 6, 3), BottleneckBlock,
                                                           width, dtype),
}


# Output scaling: one unit of the raw head output moves each field by this much, about
# the field's spread in training crops, so no field's outputs (and their gradients into
# the shared backbone) are orders of magnitude larger than the others'.
ROTATION_SCALE = 0.5  # radians
TRANSLATION_SCALE = (10.0, 10.0, 50.0)  # mm: crop centring jitter, distance spread
CODE_SCALE = 1.0  # standardized identity / expression / reflectance
LIGHT_SCALE = 1.0  # SH radiance coefficients


def code_size(model: FaceModel) -> int:
    return 6 + model.num_identity + model.num_expression + model.num_albedo + sh.NUM_SH * 3


# Blendshape weights from the head: low + (high - low) sigmoid(raw + offset); the offset
# makes zero outputs a near-neutral face (weights 0.05), like the PCA spaces' zero code.
BLENDSHAPE_OFFSET = -3.0


def _expression(raw: jax.Array, model: FaceModel) -> jax.Array:
    if not model.blendshapes:
        return CODE_SCALE * raw
    low, high = model.expression_bounds
    return low + (high - low) * jax.nn.sigmoid(raw + BLENDSHAPE_OFFSET)


def decode_head(raw: jax.Array, model: FaceModel,
                distance_mm: float = DEFAULT_DISTANCE_MM) -> FaceCode:
    """Raw head outputs (B, code_size) -> FaceCode; zeros give the neutral code."""
    if raw.shape[-1] != code_size(model):
        raise ValueError(f"head output has {raw.shape[-1]} values, expected {code_size(model)}")
    sizes = [3, 3, model.num_identity, model.num_expression, model.num_albedo, sh.NUM_SH * 3]
    parts = jnp.split(raw, np.cumsum(sizes)[:-1].tolist(), axis=-1)
    neutral = FaceCode.neutral(model, raw.shape[:-1], distance_mm)
    return FaceCode(
        rotation=ROTATION_SCALE * parts[0],
        translation=neutral.translation + jnp.asarray(TRANSLATION_SCALE) * parts[1],
        identity=CODE_SCALE * parts[2],
        expression=_expression(parts[3], model),
        reflectance=CODE_SCALE * parts[4],
        illumination=neutral.illumination
        + LIGHT_SCALE * parts[5].reshape(raw.shape[:-1] + (sh.NUM_SH, 3)),
    )


def decode_outputs(raw: jax.Array, model: FaceModel, space: dict | None = None,
                   distance_mm: float = DEFAULT_DISTANCE_MM) -> tuple:
    """Raw encoder outputs -> (FaceCode, corrective coefficients or None).

    space: the corrective bases (`params["corrective"]`) when the encoder has the
    corrective level; their sizes say how many trailing outputs are coefficients.
    """
    if space is None:
        return decode_head(raw, model, distance_mm), None
    sizes = [code_size(model), space["shape"].shape[0], space["albedo"].shape[0]]
    if raw.shape[-1] != sum(sizes):
        raise ValueError(f"head output has {raw.shape[-1]} values, expected {sum(sizes)} "
                         f"(code {sizes[0]} + corrective {sizes[1]} + {sizes[2]})")
    code_raw, shape, albedo = jnp.split(raw, np.cumsum(sizes)[:-1].tolist(), axis=-1)
    return decode_head(code_raw, model, distance_mm), {"shape": shape, "albedo": albedo}


def soft_argmax(heatmaps: jax.Array, image_size: float) -> jax.Array:
    """Expected positions (B, K, 2) in pixels of K heatmaps (B, h, w, K) over an image of
    `image_size` pixels: the softmax-weighted mean of the cell centres (integral
    regression, Sun et al. 2018), continuous below the cell size."""
    b, h, w, k = heatmaps.shape
    prob = jax.nn.softmax(heatmaps.astype(jnp.float32).reshape(b, h * w, k), axis=1)
    ys, xs = jnp.meshgrid((jnp.arange(h) + 0.5) * image_size / h,
                          (jnp.arange(w) + 0.5) * image_size / w, indexing="ij")
    centres = jnp.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # (h w, 2) as (x, y)
    return jnp.einsum("bnk,nc->bkc", prob, centres)


LAYOUT_WIDTH = 256


class FaceEncoder(nn.Module):
    """Backbone + linear head emitting raw code values (decode with `decode_outputs`).

    The head starts at zero so the first reconstructions are exactly the mean
    face, frontal, at the default distance, under ambient light; the backbone
    receives gradients from the second step on, once the head has moved.
    With `num_landmarks` > 0 a 1x1 convolution of the backbone's last feature map
    gives one heatmap per landmark, whose soft-argmax (integral regression) is a
    2D landmark position, sown as intermediates["landmarks"] (B, K, 2) pixels for
    its own loss; an MLP of these positions joins the pooled features before the
    head. A fully connected head localizes slowly: precise geometry (pose, then
    identity and expression from the landmark layout) comes sooner from heatmaps.
    With `corrective_dims` = (shape, albedo) > 0 it also emits corrective
    coefficients and holds the (zero-initialized) corrective bases of
    `num_vertices` vertices in params["corrective"] (see `mofa.corrective`).
    """

    backbone: str = "alexnet"
    output_size: int = 0
    width: int = 64
    hidden: int = 1024  # AlexNet's fully connected layers
    dtype: Any = jnp.float32
    corrective_dims: tuple = (0, 0)
    num_vertices: int = 0
    # > 0: also locate this many 2D landmarks by integral regression on the backbone's
    # last feature map; their positions feed the head (see the class docstring).
    num_landmarks: int = 0
    # Append each image's per-channel mean and log standard deviation to the pooled
    # features: the standardization below hides exposure, which the light must explain.
    exposure_inputs: bool = False

    @nn.compact
    def __call__(self, images, train: bool = True):
        if self.backbone not in ENCODERS:
            raise ValueError(f"unknown encoder {self.backbone!r}: expected one of {sorted(ENCODERS)}")
        # Per-image standardization keeps the backbone indifferent to exposure (with
        # `exposure_inputs` the head gets it back).
        x = images.astype(self.dtype)
        x = (x - jnp.mean(x, axis=(1, 2, 3), keepdims=True)) * jax.lax.rsqrt(
            jnp.var(x, axis=(1, 2, 3), keepdims=True) + 1e-4)
        features, spatial = ENCODERS[self.backbone](self.dtype, self.width, self.hidden)(
            x, train=train)
        features = features.astype(jnp.float32)
        if self.exposure_inputs:
            pixels = images.astype(jnp.float32)
            exposure = jnp.concatenate(
                [jnp.mean(pixels, axis=(1, 2)),
                 0.5 * jnp.log(jnp.var(pixels, axis=(1, 2)) + 1e-4)], -1)
            features = jnp.concatenate([features, exposure], -1)
        if self.num_landmarks:
            heatmaps = nn.Conv(self.num_landmarks, (1, 1), dtype=jnp.float32,
                               name="landmark_heatmaps")(spatial)
            points = soft_argmax(heatmaps, images.shape[1])
            self.sow("intermediates", "landmarks", points)
            layout = (points / images.shape[1] - 0.5).reshape(points.shape[0], -1)
            for i in range(2):
                layout = nn.relu(nn.Dense(LAYOUT_WIDTH, name=f"layout_{i}")(layout))
            features = jnp.concatenate([features, layout], -1)
        raw = nn.Dense(self.output_size, kernel_init=nn.initializers.zeros_init(),
                       dtype=jnp.float32, name="head")(features)
        if any(self.corrective_dims):
            CorrectiveSpace(*self.corrective_dims, self.num_vertices, name="corrective")()
            # Small, not zero: zero coefficients and zero bases would be a saddle.
            corrective = nn.Dense(sum(self.corrective_dims), dtype=jnp.float32,
                                  kernel_init=nn.initializers.normal(1e-2),
                                  name="corrective_head")(features)
            raw = jnp.concatenate([raw, corrective], axis=-1)
        return raw.astype(jnp.float32)
