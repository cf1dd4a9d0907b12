"""The procedurally generated builtin face model: sizes, symmetry, anatomy, caching."""

import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mofa import facemodel
from mofa.facemodel import builtin
from mofa.facemodel.model import (
    nonrigid_rms,
    remove_similarity,
    similarity_fields,
    similarity_share,
)

# ICT-FaceKit's identity space, measured by benchmarks/identity_spectrum.py: RMS per-vertex
# displacement (mm) over its face mask of a random identity after removing its similarity
# part. The builtin model is scaled to match it.
ICT_NONRIGID_RMS = 4.06


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
    # Relative to the nose tip: the similarity part of the jaw rotation (about half of
    # it: the upper face counter-rotates) was removed, so the chin alone moves less.
    tip = np.asarray(builtin_model.landmark_indices)[30]
    drop = jaw[chin] - jaw[tip]
    assert 8.0 < np.linalg.norm(drop) < 20.0 and drop[1] < 0  # chin drops
    lips = np.asarray(builtin_model.landmark_indices)[[62, 66]]
    assert 6.0 < jaw[lips[0], 1] - jaw[lips[1], 1] < 15.0  # the mouth opens
    blink = fields[names.index("eyeBlink_L")]
    assert blink[:, 1].min() < -6.0  # the upper lid comes down over the eye
    # Left eye only; the rest of the head moves by the small similarity transform that
    # was removed from the designed field (a few tenths of a millimetre).
    moved = np.linalg.norm(blink, axis=1) > 1.0
    assert np.all(arrays["mean_shape"][moved, 0] > 0)
    assert np.linalg.norm(blink[arrays["mean_shape"][:, 0] < 0], axis=1).max() < 0.5


def test_nose_tip_normal_points_forward(builtin_model):
    normals = np.asarray(facemodel.vertex_normals(builtin_model.mean_shape,
                                                  builtin_model.triangles))
    vertices = np.asarray(builtin_model.mean_shape)
    tip = np.linalg.norm(vertices - vertices[np.argmax(vertices[:, 2])], axis=1) < 4.0
    direction = normals[tip].mean(0)
    assert direction[2] / np.linalg.norm(direction) > 0.85


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


# ---------------------------------------------------------------------------
# Similarity transforms: the part of a shape change that looks like pose and distance.


