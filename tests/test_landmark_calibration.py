"""Landmark calibration: a detector's landmarks as measured model vertices."""

import dataclasses

import jax
import numpy as np
import pytest

from mofa import fitting, inference, landmark_calibration, render
from mofa.code import DEFAULT_FOV_DEGREES, random_code
from tests import fixtures_facemodels as fx


def _projected_vertices(model, n, seed):
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, 224, 224)
    code = random_code(model, jax.random.key(seed), (n,), max_yaw_degrees=12.0,
                       max_pitch_degrees=10.0, distance_mm=1500.0)
    every = model.replace(landmark_indices=np.arange(model.num_vertices, dtype=np.int32))
    return np.asarray(fitting.project_landmarks(every, camera, code))


def test_calibration_recovers_the_detectors_vertices_and_spread():
    """A fake detector that reports other vertices than the model's landmarks, with
    per-landmark noise: calibration finds those vertices and ranks the noise."""
    model = fx.synthetic_model()
    mean = np.asarray(model.mean_shape)
    own = np.asarray(model.landmark_indices)
    rng = np.random.default_rng(0)
    # The detector's vertex for each landmark: a different vertex 3-8 mm from the model's.
    truth = []
    for v in own:
        distance = np.linalg.norm(mean - mean[v], axis=-1)
        ring = np.nonzero((distance > 3.0) & (distance < 8.0))[0]
        truth.append(rng.choice(ring))
    truth = np.asarray(truth)
    projected = _projected_vertices(model, 64, seed=1)
    iod = np.linalg.norm(projected[:, truth[36]] - projected[:, truth[45]], axis=-1)
    noise_level = np.where(np.arange(68) < 17, 0.06, 0.01)  # a loose jaw, tight rest
    detections = (projected[:, truth]
                  + rng.normal(size=(64, 68, 2)) * (noise_level[None, :, None] * iod[:, None, None]))
    visible = np.ones(projected.shape[:2], bool)

    table = landmark_calibration.calibrate(model, detections, projected, visible)
    found = np.asarray(table.vertices)
    tight = np.arange(17, 68)
    assert np.mean(found[tight] == truth[tight]) > 0.9
    assert np.linalg.norm(mean[found] - mean[truth], axis=-1).max() < 3.0
    sigma = np.asarray(table.sigma)
    assert sigma[:17].min() > 2.0 * sigma[17:].max()  # the jaw's spread is seen
    np.testing.assert_allclose(np.median(sigma[17:]), 0.01 * np.sqrt(2), rtol=0.35)
    weights = table.weights()
    assert abs(weights.mean() - 1.0) < 1e-5 and weights[:17].max() < weights[17:].min()
    # Independent noise: (nearly) all 136 coordinates count.
    assert table.independent > 100, table.independent
    # A detector whose jaw line shifts as one (one offset per face for all 17 points)
    # has far fewer independent coordinates.
    shift = rng.normal(size=(64, 1, 2)) * 0.06 * iod[:, None, None]
    correlated = detections.copy()
    correlated[:, :17] = projected[:, truth[:17]] + shift
    assert landmark_calibration.calibrate(model, correlated, projected, visible).independent < 80
    # The model's own vertices fit these detections far worse.
    own_table = landmark_calibration.calibrate(model, detections, projected, visible,
                                               radius_mm=0.0)
    assert np.median(own_table.sigma) > 3.0 * np.median(sigma)


def test_pose_noise_is_the_ratio_of_residual_levels():
    """Detections 1.8x noisier on the posed renders read as pose_noise 1.8, whatever the
    jaw does (it slides in a fit), and scale the fit's noise level."""
    model = fx.synthetic_model()
    rng = np.random.default_rng(1)
    own = np.asarray(model.landmark_indices)
    sigma = np.where(np.arange(68) < 17, 0.06, np.linspace(0.01, 0.03, 68))
    table = landmark_calibration.LandmarkTable(tuple(own.tolist()), tuple(sigma.tolist()),
                                               model.num_vertices)

    def detect(projected, scale, jaw_scale):
        iod = np.linalg.norm(projected[:, own[36]] - projected[:, own[45]], axis=-1)
        level = sigma * np.where(np.arange(68) < 17, jaw_scale, scale) / np.sqrt(2.0)
        return projected[:, own] + rng.normal(size=(len(projected), 68, 2)) * (
            level[None, :, None] * iod[:, None, None])

    frontal_vertices = _projected_vertices(model, 200, seed=2)
    posed_vertices = _projected_vertices(model, 200, seed=3)
    frontal = (detect(frontal_vertices, 1.0, 1.0), frontal_vertices)
    posed = (detect(posed_vertices, 1.8, 5.0), posed_vertices)
    assert landmark_calibration.residual_level(table, *frontal) == pytest.approx(0.93, abs=0.1)
    assert landmark_calibration.pose_noise(table, frontal, posed) == pytest.approx(1.8, rel=0.1)
    noisier = dataclasses.replace(table, pose_noise=1.8)
    assert noisier.crop_sigma() == pytest.approx(1.8 * table.crop_sigma())


