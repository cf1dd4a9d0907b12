"""Training losses of the model-based face autoencoder.

All take batched arrays and return a scalar averaged over the batch:
  * `photometric_dense`: robust l2,1 (per-pixel colour distance, averaged over
    the rendered face region, optionally weighted by a skin mask);
  * `photometric_vertex`: MoFA's vertex-sampled term: the input image sampled
    bilinearly at each visible projected vertex against that vertex's shaded
    colour (gradients reach positions through the image gradient);
  * `landmark_alignment`: squared 2D distance of the 68 projected landmark
    vertices to detected ones, in units of the image size;
  * `statistical_prior`: squared norms of the standardized codes, per field;
  * `model_space`: InverseFaceNet's loss for supervised synthetic data — the
    distance of decoded geometry (mm) and albedo, not of raw parameters, split
    so no field dominates: pose-normalised shape, the vertex motion a rotation
    error causes, the image-plane offset and apparent size a translation error
    causes, albedo and light;
  * `parameter_space`: the plain parameter loss it is compared against.

`LossWeights` holds their weights and `objective` their weighted sum on a batch
(what training minimizes; `mofa.fitting` has its own weighting of the same terms).

`NoiseModel` derives the default weights of the self-supervised objective (in
training and in fitting) from the noise each term's observations carry; see
its docstring for the derivation.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from mofa import corrective, facemodel, images
from mofa.code import FaceCode, illumination_statistics
from mofa.render import camera as camera_lib

if TYPE_CHECKING:  # the objective only calls the decoder it is given
    import ml_collections

    from mofa.decoder import Decoder

_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """The observation noise the self-supervised objective's weights are derived from.

    The objective is read as a negative log posterior, written as 2 x NLL so that
    the standardized N(0, I) prior is exactly `|code|^2` (`statistical_prior`):
      * landmarks: 68 points with isotropic Gaussian detector noise of
        `landmark_sigma` x image size per coordinate; `landmark_alignment` is the
        mean squared distance in image sizes (L), so 2 NLL = 68 L / landmark_sigma^2;
      * photometric: the l2,1 colour distance (P, the mean over the face-region
        pixels) is a Laplace-like likelihood of scale `photometric_scale` (linear
        RGB; image noise plus what the model cannot explain: hair strands, pores,
        specularities) over `independent_patches` independent observations (the
        residual is spatially correlated, so the face counts as that many
        patches, whatever the resolution), so 2 NLL = 2 N P / b.
    With the photometric weight fixed (MoFA's 1.92, which sets the overall scale
    that the learning rate and gradient clipping were tuned for), the prior weight
    is w_photo b / (2 N) and the landmark weight w_prior 68 / sigma^2.

    Defaults: b = 0.05 (the residual a good fit leaves on photos is 0.05-0.1);
    N = 90 (a correlation length of 1/16 of the crop over a face region covering
    ~35% of it); sigma = 0.015 (a 68-point detector's typical error, NME ~0.05 of
    the inter-ocular distance, which is ~0.3 of the crop width).
    On rendered faces with pose, albedo and light at the truth, this makes the
    objective lowest at the ground-truth code (`tests/test_losses.py`).
    """

    photometric_scale: float = 0.05
    independent_patches: float = 90.0
    landmark_sigma: float = 0.015

    def prior_weight(self, photometric_weight: float) -> float:
        return photometric_weight * self.photometric_scale / (2.0 * self.independent_patches)

    def landmark_weight(self, photometric_weight: float) -> float:
        return self.prior_weight(photometric_weight) * 68.0 / self.landmark_sigma**2


PHOTOMETRIC_WEIGHT = 1.92  # MoFA's; the overall scale
PRIOR_WEIGHT = NoiseModel().prior_weight(PHOTOMETRIC_WEIGHT)  # 5.3e-4
LANDMARK_WEIGHT = NoiseModel().landmark_weight(PHOTOMETRIC_WEIGHT)  # 161


def _robust_norm(x: jax.Array) -> jax.Array:
    """|x|_2 over the last axis (of 3: colours) with a finite gradient at 0."""
    return jnp.sqrt(facemodel.dot_last(x, x) + _EPS)


def _per_example_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """(B,) weighted means over all but the batch axis."""
    axes = tuple(range(1, values.ndim))
    return jnp.sum(values * weights, axis=axes) / jnp.maximum(jnp.sum(weights, axis=axes), 1.0)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Per-example weighted mean over all but the batch axis, then the batch mean."""
    return jnp.mean(_per_example_mean(values, weights))


