"""Similarity alignment and closest points on meshes (`mofa.geometry`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from mofa import geometry

from conftest import random_rotation


def test_similarity_transform_recovers_a_known_similarity_in_numpy_and_jax():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(50, 3)) * 40.0
    rotation, scale, translation = random_rotation(rng), 1.7, np.array([10.0, -25.0, 300.0])
    target = scale * source @ rotation.T + translation
    # numpy: float64, exact.
    s, r, t = geometry.similarity_transform(source, target)
    assert float(s) == pytest.approx(scale, rel=1e-12)
    np.testing.assert_allclose(r, rotation, atol=1e-12)
    np.testing.assert_allclose(t, translation, atol=1e-9)
    np.testing.assert_allclose(geometry.apply_similarity(source, s, r, t), target, atol=1e-9)
    # JAX (float32), traced under jit, with a batch dimension and weights.
    align = jax.jit(geometry.similarity_align)
    batch = jnp.stack([jnp.asarray(source, jnp.float32)] * 2)
    aligned = align(batch, jnp.stack([jnp.asarray(target, jnp.float32)] * 2),
                    jnp.ones((2, 50)))
    np.testing.assert_allclose(aligned, np.stack([target] * 2), atol=2e-2)
    s, r, _ = geometry.similarity_transform(jnp.asarray(source, jnp.float32),
                                            jnp.asarray(target, jnp.float32))
    assert float(s) == pytest.approx(scale, rel=1e-4)
    np.testing.assert_allclose(r, rotation, atol=1e-4)
    # Rigid only, and never a reflection.
    _, rigid_r, _ = geometry.similarity_transform(source, target, with_scale=False)
    np.testing.assert_allclose(rigid_r, rotation, atol=1e-9)
    _, mirror_r, _ = geometry.similarity_transform(source, source * [-1.0, 1.0, 1.0])
    assert np.linalg.det(mirror_r) == pytest.approx(1.0)


def test_closest_points_are_exact_on_a_triangle():
    verts = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0]])
    tri = np.array([[0, 1, 2]])
    pts = np.array([[2.0, 3, 5], [-4, -4, 1], [20, 1, 0], [6, 6, -3], [-3, 4, 0]])
    closest = geometry.closest_points_on_mesh(pts, verts, tri)
    np.testing.assert_allclose(closest.barycentric @ verts, closest.point, atol=1e-12)
    np.testing.assert_allclose(closest.point,
                               [[2, 3, 0], [0, 0, 0], [10, 0, 0], [5, 5, 0], [0, 4, 0]],
                               atol=1e-12)
    np.testing.assert_allclose(closest.distance, np.linalg.norm(pts - closest.point, axis=1))
    bary = closest.barycentric
    assert np.all(bary >= -1e-12) and np.allclose(bary.sum(1), 1)
    assert np.all(closest.triangle == 0)


def test_closest_points_on_mesh_match_brute_force():
    sphere = trimesh.creation.icosphere(2, radius=50.0)
    rng = np.random.default_rng(1)
    points = rng.normal(size=(300, 3)) * 40.0
    closest = geometry.closest_points_on_mesh(points, sphere.vertices, sphere.faces)
    corners = sphere.vertices[sphere.faces]
    bary = geometry.closest_on_triangles(points[:, None], corners[None, :, 0],
                                         corners[None, :, 1], corners[None, :, 2])
    brute = np.einsum("ntc,tcd->ntd", bary, corners)
    np.testing.assert_allclose(closest.distance,
                               np.linalg.norm(brute - points[:, None], axis=-1).min(1),
                               atol=1e-9)
    np.testing.assert_allclose(
        closest.point, np.einsum("nc,ncd->nd", closest.barycentric, corners[closest.triangle]))