def _cloud(seed=0, n=300):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, 3)) * np.array([60.0, 80.0, 40.0]) + np.array([5.0, -3.0, 20.0])
    weights = rng.uniform(0.0, 1.0, n)
    weights[: n // 5] = 0.0  # the removal must also act where the weight is 0
    return rng, points, weights


def _weighted_inner(a, b, weights):
    return np.einsum("...vc,v,...vc->...", a, weights, b)


def test_similarity_fields_are_first_order_similarity_transforms():
    _, p, w = _cloud()
    s = similarity_fields(p, w)
    assert s.shape == (7,) + p.shape
    c = (w @ p) / w.sum()
    eps = 1e-6
    for axis in range(3):
        np.testing.assert_allclose(s[axis], np.broadcast_to(np.eye(3)[axis], p.shape))
        angles = np.zeros(3)
        angles[axis] = eps
        rot = Rotation.from_rotvec(angles).as_matrix()
        moved = (p - c) @ rot.T + c
        np.testing.assert_allclose(s[3 + axis], (moved - p) / eps, atol=1e-3)
    np.testing.assert_allclose(s[6], p - c)


def test_remove_similarity_analytic():
    rng, p, w = _cloud()
    s = similarity_fields(p, w)
    # A pure similarity field (any combination of the 7) is removed entirely.
    pure = np.einsum("a,avc->vc", rng.normal(size=7) * [3, 3, 3, 0.05, 0.05, 0.05, 0.02], s)
    assert np.abs(remove_similarity(pure, p, w)).max() < 1e-9 * np.abs(pure).max() + 1e-9
    # A field weighted-orthogonal to all 7 directions is unchanged.
    g = rng.normal(size=p.shape)
    gram = np.einsum("avc,v,bvc->ab", s, w, s)
    orthogonal = g - np.einsum("a,avc->vc", np.linalg.solve(gram, _weighted_inner(s, g, w)), s)
    np.testing.assert_allclose(_weighted_inner(s, orthogonal, w), 0.0, atol=1e-8)
    np.testing.assert_allclose(remove_similarity(orthogonal, p, w), orthogonal, atol=1e-9)
    # Any field: the result is weighted-orthogonal to the 7 directions, and what was
    # removed is one similarity field at every vertex, the zero-weight ones included.
    fields = rng.normal(size=(4,) + p.shape) + pure
    kept = remove_similarity(fields, p, w)
    assert kept.shape == fields.shape
    inner = np.einsum("kvc,v,avc->ka", kept, w, s)
    assert np.abs(inner).max() < 1e-9 * np.abs(np.einsum("kvc,v,avc->ka", fields, w, s)).max()
    removed = (fields - kept).reshape(4, -1)
    coeffs = np.linalg.lstsq(s.reshape(7, -1).T, removed.T, rcond=None)[0]
    np.testing.assert_allclose(coeffs.T @ s.reshape(7, -1), removed, atol=1e-9)
    # Shares: all similarity, none, and in between.
    assert similarity_share(pure[None], None, p, w) == pytest.approx(1.0, abs=1e-9)
    assert similarity_share(orthogonal[None], [2.0], p, w) == pytest.approx(0.0, abs=1e-9)
    mixed = np.stack([pure, orthogonal])
    energy = _weighted_inner(mixed, mixed, w)
    assert similarity_share(mixed, None, p, w) == pytest.approx(energy[0] / energy.sum())
    expected = np.sqrt(4.0 * energy[1] / w.sum())
    assert nonrigid_rms(mixed, [1.0, 2.0], p, w) == pytest.approx(expected)


def _share(arrays, space):
    return similarity_share(arrays[f"{space}_basis"], arrays[f"{space}_std"],
                            arrays["mean_shape"], arrays["face_mask"])


def test_identity_space_has_no_similarity_part(arrays):
    """Rigid motion and scale of the face are pose and distance, not identity (was ~78%)."""
    assert _share(arrays, "identity") < 0.01


def test_expression_bases_have_no_similarity_part(builtin_model, arrays):
    assert _share(arrays, "expression") < 0.01
    for k, name in enumerate(builtin_model.expression_names):
        one = {"expression_basis": arrays["expression_basis"][k:k + 1],
               "expression_std": arrays["expression_std"][k:k + 1]}
        assert _share({**arrays, **one}, "expression") < 0.01, name


def test_identity_nonrigid_spread_like_ict(arrays):
    """A random identity moves the face like ICT-FaceKit's does, and its leading
    components are large (mm at one std, somewhere on the face)."""
    spread = nonrigid_rms(arrays["identity_basis"], arrays["identity_std"],
                          arrays["mean_shape"], arrays["face_mask"])
    assert 0.8 < spread / ICT_NONRIGID_RMS < 1.25
    fields = arrays["identity_basis"][:6] * arrays["identity_std"][:6, None, None]
    on_face = arrays["face_mask"] > 0.5
    assert np.all(np.linalg.norm(fields[:, on_face], axis=2).max(1) > 3.0)


def test_ict_reference_spread(builtin_model, ict_dir, arrays):
    """ICT_NONRIGID_RMS is what ICT-FaceKit measures, about half of whose face-region
    identity variance is similarity transform."""
    ict = facemodel.load(f"ict:{ict_dir}")
    args = [np.asarray(a, np.float64) for a in
            (ict.identity_basis, ict.identity_std, ict.mean_shape, ict.face_mask)]
    assert nonrigid_rms(*args) == pytest.approx(ICT_NONRIGID_RMS, abs=0.05)
    assert 0.3 < similarity_share(*args) < 0.7
    spread = nonrigid_rms(arrays["identity_basis"], arrays["identity_std"],
                          arrays["mean_shape"], arrays["face_mask"])
    assert 0.8 < spread / nonrigid_rms(*args) < 1.25


def test_mean_face_is_registered_to_icts_mean(builtin_model, ict_dir, arrays):
    """builtin_mean.MEAN_IDENTITY moves the procedural mean face to ICT-FaceKit's mean
    (a mean of scanned people), NoW protocol: 2.12 mm median before, 0.48 after (version
    5, the population's average code; version 4's single registration reached 0.54)."""
    from mofa import scan_eval
    from mofa.facemodel.builtin_mean import MEAN_IDENTITY
    ict = facemodel.load(f"ict:{ict_dir}")
    target = np.asarray(ict.mean_shape, np.float64)
    now = list(scan_eval.NOW_LANDMARKS)
    target_landmarks = target[np.asarray(ict.landmark_indices)[now]]
    procedural = arrays["mean_shape"] - np.einsum("k,kvd->vd", np.asarray(MEAN_IDENTITY),
                                                  arrays["identity_basis"])
    lm = np.asarray(builtin_model.landmark_indices)[now]
    error = {name: scan_eval.scan_to_mesh_errors(target, target_landmarks, mean,
                                                 builtin_model.triangles, mean[lm])["median_mm"]
             for name, mean in (("procedural", procedural), ("registered", arrays["mean_shape"]))}
    assert error["registered"] < 0.52 and error["registered"] < 0.3 * error["procedural"], error
