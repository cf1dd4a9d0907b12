"""FineNet's losses (supervised depth and normals; shape from shading) and its train step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mofa import losses, trainer
from mofa.render import Camera
from mofa.detail.geometry import image_laplacian, normals_from_depth, shading_ratio
from mofa.detail.synthetic import shade, skin_weight
from mofa.detail.model import apply_fine


@dataclasses.dataclass(frozen=True)
class DetailWeights:
    """Static loss weights of both phases (unused terms have weight 0)."""

    depth: float = 1.0  # supervised: masked (Charbonnier) L1, mm
    normal: float = 100.0  # supervised: 1 - cos of the normal angle
    photometric: float = 0.0  # SfS: robust l2,1 of the re-shaded image
    fidelity: float = 0.0  # SfS: squared residual to the coarse depth, mm^2
    smoothness: float = 0.0  # SfS: squared Laplacian of the residual, mm^2
    # SfS: robust l2,1 of the high-frequency shading (`shading_ratio`) on the skin
    # (`skin_weight`): blind to smooth albedo and light errors, for photos.
    shading_detail: float = 0.0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "DetailWeights":
        return losses.weights_from_config(cls, config)


_CHARBONNIER = 0.05  # mm


def masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def normal_angle_cost(predicted: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean of 1 - cos(angle) between unit normal maps (smooth at 0, unlike acos)."""
    return masked_mean(1.0 - jnp.sum(predicted * target, -1), mask)


def detail_losses(params, apply_fn, batch: dict, camera: Camera, weights: DetailWeights):
    """(total, terms) of FineNet on a batch; supervised terms need batch['depth']."""
    mask = batch["mask"]
    refined = apply_fine(apply_fn, params, batch["image"], batch["coarse_depth"], mask, camera)
    normals = normals_from_depth(refined, camera, mask)
    residual = (refined - batch["coarse_depth"]) * mask
    terms = {}
    if weights.depth or weights.normal:
        # An estimated coarse face covers other pixels than the true one ("depth_mask": both).
        known = batch.get("depth_mask", mask)
        target_normals = normals_from_depth(batch["depth"], camera, known)
        # Charbonnier L1: most pixels carry no detail, and plain L1's kink exactly at
        # FineNet's zero-residual start makes every first step uphill.
        error = refined - batch["depth"]
        terms["depth"] = masked_mean(jnp.sqrt(error**2 + _CHARBONNIER**2) - _CHARBONNIER,
                                      known)
        predicted = normals if known is mask else normals_from_depth(refined, camera, known)
        terms["normal"] = normal_angle_cost(predicted, target_normals, known)
    if weights.photometric or weights.fidelity or weights.smoothness or weights.shading_detail:
        shaded = shade(batch["albedo"], normals, batch["illumination"])
        terms["photometric"] = losses.photometric_dense(shaded, batch["image"], mask)
        skin = skin_weight(batch["landmarks"], mask)
        terms["shading_detail"] = losses.photometric_dense(
            shading_ratio(shaded, skin), shading_ratio(batch["image"], skin), skin)
        terms["fidelity"] = masked_mean(residual ** 2, mask)
        terms["smoothness"] = masked_mean(image_laplacian(residual) ** 2, mask)
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, terms


def train_step(state: trainer.TrainState, batch: dict, camera: Camera, weights: DetailWeights):
    """One optimizer step of FineNet; pure."""
    (total, terms), grads = jax.value_and_grad(detail_losses, has_aux=True)(
        state.params, state.apply_fn, batch, camera, weights)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": total, "grad_norm": optax.tree.norm(grads),
                   **{f"loss/{k}": v for k, v in terms.items()}}