def photometric_per_face(rendered: jax.Array, target: jax.Array, mask: jax.Array,
                         skin_mask: jax.Array | None = None) -> jax.Array:
    """(B,) robust l2,1 distance of images (B, H, W, 3) over the rendered region `mask`
    (B, H, W), times `skin_mask` where given."""
    if rendered.shape != target.shape:
        raise ValueError(f"rendered image {tuple(rendered.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    weights = mask if skin_mask is None else mask * skin_mask
    return _per_example_mean(_robust_norm(rendered - target), weights)


def photometric_dense(rendered: jax.Array, target: jax.Array, mask: jax.Array,
                      skin_mask: jax.Array | None = None) -> jax.Array:
    """Batch mean of `photometric_per_face`."""
    return jnp.mean(photometric_per_face(rendered, target, mask, skin_mask))


def bilinear_sample(image: jax.Array, points: jax.Array) -> jax.Array:
    """Samples (B, H, W, C) at pixel positions (B, N, 2) (pixel centres at +0.5), clamped."""
    return jax.vmap(images.bilinear_sample)(image, points)


def photometric_vertex(target: jax.Array, screen_vertices: jax.Array, vertex_colors: jax.Array,
                       visibility: jax.Array, vertex_weight: jax.Array | None = None
                       ) -> jax.Array:
    """MoFA's vertex-sampled photometric l2,1 over visible vertices (B, V)."""
    sampled = bilinear_sample(target, screen_vertices[..., :2])
    weights = visibility.astype(target.dtype)
    if vertex_weight is not None:
        weights = weights * vertex_weight
    return _weighted_mean(_robust_norm(sampled - vertex_colors), weights)


def landmark_alignment(predicted: jax.Array, target: jax.Array, weight: jax.Array,
                       image_size: float) -> jax.Array:
    """Mean squared landmark distance (B, L, 2) in units of the image size."""
    squared = jnp.sum((predicted - target) ** 2, axis=-1) / (image_size**2)
    return _weighted_mean(squared, weight)


# Blendshape weights (in [0, 1], mostly near 0 on any one face) get an exponential
# prior of this mean weight: sparse and non-negative, where N(0, 1) would favour many
# small negative-and-positive activations.
BLENDSHAPE_PRIOR_MEAN = 0.1


def statistical_prior(code: FaceCode, expression_bounds: tuple = ()) -> dict:
    """2 x the negative log prior of the codes, batch means, by field.

    Standardized (N(0, I)) codes: their squared norms. Blendshape expressions
    (`expression_bounds` = (low, high), see `FaceModel.expression_bounds`): the
    exponential prior 2 sum(w) / BLENDSHAPE_PRIOR_MEAN on the weights w = (code - low)
    / (high - low), which keeps a fit sparse (its gradient does not vanish at 0).
    Illumination: each SH coefficient standardized by the synthetic faces' light
    (`code.illumination_statistics`). Without it nothing splits the image's brightness
    between skin and light (albedo x irradiance is what the pixels show), and the
    reflectance prior alone puts every face at the mean skin tone with the light
    absorbing the rest (README, "A calibrated objective").
    """
    prior = {f"prior_{field}": jnp.mean(jnp.sum(getattr(code, field) ** 2, -1))
             for field in ("identity", "expression", "reflectance")}
    if expression_bounds:
        low, high = expression_bounds
        weights = (code.expression - low) / (high - low)
        prior["prior_expression"] = jnp.mean(2.0 * jnp.sum(weights, -1) / BLENDSHAPE_PRIOR_MEAN)
    mean, std = illumination_statistics()
    prior["prior_illumination"] = jnp.mean(
        jnp.sum(((code.illumination - mean) / std) ** 2, (-2, -1)))
    return prior


def _region_mean(values: jax.Array, region: jax.Array) -> jax.Array:
    """Mean over the vertices (..., V) weighted by the face region (V,)."""
    return jnp.sum(values * region, -1) / jnp.maximum(jnp.sum(region), 1e-6)


def model_space(model: facemodel.FaceModel, predicted: FaceCode, target: FaceCode,
                shape: float = 1.0, rotation: float = 1.0, translation: float = 1.0,
                albedo: float = 100.0, illumination: float = 1.0) -> dict:
    """InverseFaceNet model-space loss: decoded-space distances, not parameter distances.

    Every geometric term is a mean squared distance over the face region in cm^2
    (mm^2 / 100) of the displacement that field's error causes, so no field
    dominates the gradient and none is counted twice:
      shape: pose-normalised (model-space) vertices of identity + expression;
      rotation: the motion of the true face's (centred) vertices under the
        rotation error;
      translation: the image-plane offset (x/z, y/z) times the true distance, and
        the apparent-size change (log distance ratio) times the face's RMS radius
        (size and distance are confounded; only their ratio is seen);
    albedo: mean squared per-vertex albedo difference over the face region;
    illumination: squared SH difference. Returns the weighted terms and "total".
    """
    region = model.face_mask
    true_shape = facemodel.shape(model, target.identity, target.expression)
    pred_shape = facemodel.shape(model, predicted.identity, predicted.expression)
    geo = _region_mean(jnp.sum((pred_shape - true_shape) ** 2, -1), region)
    centre = jnp.sum(true_shape * region[:, None], -2, keepdims=True) / jnp.maximum(
        jnp.sum(region), 1e-6)
    centred = true_shape - centre
    delta_r = camera_lib.euler_to_matrix(predicted.rotation) - camera_lib.euler_to_matrix(
        target.rotation)
    rot = _region_mean(jnp.sum(jnp.einsum("...ij,...vj->...vi", delta_r, centred) ** 2, -1),
                       region)
    radius_sq = _region_mean(jnp.sum(centred**2, -1), region)
    depth_p, depth_t = -predicted.translation[..., 2], -target.translation[..., 2]
    safe = lambda d: jnp.maximum(d, 1.0)  # noqa: E731 (mm; faces are far in front)
    lateral = (predicted.translation[..., :2] / safe(depth_p)[..., None]
               - target.translation[..., :2] / safe(depth_t)[..., None]) * depth_t[..., None]
    size = jnp.log(safe(depth_p) / safe(depth_t))
    trans = jnp.sum(lateral**2, -1) + radius_sq * size**2
    alb = _region_mean(jnp.mean((facemodel.albedo(model, predicted.reflectance)
                                 - facemodel.albedo(model, target.reflectance)) ** 2, -1),
                       region)
    light = jnp.sum((predicted.illumination - target.illumination) ** 2, (-2, -1))
    terms = {"shape": shape * geo / 100.0, "rotation": rotation * rot / 100.0,
             "translation": translation * trans / 100.0, "albedo": albedo * alb,
             "illumination": illumination * light}
    terms = {k: jnp.mean(v) for k, v in terms.items()}
    terms["total"] = sum(terms.values())
    return terms


def parameter_space(predicted: FaceCode, target: FaceCode) -> jax.Array:
    """Plain squared distance of raw code parameters (rotation in rad, translation in cm)."""
    scaled = lambda c: c.replace(translation=c.translation / 10.0)  # noqa: E731
    diff = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2, axis=tuple(range(1, a.ndim))),
                        scaled(predicted), scaled(target))
    return jnp.mean(sum(jax.tree.leaves(diff)))


