"""Encoders: the head's neutral start, the landmark heatmaps' soft-argmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mofa import networks
from mofa.code import FaceCode


@pytest.mark.parametrize("backbone", ["resnet18", "alexnet"])
def test_encoder_head_starts_at_the_neutral_code(builtin_model, backbone):
    """With and without the landmark heatmaps and exposure inputs: zero head, neutral code."""
    model = builtin_model
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    for extras in ({}, {"num_landmarks": 68, "exposure_inputs": True}):
        encoder = networks.FaceEncoder(backbone=backbone, output_size=networks.code_size(model),
                                       width=8, **extras)
        variables = encoder.init(jax.random.key(1), images, train=False)
        raw, sown = encoder.apply(variables, images, train=False, mutable=["intermediates"])
        code = networks.decode_head(raw, model)
        neutral = FaceCode.neutral(model, (2,))
        for a, b in zip(jax.tree.leaves(code), jax.tree.leaves(neutral)):
            np.testing.assert_allclose(a, b, atol=0.05)
        if extras:
            (points,) = sown["intermediates"]["landmarks"]
            assert points.shape == (2, 68, 2)
            assert np.all((points > 0) & (points < 32))
        else:
            assert "intermediates" not in sown or not sown["intermediates"]
    with pytest.raises(ValueError, match="head output"):
        networks.decode_head(jnp.zeros((2, 5)), model)


def test_soft_argmax_finds_the_peak_cell_centre_and_interpolates():
    size, h, w = 64.0, 8, 4
    peaks = [(0, 0), (7, 3), (2, 1)]  # (row, column)
    logits = np.full((1, h, w, len(peaks)), -50.0, np.float32)
    for k, (r, c) in enumerate(peaks):
        logits[0, r, c, k] = 50.0
    points = np.asarray(networks.soft_argmax(jnp.asarray(logits), size))[0]
    for (r, c), (x, y) in zip(peaks, points):
        np.testing.assert_allclose([x, y], [(c + 0.5) * size / w, (r + 0.5) * size / h],
                                   atol=1e-3)
    # Equal mass on two neighbouring cells: their midpoint (below the cell size).
    two = np.full((1, h, w, 1), -50.0, np.float32)
    two[0, 3, 1, 0] = two[0, 3, 2, 0] = 10.0
    np.testing.assert_allclose(networks.soft_argmax(jnp.asarray(two), size)[0, 0],
                               [2 * size / w, 3.5 * size / h], atol=1e-3)
    # Uniform heatmaps point at the image centre; the map is differentiable (a central
    # difference over 1e-2 logits: at JAX's default 1e-4 float32 rounding of the pixel
    # outputs alone is ~1% of the derivative, and differs between CPU kinds).
    np.testing.assert_allclose(networks.soft_argmax(jnp.zeros((2, h, w, 5)), size),
                               size / 2, atol=1e-4)
    check_grads(lambda x: networks.soft_argmax(x, size),
                              (jax.random.normal(jax.random.key(0), (2, h, w, 3)),),
                              order=1, modes=["rev"], eps=1e-2, atol=1e-2, rtol=1e-2)
