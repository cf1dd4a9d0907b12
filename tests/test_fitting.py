"""Analysis-by-synthesis fitting (mofa.fitting) on synthetic faces with known codes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mofa import facemodel, fitting, render
from mofa.code import DEFAULT_FOV_DEGREES
from mofa.data import synthetic


def _camera(size):
    return render.Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)


_random_codes = jax.jit(synthetic.random_face_codes, static_argnums=2)


def _landmarks(model, code, camera):
    lm = jax.jit(fitting.project_landmarks)(model, camera, code)
    return lm, jnp.ones(lm.shape[:2])


def test_landmark_fit_recovers_pose_of_the_mean_face(builtin_model):
    camera = _camera(128)
    truth = _random_codes(builtin_model, jax.random.key(1), 8)
    truth = truth.replace(identity=jnp.zeros_like(truth.identity),
                          expression=jnp.zeros_like(truth.expression))
    lm, weight = _landmarks(builtin_model, truth, camera)
    code = fitting.fit_landmarks(builtin_model, camera, lm, weight, steps=200,
                                 fixed=("identity", "expression"))
    pose_error = np.degrees(np.abs(np.asarray(code.rotation - truth.rotation)))
    assert pose_error.max() < 2.0, pose_error
    assert np.abs(np.asarray(code.translation - truth.translation)).max() < 10.0  # mm at 1 m
    errors = fitting.fit_errors(builtin_model, camera, code, lm, weight)
    assert np.asarray(errors["landmark_px"]).max() < 0.5


def test_landmark_fit_recovers_shape_and_pose(builtin_model):
    camera = _camera(128)
    truth = _random_codes(builtin_model, jax.random.key(2), 8)
    lm, weight = _landmarks(builtin_model, truth, camera)
    start = fitting.initial_code(builtin_model, camera, lm, weight)
    code = fitting.fit_landmarks(builtin_model, camera, lm, weight, steps=300)
    before = fitting.fit_errors(builtin_model, camera, start, lm, weight)["landmark_px"]
    after = fitting.fit_errors(builtin_model, camera, code, lm, weight)["landmark_px"]
    assert np.all(np.asarray(after) < 0.5) and np.all(np.asarray(after) < np.asarray(before))
    # Pose up to the shape/pose ambiguity of 68 points; geometry closer than the mean face.
    assert np.degrees(np.abs(np.asarray(code.rotation - truth.rotation))).mean() < 2.0
    geometry = lambda c: facemodel.shape(builtin_model, c.identity, c.expression)  # noqa: E731
    fitted = np.linalg.norm(np.asarray(geometry(code) - geometry(truth)), axis=-1).mean()
    mean_face = np.linalg.norm(np.asarray(builtin_model.mean_shape - geometry(truth)),
                               axis=-1).mean()
    assert fitted < 0.85 * mean_face, (fitted, mean_face)


def test_fixed_fields_keep_their_values(builtin_model):
    camera = _camera(128)
    truth = _random_codes(builtin_model, jax.random.key(3), 8)
    lm, weight = _landmarks(builtin_model, truth, camera)
    init = fitting.initial_code(builtin_model, camera, lm, weight).replace(
        identity=truth.identity)
    code = fitting.fit_landmarks(builtin_model, camera, lm, weight, steps=20, init_code=init,
                                 fixed=("identity",))
    np.testing.assert_array_equal(np.asarray(code.identity), np.asarray(truth.identity))
    assert not np.allclose(np.asarray(code.expression), 0.0)


def test_photometric_fit_lowers_the_photometric_error(builtin_model):
    # 64 px, batch 2, 40 steps from `initial_code`: the shapes `mofa reconstruct` uses in
    # tests/test_reconstruct.py, so the two share one compilation.
    size = 64
    camera = _camera(size)
    truth = _random_codes(builtin_model, jax.random.key(5), 2)
    background = jnp.full((2, size, size, 3), 0.3)
    batch = synthetic.render_codes(builtin_model, truth, background, size)
    images, lm, weight = batch["image"], batch["landmarks"], batch["landmark_weight"]
    init = fitting.initial_code(builtin_model, camera, lm, weight)
    landmarks_only = fitting.fit_landmarks(builtin_model, camera, lm, weight, steps=40,
                                           init_code=init)
    code = fitting.fit(builtin_model, camera, images, lm, weight, init, steps=40)
    before = fitting.fit_errors(builtin_model, camera, landmarks_only, lm, weight, images)
    after = fitting.fit_errors(builtin_model, camera, code, lm, weight, images)
    assert np.all(np.asarray(after["photometric"]) < 0.6 * np.asarray(before["photometric"]))
    assert np.all(np.asarray(after["landmark_px"]) < 1.0)


def test_bad_shapes_are_named(builtin_model):
    camera = _camera(32)
    with pytest.raises(ValueError, match="landmarks have shape"):
        fitting.fit_landmarks(builtin_model, camera, jnp.zeros((2, 5, 2)), jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="images have shape"):
        fitting.fit(builtin_model, camera, jnp.zeros((2, 16, 16, 3)), jnp.zeros((2, 68, 2)),
                    jnp.ones((2, 68)), steps=2)
