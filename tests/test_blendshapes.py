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


def test_ict_weights_as_arkit_and_a_live_link_csv(ict_dir, tmp_path):
    """ICT's 53 blendshapes give the 52 ARKit weights (sided names renamed, the split
    browInnerUp and cheekPuff averaged, tongueOut not modelled), and a video's weights
    and head pose land in the columns Live Link Face's CSV has."""
    import csv

    from mofa import export

    names = facemodel.load(f"ict:{ict_dir}").expression_names
    rng = np.random.default_rng(0)
    weights = rng.uniform(0, 1, (5, len(names)))
    arkit, missing = export.arkit_weights(names, weights)
    assert missing == ["tongueOut"] and arkit.shape == (5, 52)
    column = {name: j for j, name in enumerate(export.ARKIT_BLENDSHAPES)}
    own = {name: k for k, name in enumerate(names)}
    np.testing.assert_allclose(arkit[:, column["eyeBlinkLeft"]], weights[:, own["eyeBlink_L"]])
    np.testing.assert_allclose(arkit[:, column["jawOpen"]], weights[:, own["jawOpen"]])
    np.testing.assert_allclose(arkit[:, column["browInnerUp"]], 0.5 * (
        weights[:, own["browInnerUp_L"]] + weights[:, own["browInnerUp_R"]]))
    # Every ICT shape is used: only the split halves have no ARKit column of their own.
    used = {n for n in names if n.replace("_L", "Left").replace("_R", "Right")
            in export.ARKIT_BLENDSHAPES}
    assert set(names) - used == {"browInnerUp_L", "browInnerUp_R", "cheekPuff_L", "cheekPuff_R"}

    rotation = np.radians([[5.0, -20.0, 3.0]] * 5)  # pitch, yaw, roll
    path = tmp_path / "clip_livelink.csv"
    export.write_live_link_csv(str(path), names, weights, rotation, fps=30.0,
                               frames=[0, 1, 2, 29, 61])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and len(rows[0]) == 2 + 52 + 9
    assert [r["Timecode"] for r in rows] == ["00:00:00:00.000", "00:00:00:01.000",
                                             "00:00:00:02.000", "00:00:00:29.000",
                                             "00:00:02:01.000"]
    assert {r["BlendShapeCount"] for r in rows} == {"61"}
    np.testing.assert_allclose([float(r["MouthSmileLeft"]) for r in rows],
                               weights[:, own["mouthSmile_L"]], atol=1e-6)
    np.testing.assert_allclose(float(rows[0]["HeadYaw"]), np.radians(-20.0), atol=1e-6)
    np.testing.assert_allclose(float(rows[0]["HeadPitch"]), np.radians(5.0), atol=1e-6)
    assert float(rows[0]["TongueOut"]) == 0.0
