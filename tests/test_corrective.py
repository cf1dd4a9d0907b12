"""The multi-level face model: corrective space, its regularizers, training end to end."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mofa import corrective, facemodel, metric_log, render, train
from mofa.code import random_code

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.configs import multilevel  # noqa: E402
from conftest import tiny_config  # noqa: E402


def tiny_multilevel(**overrides):
    config = multilevel.get_config()
    for key, value in tiny_config(**overrides).items():
        if key not in ("loss", "data", "corrective"):
            config[key] = value
    config.data.face_model = ""
    config.corrective.shape_dim = 4
    config.corrective.albedo_dim = 3
    return config


@pytest.fixture(scope="module")
def operators(builtin_model):
    return corrective.mesh_operators(builtin_model)


def test_zero_corrective_space_reproduces_the_3dmm_render(builtin_model):
    model = builtin_model
    code = random_code(model, jax.random.key(0), (2,))
    camera = render.Camera.from_fov(12.6, 32, 32)
    space = {"shape": jnp.zeros((4, model.num_vertices, 3)),
             "albedo": jnp.zeros((3, model.num_vertices, 3))}
    coefficients = {"shape": jax.random.normal(jax.random.key(1), (2, 4)),
                    "albedo": jax.random.normal(jax.random.key(2), (2, 3))}
    plain = render.render_face(model, code, camera)
    corrected = corrective.render_corrected(model, code, camera, space, coefficients)
    np.testing.assert_array_equal(corrected.image, plain.image)
    np.testing.assert_array_equal(corrected.screen_vertices, plain.screen_vertices)
    # A unit shape basis along +z in model space moves the posed vertices by R @ (0, 0, s).
    space["shape"] = space["shape"].at[0, :, 2].set(1.0)
    coefficients["shape"] = jnp.zeros((2, 4)).at[:, 0].set(0.5)
    moved, _ = corrective.apply(model, code, space, coefficients)
    base, _ = render.face_geometry(model, code)
    rotation = render.euler_to_matrix(code.rotation)
    expected = 0.5 * corrective.SHAPE_SCALE_MM * rotation[:, :, 2]
    np.testing.assert_allclose(moved - base, np.broadcast_to(expected[:, None], base.shape),
                               atol=1e-3)


def test_laplacian_smoothness_and_magnitude(builtin_model, operators):
    v = builtin_model.num_vertices
    constant = jnp.broadcast_to(jnp.array([3.0, 4.0, 0.0]), (2, v, 3))
    assert float(corrective.smoothness(constant, operators)) == pytest.approx(0.0, abs=1e-9)
    assert float(corrective.magnitude(constant)) == pytest.approx(25.0)
    bumpy = jax.random.normal(jax.random.key(0), (2, v, 3))
    assert float(corrective.smoothness(bumpy, operators)) > 0.5
    # One vertex raised by 1: it contributes 1, each of its d neighbours 1 / d^2.
    spike = jnp.zeros((v, 3)).at[0, 2].set(1.0)
    neighbours = np.asarray(operators.edges)
    degrees = np.asarray(operators.degree)
    ring = np.concatenate([neighbours[neighbours[:, 0] == 0, 1],
                           neighbours[neighbours[:, 1] == 0, 0]])
    expected = (1.0 + np.sum(1.0 / degrees[ring] ** 2)) / v
    assert float(corrective.smoothness(spike, operators)) == pytest.approx(expected, rel=1e-5)


def test_symmetry_of_mirrored_and_antisymmetric_fields(builtin_model, operators):
    mean = builtin_model.mean_shape
    mirror = np.asarray(operators.mirror)
    assert np.all(mirror[mirror] == np.arange(len(mirror)))  # an involution
    # The mean shape itself is a mirror-symmetric displacement field ...
    assert float(corrective.symmetry(mean, operators, corrective.SHAPE_MIRROR)) == pytest.approx(
        0.0, abs=1e-6)
    # ... pushing the left side forward and the right side back is not.
    twist = jnp.zeros_like(mean).at[:, 2].set(mean[:, 0])
    expected = float(jnp.mean(4.0 * mean[:, 0] ** 2))
    assert float(corrective.symmetry(twist, operators, corrective.SHAPE_MIRROR)) == pytest.approx(
        expected, rel=1e-4)
    # Albedo is mirrored without sign change: even in x is symmetric, odd is not.
    even = jnp.stack([mean[:, 0] ** 2, mean[:, 1], mean[:, 2]], -1) / 1e4
    odd = even.at[:, 0].set(mean[:, 0] / 100.0)
    assert float(corrective.symmetry(even, operators, corrective.ALBEDO_MIRROR)) == pytest.approx(
        0.0, abs=1e-6)
    assert float(corrective.symmetry(odd, operators, corrective.ALBEDO_MIRROR)) > 1e-3


def test_asymmetric_model_refuses_a_mirror_map(builtin_model):
    shifted = builtin_model.replace(mean_shape=builtin_model.mean_shape + 5.0)
    with pytest.raises(ValueError, match="not left/right symmetric"):
        corrective.mesh_operators(shifted)
    assert corrective.mesh_operators(shifted, symmetric=False).mirror is None


def test_identity_consistency():
    codes = jnp.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [3.0, 4.0]])
    same_pair = jnp.array([0, 0, 1, 2])
    assert float(corrective.identity_consistency(codes, same_pair)) == 0.0  # identical codes
    assert float(corrective.identity_consistency(codes, jnp.arange(4))) == 0.0  # all distinct
    # Persons {0, 1} and {2, 3}: ordered pairs (2, 3), (3, 2) at squared distance 25; 4 pairs.
    pairs = jnp.array([0, 0, 1, 1])
    assert float(corrective.identity_consistency(codes, pairs)) == pytest.approx(50.0 / 4)


def test_corrective_gradients(builtin_model, operators):
    """Finite differences of the corrected geometry and every regularizer, with respect to
    the learned bases, the per-image coefficients and the rotation."""
    model = builtin_model
    keys = jax.random.split(jax.random.key(4), 5)
    code = random_code(model, keys[0], (2,))
    space = {"shape": 0.1 * jax.random.normal(keys[1], (2, model.num_vertices, 3)),
             "albedo": 0.1 * jax.random.normal(keys[2], (2, model.num_vertices, 3))}
    coefficients = {"shape": jax.random.normal(keys[3], (2, 2)),
                    "albedo": jax.random.normal(keys[4], (2, 2))}

    def geometry(space, coefficients, rotation):
        vertices, albedo = corrective.apply(model, code.replace(rotation=rotation), space,
                                            coefficients)
        return jnp.mean(vertices[..., :2] ** 2) * 1e-3 + jnp.mean(albedo ** 2)

    def regularized(space, coefficients):
        terms = corrective.regularizers(space, coefficients, operators)
        consistency = corrective.identity_consistency(coefficients["shape"], jnp.array([0, 0]))
        return sum(terms.values()) + consistency

    tolerances = dict(order=1, modes=("rev",), eps=1e-2, atol=5e-2, rtol=5e-2)
    check_grads(geometry, (space, coefficients, code.rotation), **tolerances)
    check_grads(regularized, (space, coefficients), **tolerances)


def test_test_time_fit_holds_the_corrective_offsets(builtin_model):
    """`train.fit_code` with the corrective level's offsets fits the 3DMM code on top of
    them: on faces rendered with known per-image corrections, the identity comes back
    closer to the truth than a fit that has to explain the corrections with the 3DMM."""
    from mofa.decoder import Decoder

    model = builtin_model
    decoder = Decoder(face_model=model, camera=render.Camera.from_fov(12.6, 48, 48))
    truth = random_code(model, jax.random.key(3), (2,))
    # One smooth basis: faces 12% wider, their cheeks redder; per image its own amount.
    centred = model.mean_shape - model.mean_shape.mean(0)
    widen = jnp.zeros_like(centred).at[:, 0].set(0.12 * centred[:, 0])
    space = {"shape": (widen / corrective.SHAPE_SCALE_MM)[None],
             "albedo": jnp.zeros_like(centred).at[:, 0].set(1.0)[None]}
    coefficients = {"shape": jnp.array([[1.0], [-0.7]]), "albedo": jnp.array([[0.8], [-0.5]])}
    out = decoder.render(truth, space, coefficients)
    start = truth.replace(identity=truth.identity * 0.3)

    def identity_error_mm(code):  # RMS over the face region of the neutral shapes
        neutral = facemodel.shape(model, code.identity, jnp.zeros_like(code.expression))
        target = facemodel.shape(model, truth.identity, jnp.zeros_like(truth.expression))
        squared = jnp.sum((neutral - target) ** 2, -1) * model.face_mask
        return float(jnp.sqrt(jnp.sum(squared) / (2 * jnp.sum(model.face_mask))))

    # One batch (one compilation): the two faces with their offsets held, then the same
    # two with zero offsets, which the 3DMM alone has to explain.
    shape, albedo = corrective.corrections(space, coefficients)
    offsets = (jnp.concatenate([shape, 0 * shape]), jnp.concatenate([albedo, 0 * albedo]))
    twice = lambda x: jnp.concatenate([x, x])  # noqa: E731
    fitted = train.fit_code(jax.tree.map(twice, start), twice(out.image),
                            twice(out.landmarks), decoder, 60, corrections=offsets)
    errors = {name: identity_error_mm(jax.tree.map(lambda x: x[half], fitted))
              for name, half in (("held", slice(0, 2)), ("ignored", slice(2, 4)))}
    # Measured: start 3.9 mm, held 2.4, ignored 2.9.
    assert errors["held"] < 0.7 * identity_error_mm(start), errors
    assert errors["held"] < 0.9 * errors["ignored"], errors


@pytest.mark.slow
def test_multilevel_config_trains_the_bases_end_to_end(ict_dir, tmp_path):
    config = tiny_multilevel(num_steps=2)  # step 0 has learning rate 0 (warmup)
    config.data.face_model = f"ict:{ict_dir}"
    config.encoder.fit_steps = 2  # the shipped config's test-time fit, on the corrections
    config.eval_batch_size = 4
    results = train.train_and_evaluate(config, str(tmp_path))
    log = [r for r in metric_log.read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
    assert [r["step"] for r in log] == [1, 2]
    assert np.isfinite(log[-1]["loss/corrective_shape_symmetry"])
    # Multi-view batches (4 views per person) switch identity consistency on.
    assert config.data.framing.views_per_person == 4 and log[-1]["loss/identity_consistency"] > 0
    # Faces of another model: the shape error is the surface distance, with the correction.
    assert np.isfinite(results["surface_error_mm_mean"])
    assert "vertex_error_mm_mean" not in results
    # Gradients reached the zero-initialized bases: the restored ones have moved.
    _, state, _, step = train.load_trained(str(tmp_path))
    assert step == 2 and state.params["corrective"]["shape"].shape[0] == 4
    assert float(jnp.abs(state.params["corrective"]["shape"]).max()) > 0
    assert float(jnp.abs(state.params["corrective"]["albedo"]).max()) > 0
