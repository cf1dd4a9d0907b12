"""The objective: each loss term on analytic cases, its gradients, and calibration (the
objective of every shipped config is lowest at the ground-truth code on rendered faces)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mofa import fitting, images, losses, render, train
from mofa.decoder import Decoder
from mofa.code import DEFAULT_FOV_DEGREES, FaceCode
from mofa.data import sources, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# --- losses -------------------------------------------------------------------


def test_photometric_dense_is_the_mean_pixel_distance_in_the_mask():
    rendered = jnp.zeros((2, 4, 4, 3))
    target = rendered.at[:, :2].set(jnp.array([3.0, 4.0, 0.0]))  # distance 5 in the top half
    mask = jnp.ones((2, 4, 4))
    assert float(losses.photometric_dense(rendered, target, mask)) == pytest.approx(2.5, rel=1e-4)
    top_only = mask.at[:, 2:].set(0.0)
    assert float(losses.photometric_dense(rendered, target, top_only)) == pytest.approx(5.0, rel=1e-4)
    assert float(losses.photometric_dense(rendered, target, mask, skin_mask=1.0 - top_only)) \
        == pytest.approx(0.0, abs=1e-3)
    grad = jax.grad(lambda r: losses.photometric_dense(r, r, mask))(rendered)
    assert np.all(np.isfinite(grad))  # robust norm is differentiable at zero residual


def test_bilinear_sampling_and_vertex_photometric():
    ramp = jnp.broadcast_to(jnp.arange(8.0)[None, None, :, None], (1, 8, 8, 3))  # value = column
    points = jnp.array([[[2.5, 3.5], [4.0, 1.5], [6.25, 6.5]]])  # pixel centre at +0.5
    np.testing.assert_allclose(losses.bilinear_sample(ramp, points)[0, :, 0], [2.0, 3.5, 5.75],
                               atol=1e-6)
    colours = losses.bilinear_sample(ramp, points)
    visible = jnp.array([[True, True, False]])
    screen = jnp.concatenate([points, jnp.ones((1, 3, 1))], -1)
    assert float(losses.photometric_vertex(ramp, screen, colours, visible)) == pytest.approx(
        0.0, abs=1e-3)
    shifted = colours + jnp.array([0.0, 0.0, 2.0])
    assert float(losses.photometric_vertex(ramp, screen, shifted, visible)) == pytest.approx(
        2.0, rel=1e-3)
    # Gradient w.r.t. position follows the image gradient (1 per pixel along x).
    grad = jax.grad(lambda s: jnp.sum(losses.bilinear_sample(ramp, s)[..., 0]))(points)
    np.testing.assert_allclose(grad[0, :, 0], 1.0, atol=1e-5)
    # The host path (numpy in, numpy out: texture baking) samples the same values,
    # also past the border, where both clamp.
    rng = np.random.default_rng(3)
    photo = rng.uniform(size=(9, 7, 3)).astype(np.float32)
    where = rng.uniform(-2.0, 11.0, size=(40, 2)).astype(np.float32)
    on_host = images.bilinear_sample(photo, where)
    assert isinstance(on_host, np.ndarray)
    np.testing.assert_allclose(on_host, losses.bilinear_sample(photo[None], where[None])[0],
                               atol=1e-6)
    # A uint8 photo (as loaded) at float32 points: float32 out, the same values.
    photo8 = (photo * 255).astype(np.uint8)
    on_host8 = images.bilinear_sample(photo8, where)
    assert on_host8.dtype == np.float32
    np.testing.assert_allclose(on_host8, losses.bilinear_sample(
        jnp.asarray(photo8, jnp.float32)[None], where[None])[0], atol=1e-4)


def test_landmark_and_prior_terms(builtin_model):
    predicted = jnp.zeros((2, 68, 2))
    target = predicted.at[..., 0].set(6.4)
    weight = jnp.ones((2, 68)).at[:, 34:].set(0.0)
    assert float(losses.landmark_alignment(predicted, target, weight, 64.0)) == pytest.approx(0.01)
    code = FaceCode.neutral(builtin_model, (2,))
    code = code.replace(identity=code.identity.at[:, 0].set(2.0))
    prior = losses.statistical_prior(code)
    assert float(prior["prior_identity"]) == pytest.approx(4.0)
    assert float(prior["prior_expression"]) == 0.0


def test_illumination_prior_standardizes_the_synthetic_light(builtin_model):
    """The light prior is the squared norm of each SH coefficient standardized by the
    synthetic faces' light: about 27 (a chi-square mean) on fresh draws, 0 at the mean
    light, and it grows as a light dims (what the reflectance prior alone lets it do)."""
    from mofa.code import illumination_statistics, random_illumination

    mean, std = illumination_statistics()
    assert mean.shape == std.shape == (9, 3) and np.all(std > 0)
    lights = random_illumination(jax.random.key(99), (4096,))
    code = FaceCode.neutral(builtin_model, (4096,)).replace(illumination=lights)
    assert float(losses.statistical_prior(code)["prior_illumination"]) == pytest.approx(
        27.0, rel=0.05)
    at_mean = FaceCode.neutral(builtin_model, (1,)).replace(illumination=jnp.asarray(mean)[None])
    assert float(losses.statistical_prior(at_mean)["prior_illumination"]) == pytest.approx(
        0.0, abs=1e-6)
    dimmer = [float(losses.statistical_prior(at_mean.replace(
        illumination=at_mean.illumination * k))["prior_illumination"]) for k in (0.9, 0.6)]
    assert 0.0 < dimmer[0] < dimmer[1]


def _region_mean(model, values):
    region = np.asarray(model.face_mask, np.float64)
    return float(np.sum(np.asarray(values, np.float64) * region) / region.sum())


def test_model_space_terms_measure_what_each_field_moves(builtin_model):
    model = builtin_model
    base = FaceCode.neutral(model, (1,))
    # A lateral shift at the same distance moves the face by exactly that much (cm^2).
    moved = base.replace(translation=base.translation + jnp.array([3.0, 4.0, 0.0]))
    terms = losses.model_space(model, moved, base)
    assert float(terms["translation"]) == pytest.approx(25.0 / 100.0, rel=1e-4)
    for name in ("shape", "rotation", "albedo", "illumination"):
        assert float(terms[name]) == pytest.approx(0.0, abs=1e-9), name
    # A face twice as far with the same image position: the apparent size changes by
    # log 2, times the face's RMS radius; no lateral term.
    farther = base.replace(translation=base.translation * 2.0)
    mean = np.asarray(model.mean_shape, np.float64)
    region = np.asarray(model.face_mask, np.float64)
    centre = (mean * region[:, None]).sum(0) / region.sum()
    radius_sq = _region_mean(model, np.sum((mean - centre) ** 2, -1))
    assert float(losses.model_space(model, farther, base)["translation"]) == pytest.approx(
        radius_sq * np.log(2.0) ** 2 / 100.0, rel=1e-3)
    # One std of identity component 0: its field's squared norm averaged over the region.
    shaped = base.replace(identity=base.identity.at[:, 0].set(1.0))
    field = np.asarray(model.identity_basis[0], np.float64) * float(model.identity_std[0])
    expected = _region_mean(model, np.sum(field**2, -1)) / 100.0
    terms = losses.model_space(model, shaped, base)
    assert float(terms["shape"]) == pytest.approx(expected, rel=1e-3)
    assert float(terms["translation"]) == pytest.approx(0.0, abs=1e-9)
    # A small yaw moves the centred face by |omega x p|: x and z components of the radius.
    angle = 0.01
    turned = base.replace(rotation=base.rotation.at[:, 1].set(angle))
    centred = mean - centre
    expected = angle**2 * _region_mean(model, centred[:, 0] ** 2 + centred[:, 2] ** 2) / 100.0
    assert float(losses.model_space(model, turned, base)["rotation"]) == pytest.approx(
        expected, rel=2e-2)
    assert float(losses.parameter_space(shaped, base)) == pytest.approx(1.0)


def test_model_space_gradients(builtin_model):
    model = builtin_model
    truth = synthetic.random_face_codes(model, jax.random.key(0), 2)
    guess = synthetic.random_face_codes(model, jax.random.key(1), 2)
    # Every field reaches the loss, with correct first derivatives.
    grads = jax.grad(lambda c: losses.model_space(model, c, truth)["total"])(guess)
    for name, value in vars(grads).items():
        assert np.all(np.isfinite(np.asarray(value))) and np.any(np.asarray(value) != 0), name

    def loss(rotation, translation, identity, reflectance):
        code = guess.replace(rotation=rotation, translation=translation, identity=identity,
                             reflectance=reflectance)
        return losses.model_space(model, code, truth)["total"]

    check_grads(loss, (guess.rotation, guess.translation, guess.identity, guess.reflectance),
                order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_model_space_gradient_is_not_dominated_by_translation(builtin_model):
    """The old posed-vertex loss put ~400x more gradient on the raw translation outputs
    than on the identity components (depth, which the image barely shows, most of it).
    Pose-normalised terms and output scales at each field's spread keep the gradients
    per raw head output of one order, here at a mid-training state."""
    from mofa import networks

    model = builtin_model
    truth = synthetic.random_face_codes(model, jax.random.key(2), 32)
    keys = jax.random.split(jax.random.key(3), 3)
    guess = truth.replace(
        rotation=truth.rotation + jnp.radians(3.0) * jax.random.normal(keys[0], (32, 3)),
        translation=truth.translation + jnp.array([2.0, 2.0, 50.0])
        * jax.random.normal(keys[1], (32, 3)),
        identity=0.3 * truth.identity, expression=0.3 * truth.expression)
    grads = jax.grad(lambda c: losses.model_space(model, c, truth)["total"])(guess)
    per_output = lambda g, scale: float(np.mean(np.abs(np.asarray(g) * scale)))  # noqa: E731
    translation = per_output(grads.translation, np.asarray(networks.TRANSLATION_SCALE))
    rotation = per_output(grads.rotation, networks.ROTATION_SCALE)
    identity = per_output(grads.identity[:, :10], networks.CODE_SCALE)
    assert translation < 50 * identity, (translation, identity)
    assert rotation < 100 * identity, (rotation, identity)
    assert per_output(grads.expression, networks.CODE_SCALE) > 0


# --- calibration: the objective points at the truth ---------------------------------

SHIPPED_CONFIGS = ("quickstart", "synthetic_supervised", "mofa_folder", "mofa_celeba",
                   "bootstrap", "multilevel")


def _faces(model, image_size, count=16, seed=7):
    code, background = synthetic.random_inputs(model, jax.random.key(seed), count, image_size)
    batch = synthetic.render_codes(model, code, background, image_size)
    batch = {k: jnp.asarray(synthetic.decode_srgb8(synthetic.encode_srgb8(np.asarray(v))))
             if k == "image" else v for k, v in batch.items()}
    return code, batch


def _shrunk(code, factor):
    return code.replace(identity=code.identity * factor, expression=code.expression * factor,
                        reflectance=code.reflectance * factor)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_training_objective_is_lowest_at_the_truth(name, builtin_model):
    """loss(truth) < loss(identity, expression, reflectance x 0.5) < loss(mean face), with
    pose and light at the truth, on 8-bit renders of the config's image size (the builtin
    model's faces: a config trained on another model's faces uses the same weights)."""
    import importlib

    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    weights = losses.LossWeights.from_config(config.loss)
    size = min(config.image_size, 64)  # the terms are resolution-independent
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
    decoder = Decoder(face_model=builtin_model, camera=camera)
    truth, batch = _faces(builtin_model, size)
    trained = train.photo_decoder(config, decoder)
    if config.data.source in sources.DETECTED_SOURCES:
        # Photo configs score a detector's landmarks as its calibrated table defines
        # them: the batch carries what that detector reports for the true faces.
        assert trained.detector is not None
        out = decoder.render(truth)
        detected = trained.detector.points(camera, truth, out.screen_vertices,
                                           batch["landmarks"])
        batch = dict(batch, landmarks=detected)
        landmark = lambda d: float(losses.objective(  # noqa: E731
            truth, batch, d, weights)[1]["landmark"])
        # The truth is where the detector-scored landmark term vanishes; scored as the
        # model's own vertices the same detections would pull it elsewhere.
        assert landmark(trained) < 1e-3 * landmark(decoder), (landmark(trained),
                                                              landmark(decoder))
    else:
        assert trained is decoder
    totals = [float(losses.objective(_shrunk(truth, s), batch, trained, weights)[0])
              for s in (1.0, 0.5, 0.0)]
    assert totals[0] < totals[1] < totals[2], totals
    # By a clear margin, not a tie.
    assert totals[1] - totals[0] > 0.1 * (totals[2] - totals[0]), totals


def test_fitting_objective_is_lowest_at_the_truth(builtin_model):
    size = 128
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
    truth, batch = _faces(builtin_model, size, seed=8)
    objective = jax.jit(fitting.objective)
    for images in (None, batch["image"]):  # the landmark stages and the appearance stage
        totals = [float(objective(builtin_model, camera, _shrunk(truth, s), images,
                                  batch["landmarks"], batch["landmark_weight"]))
                  for s in (1.0, 0.5, 0.0)]
        assert totals[0] < totals[1] < totals[2], (images is None, totals)


def test_derived_weights_follow_the_noise_model():
    noise = losses.NoiseModel()
    prior = noise.prior_weight(1.92)
    assert prior == pytest.approx(1.92 * 0.05 / 180.0)
    assert noise.landmark_weight(1.92) == pytest.approx(prior * 68 / 0.015**2)
    # Halving the landmark noise quadruples its weight; twice the patches halves the prior.
    assert losses.NoiseModel(landmark_sigma=0.0075).landmark_weight(1.92) == pytest.approx(
        4 * noise.landmark_weight(1.92))
    assert losses.NoiseModel(independent_patches=180.0).prior_weight(1.92) == pytest.approx(
        prior / 2)
    defaults = losses.LossWeights()
    assert (defaults.prior_identity, defaults.landmark) == (losses.PRIOR_WEIGHT,
                                                             losses.LANDMARK_WEIGHT)