def test_shrinkage_is_recovered():
    """Detections that sit 30% of the way toward the mean identity and 60% toward the
    neutral expression, plus a constant per-landmark offset and noise, read as
    shrinkage (0.3, 0.6)."""
    model = fx.synthetic_model()
    rng = np.random.default_rng(2)
    own = np.asarray(model.landmark_indices)
    table = landmark_calibration.LandmarkTable(tuple(own.tolist()), (0.03,) * 68,
                                               model.num_vertices)
    n, v = 200, model.num_vertices
    projected = _projected_vertices(model, n, seed=4)
    iod = np.linalg.norm(projected[:, own[36]] - projected[:, own[45]], axis=-1)
    toward_mean = rng.normal(size=(n, v, 2)) * 2.0
    toward_neutral = rng.normal(size=(n, v, 2)) * 2.0
    offset = rng.normal(size=(1, 68, 2)) * 2.0
    detections = (projected[:, own] + 0.3 * toward_mean[:, own] + 0.6 * toward_neutral[:, own]
                  + offset + rng.normal(size=(n, 68, 2)) * 0.02 * iod[:, None, None])
    found = landmark_calibration.Detections(detections, projected, np.ones((n, v), bool),
                                            toward_mean, toward_neutral)
    identity, expression = landmark_calibration.shrinkage(table, found)
    assert identity == pytest.approx(0.3, abs=0.03) and expression == pytest.approx(0.6, abs=0.03)
    # Detections of the faces themselves read as no shrinkage.
    exact = found._replace(detections=projected[:, own] + offset)
    np.testing.assert_allclose(landmark_calibration.shrinkage(table, exact), 0.0, atol=2e-3)


def test_bad_shapes_are_named():
    model = fx.synthetic_model()
    with pytest.raises(ValueError, match="expected \\(N, 68, 2\\)"):
        landmark_calibration.calibrate(model, np.zeros((3, 5, 2)), np.zeros((3, 10, 2)),
                                       np.ones((3, 10), bool))


def test_shipped_tables_match_their_models(builtin_model):
    """The builtin table applies to today's builtin model (a regenerated model with a
    different mesh must come with a regenerated table) and moves the fit's landmarks."""
    table = landmark_calibration.table_for(builtin_model)
    assert table is not None, "regenerate: python -m mofa.landmark_calibration"
    rec = inference.Reconstructor(builtin_model, render.Camera.from_fov(
        DEFAULT_FOV_DEGREES, 64, 64), fit_steps=0)
    np.testing.assert_array_equal(np.asarray(rec.fit_model.landmark_indices), table.vertices)
    # The fit models the detector's lean toward the average face that the table measured.
    assert rec.options.landmark_identity_shrink == table.identity_shrink > 0
    assert rec.options.landmark_expression_shrink == table.expression_shrink > 0
    np.testing.assert_array_equal(np.asarray(rec.model.landmark_indices),
                                  np.asarray(builtin_model.landmark_indices))
    assert landmark_calibration.table_for(builtin_model.replace(name="another")) is None
    fewer = builtin_model.replace(mean_shape=builtin_model.mean_shape[:-1])
    assert landmark_calibration.table_for(fewer) is None  # vertex count checked
    # dlib's predictor has no table: the fit takes the model's own (annotators') vertices,
    # the uncalibrated landmark weight and no modelled lean.
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, 64, 64)
    assert landmark_calibration.table_for(builtin_model, "dlib") is None
    dlib_rec = inference.Reconstructor(builtin_model, camera, fit_steps=0, detector="dlib")
    np.testing.assert_array_equal(np.asarray(dlib_rec.fit_model.landmark_indices),
                                  np.asarray(builtin_model.landmark_indices))
    plain = fitting.FitOptions().for_model(builtin_model.name)
    assert dlib_rec.options == plain
    assert dlib_rec.options.landmark_identity_shrink == 0
    assert dlib_rec.options.landmark != rec.options.landmark
    with pytest.raises(ValueError, match="unknown detector 'openface'"):
        landmark_calibration.table_for(builtin_model, "openface")
