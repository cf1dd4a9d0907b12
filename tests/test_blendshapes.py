"""Blendshape expression spaces (`FaceModel.expression_bounds`, ICT's ARKit set): weights
stay in [0, 1] in fitting, the encoder head and sampling, under a sparse prior."""

import jax
import jax.numpy as jnp
import numpy as np

from mofa import facemodel, fitting, losses, networks, render
from mofa.code import DEFAULT_FOV_DEGREES, FaceCode, random_code
from mofa.data import synthetic
from tests import fixtures_facemodels as fx


def _blendshape_model():
    """The synthetic test model with its expression fields read as blendshapes."""
    return fx.synthetic_model().replace(expression_bounds=(0.0, 1.0))


def test_bounds_are_validated_and_saved(tmp_path):
    model = _blendshape_model()
    path = str(tmp_path / "m.npz")
    facemodel.save_npz(model, path)
    again = facemodel.load_npz(path)
    assert again.expression_bounds == (0.0, 1.0) and again.blendshapes
    assert not fx.synthetic_model().blendshapes
    try:
        model.replace(expression_bounds=(1.0, 0.0)).validate("x")
    except ValueError as err:
        assert "expression_bounds" in str(err)
    else:
        raise AssertionError("reversed bounds accepted")


def test_sparse_prior_is_the_exponential_nll():
    code = FaceCode.neutral(_blendshape_model(), (2,))
    weights = jnp.array([[0.0] * 7 + [0.5], [0.2] * 8])[:, :code.expression.shape[-1]]
    code = code.replace(expression=jnp.zeros_like(code.expression).at[:, :8].set(weights))
    prior = losses.statistical_prior(code, (0.0, 1.0))
    expected = np.mean(2.0 * np.asarray(weights).sum(-1) / losses.BLENDSHAPE_PRIOR_MEAN)
    np.testing.assert_allclose(prior["prior_expression"], expected, rtol=1e-6)
    # The N(0, 1) prior of the same code is the squared norm, not this.
    assert not np.isclose(losses.statistical_prior(code)["prior_expression"], expected)
    # Its gradient does not vanish at zero weight: it keeps pulling unused shapes to 0.
    grad = jax.grad(lambda e: losses.statistical_prior(code.replace(expression=e), (0.0, 1.0))[
        "prior_expression"])(code.expression)
    np.testing.assert_allclose(grad, 2.0 / losses.BLENDSHAPE_PRIOR_MEAN / 2, rtol=1e-6)


def test_head_and_sampling_stay_in_range():
    model = _blendshape_model()
    raw = 10.0 * jax.random.normal(jax.random.key(0), (64, networks.code_size(model)))
    code = networks.decode_head(raw, model)
    assert float(code.expression.min()) >= 0.0 and float(code.expression.max()) <= 1.0
    rest = networks.decode_head(jnp.zeros((1, networks.code_size(model))), model).expression
    assert float(rest.max()) < 0.06  # zero outputs are a near-neutral face
    sample = random_code(model, jax.random.key(1), (256,)).expression
    assert float(sample.min()) >= 0.0 and float(sample.max()) <= 1.0
    active = np.mean(np.asarray(sample) > 0)
    assert 0.05 < active < 0.15, active  # sparse: ~10% of the blendshapes per face
    assert float(FaceCode.neutral(model, (1,)).expression.max()) == 0.0


def test_fit_keeps_weights_in_range_where_an_unbounded_fit_goes_negative():
    model = _blendshape_model()
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, 128, 128)
    truth = jax.jit(synthetic.random_face_codes, static_argnums=2)(model, jax.random.key(4), 8)
    truth = truth.replace(identity=jnp.zeros_like(truth.identity))
    lm = jax.jit(fitting.project_landmarks)(model, camera, truth)
    weight = jnp.ones(lm.shape[:2])
    fitted = fitting.fit_landmarks(model, camera, lm, weight, steps=300, fixed=("identity",))
    e = np.asarray(fitted.expression)
    assert e.min() >= 0.0 and e.max() <= 1.0
    # Unbounded, the same fit wanders into negative weights to explain the landmarks.
    free = fitting.fit_landmarks(model.replace(expression_bounds=()), camera, lm, weight,
                                 steps=300, fixed=("identity",))
    assert float(np.asarray(free.expression).min()) < -0.05
    # Bounded, the weights stay near the sparse truth (on this fixture the landmarks
    # barely see its small expression fields, so about as near as the neutral face);
    # unbounded, they are off by many times that.
    error = lambda c: np.abs(np.asarray(c.expression - truth.expression)).mean()  # noqa: E731
    assert error(fitted) < 0.3 * error(free), (error(fitted), error(free))
