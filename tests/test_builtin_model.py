"""The procedurally generated builtin face model: sizes, symmetry, anatomy, caching."""

import os

import numpy as np
import pytest

from mofa import facemodel
from mofa.facemodel import builtin


@pytest.fixture(scope="module")
def arrays(builtin_model):
    return {name: np.asarray(getattr(builtin_model, name), dtype=np.float64)
            for name in ("mean_shape", "identity_basis", "identity_std", "expression_basis",
                         "expression_std", "albedo_mean", "albedo_basis", "albedo_std",
                         "face_mask", "uv_coords")}


@pytest.fixture(scope="module")
def mirror(arrays):
    """Index of each vertex's mirror partner (x -> -x), found geometrically."""
    from scipy.spatial import cKDTree
    v = arrays["mean_shape"]
    dist, idx = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
    assert dist.max() < 0.1, "mean shape is not left/right symmetric"
    return idx


def test_sizes_and_metadata(builtin_model):
    m = builtin_model
    assert 5000 <= m.num_vertices < 20000
    assert m.num_identity >= 80
    assert m.num_expression >= 30
    assert m.num_albedo >= 50
    assert len(m.expression_names) == m.num_expression
    assert len(set(m.expression_names)) == m.num_expression
    for name in ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R",
                 "browInnerUp_L", "cheekPuff_R", "mouthPucker", "noseSneer_L"):
        assert name in m.expression_names
    assert (m.name, m.units) == ("builtin", "mm")
    assert "Apache-2.0" in m.license
    m.validate()


def test_std_decreasing_and_bases_unit_norm(arrays):
    for space in ("identity", "albedo"):
        std = arrays[f"{space}_std"]
        assert np.all(std > 0) and np.all(np.diff(std) < 0), space
    for space in ("identity", "expression", "albedo"):
        basis = arrays[f"{space}_basis"]
        norms = np.linalg.norm(basis.reshape(basis.shape[0], -1), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4, err_msg=space)


def test_identity_basis_orthonormal(arrays):
    flat = arrays["identity_basis"].reshape(arrays["identity_std"].size, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(flat.shape[0]), atol=1e-4)


def test_identity_magnitudes_plausible(arrays):
    fields = arrays["identity_basis"] * arrays["identity_std"][:, None, None]
    largest = np.linalg.norm(fields[0], axis=1).max()
    assert 3.0 < largest < 15.0  # mm at one std