# --- the objective ---------------------------------------------------------

def weights_from_config(cls, config: ml_collections.ConfigDict):
    """A frozen weights dataclass from `config.loss`, refusing unknown names."""
    unknown = set(config.keys()) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"config.loss has unknown weights {sorted(unknown)}")
    return cls(**{k: float(v) for k, v in config.items()})


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Static loss weights (hashable, closed over by the jitted step)."""

    # Derived from the observation noise: `NoiseModel`.
    photometric: float = PHOTOMETRIC_WEIGHT
    vertex_photometric: float = 0.0
    landmark: float = LANDMARK_WEIGHT
    # The encoder's own 2D landmarks (`networks.FaceEncoder.num_landmarks`): the same
    # detector noise as the rendered landmarks'.
    landmark_head: float = LANDMARK_WEIGHT
    prior_identity: float = PRIOR_WEIGHT
    prior_expression: float = PRIOR_WEIGHT
    prior_reflectance: float = PRIOR_WEIGHT
    prior_illumination: float = PRIOR_WEIGHT
    model_space: float = 0.0
    parameter: float = 0.0
    corrective_shape_smoothness: float = 0.0
    corrective_albedo_smoothness: float = 0.0
    corrective_shape_magnitude: float = 0.0
    corrective_albedo_magnitude: float = 0.0
    corrective_shape_symmetry: float = 0.0
    corrective_albedo_symmetry: float = 0.0
    identity_consistency: float = 0.0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "LossWeights":
        return weights_from_config(cls, config)


def objective(code: FaceCode, batch: dict, decoder: Decoder, weights: LossWeights,
              space: dict | None = None, coefficients: dict | None = None,
              encoder_landmarks: jax.Array | None = None) -> tuple:
    """The training objective of codes (and corrective coefficients) on a batch.

    encoder_landmarks: (B, 68, 2) pixels, the encoder's own landmark estimates
    (`networks.FaceEncoder.num_landmarks`), scored like the rendered ones.

    Returns (total, terms, diagnostics, render output); `terms` are named like
    their `LossWeights`, `diagnostics` (the model-space parts) are not summed.
    """
    model = decoder.face_model
    out = decoder.render(code, space, coefficients, background=batch["image"])
    size = float(decoder.camera.width)
    points, point_weight = decoder.scored_landmarks(code, out, batch["landmarks"],
                                                    batch["landmark_weight"])
    terms = {
        # Only the face region's skin: hair, ears, neck and background are not modelled.
        "photometric": photometric_dense(out.image, batch["image"], out.mask, out.region),
        "vertex_photometric": photometric_vertex(
            batch["image"], out.screen_vertices, out.vertex_colors, out.vertex_visibility,
            model.face_mask[None]),
        "landmark": landmark_alignment(points, batch["landmarks"], point_weight, size),
        **statistical_prior(code, model.expression_bounds),
    }
    if encoder_landmarks is not None:
        terms["landmark_head"] = landmark_alignment(encoder_landmarks, batch["landmarks"],
                                                    batch["landmark_weight"], size)
    diagnostics = {}
    if weights.model_space or weights.parameter:
        target = FaceCode.from_batch(batch)
        parts = model_space(model, code, target)
        terms["model_space"] = parts.pop("total")
        diagnostics = {f"model_space_{k}": v for k, v in parts.items()}
        terms["parameter"] = parameter_space(code, target)
    if space is not None:
        terms.update(corrective.regularizers(space, coefficients, decoder.mesh))
    if weights.identity_consistency and "person_id" in batch:
        identity = code.identity if space is None else jnp.concatenate(
            [code.identity, coefficients["shape"]], -1)
        terms["identity_consistency"] = corrective.identity_consistency(
            identity, batch["person_id"])
    # Terms of weight zero are reported, not differentiated: a zero-weighted term still
    # costs its whole backward pass (0 * x is not simplified away for floats).
    total = sum((getattr(weights, name) * value for name, value in terms.items()
                 if getattr(weights, name)), jnp.zeros((), jnp.float32))
    terms = {name: value if getattr(weights, name) else jax.lax.stop_gradient(value)
             for name, value in terms.items()}
    return total, terms, diagnostics, out