def test_identity_covariance_is_mirror_invariant(arrays, mirror):
    """A symmetric kernel gives a covariance C with C(p, q) = M C(m(p), m(q)) M."""
    fields = arrays["identity_basis"] * arrays["identity_std"][:, None, None]
    mirrored = fields[:, mirror] * np.array([-1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    rows = rng.choice(fields.shape[1], 300, replace=False)
    a = fields[:, rows].reshape(fields.shape[0], -1)
    b = mirrored[:, rows].reshape(fields.shape[0], -1)
    cov, cov_mirrored = a.T @ a, b.T @ b
    assert np.abs(cov - cov_mirrored).max() < 1e-3 * np.abs(cov).max()


def test_expression_pairs_mirror_each_other(builtin_model, arrays, mirror):
    names = builtin_model.expression_names
    basis = arrays["expression_basis"]
    pairs = [(n, n[:-2] + "_R") for n in names if n.endswith("_L")]
    pairs += [("jawLeft", "jawRight"), ("mouthLeft", "mouthRight")]
    assert len(pairs) >= 15
    for left, right in pairs:
        a, b = basis[names.index(left)], basis[names.index(right)]
        np.testing.assert_allclose(a[mirror] * np.array([-1.0, 1.0, 1.0]), b, atol=1e-5,
                                   err_msg=left)


def test_expression_magnitudes(builtin_model, arrays):
    names = builtin_model.expression_names
    fields = arrays["expression_basis"] * arrays["expression_std"][:, None, None]
    jaw = fields[names.index("jawOpen")]
    chin = np.argmin(arrays["mean_shape"][:, 1] + 1e3 * np.abs(arrays["mean_shape"][:, 0]))
    assert 8.0 < np.linalg.norm(jaw[chin]) < 20.0 and jaw[chin, 1] < 0  # chin drops
    blink = fields[names.index("eyeBlink_L")]
    assert blink[:, 1].min() < -6.0  # the upper lid comes down over the eye
    moved = np.linalg.norm(blink, axis=1) > 0.1
    assert np.all(arrays["mean_shape"][moved, 0] > 0)  # left eye only


def test_nose_tip_normal_points_forward(builtin_model):
    normals = np.asarray(facemodel.vertex_normals(builtin_model.mean_shape,
                                                  builtin_model.triangles))
    tip = np.argmax(np.asarray(builtin_model.mean_shape)[:, 2])
    assert normals[tip, 2] > 0.9


def test_head_dimensions(arrays, builtin_model):
    v = arrays["mean_shape"]
    lm = v[np.asarray(builtin_model.landmark_indices)]
    assert 125 < v[:, 0].max() - v[:, 0].min() < 155  # width at the cheekbones
    pupils = lm[[37, 38, 40, 41]].mean(0), lm[[43, 44, 46, 47]].mean(0)
    assert 58 < pupils[1][0] - pupils[0][0] < 68
    brow_to_chin = lm[17:27, 1].mean() - lm[8, 1]
    assert 105 < brow_to_chin < 140
    beside_nose = (np.abs(np.abs(v[:, 0]) - 21) < 3) & (np.abs(v[:, 1] + 15) < 3)
    assert 20 < lm[30, 2] - np.median(v[beside_nose, 2]) < 35  # nose protrusion


def test_landmark_geometry(arrays, builtin_model):
    lm = arrays["mean_shape"][np.asarray(builtin_model.landmark_indices)]
    x, y = lm[:, 0], lm[:, 1]
    assert len(set(np.asarray(builtin_model.landmark_indices).tolist())) == 68
    # Subject's right (-x) is the image left: iBUG 0-16 run from -x to +x.
    assert x[0] < x[8] < x[16] and x[36] < x[39] < x[27] < x[42] < x[45]
    assert x[17] < x[21] < 0 < x[22] < x[26]
    assert x[48] < x[51] < x[54] and x[31] < x[33] < x[35]
    nose_x = x[27:31]
    assert np.all(x[36:42] < nose_x.min()) and np.all(x[42:48] > nose_x.max())
    assert np.all(y[48:68] < y[33]) and y[33] < y[30] < y[27]
    assert np.all(y[17:27] > y[36:48].max())
    assert y[8] == y.min()
    assert np.all(y[[4, 5, 6, 7, 9, 10, 11, 12]] < y[36:48].min())
    assert y[51] > y[62] > y[66] > y[57]
    assert lm[30, 2] == lm[:, 2].max()  # nose tip is the most forward landmark


def test_albedo_ranges(arrays):
    mean, basis, std = arrays["albedo_mean"], arrays["albedo_basis"], arrays["albedo_std"]
    assert mean.min() >= 0 and mean.max() <= 1
    for c in (-2.0, 2.0):
        tone = mean + c * std[0] * basis[0]
        assert np.mean((tone < 0) | (tone > 1)) < 0.01
    light = mean + 2.0 * std[0] * basis[0]
    dark = mean - 2.0 * std[0] * basis[0]
    skin = arrays["face_mask"] > 0.9
    brightness = lambda a: a[skin].mean()
    assert abs(brightness(light) - brightness(dark)) > 0.25  # very light to very dark
    rng = np.random.default_rng(0)
    samples = mean + np.einsum("nk,kvc->nvc", rng.standard_normal((4, std.size)) * std, basis)
    assert np.mean((samples < 0) | (samples > 1)) < 0.02


def test_face_mask_and_uvs(arrays, builtin_model):
    mask, uv = arrays["face_mask"], arrays["uv_coords"]
    assert mask.min() >= 0 and mask.max() <= 1
    assert np.mean(mask > 0.9) > 0.2 and np.mean(mask < 0.05) > 0.1
    tip = np.argmax(arrays["mean_shape"][:, 2])
    assert mask[tip] > 0.9
    assert mask[np.asarray(builtin_model.landmark_indices)[0]] < 0.5  # rim near the ear
    assert uv.min() >= 0 and uv.max() <= 1
    assert builtin_model.uv_triangles.shape == builtin_model.triangles.shape


def test_build_is_deterministic(builtin_model):
    again = builtin.build()
    for name in ("mean_shape", "identity_basis", "expression_basis", "albedo_basis",
                 "albedo_mean", "landmark_indices", "face_mask"):
        np.testing.assert_array_equal(np.asarray(getattr(again, name)),
                                      np.asarray(getattr(builtin_model, name)), err_msg=name)


def test_load_uses_cache(builtin_model):
    assert os.path.exists(builtin.cache_file())
    again = facemodel.load("builtin")
    np.testing.assert_array_equal(np.asarray(again.mean_shape),
                                  np.asarray(builtin_model.mean_shape))
    assert again.expression_names == builtin_model.expression_names
