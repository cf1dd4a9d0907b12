"""Training: losses on analytic cases, data-parallel equivalence, configs (kill-and-resume:
test_multiprocess.py)."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

from mofa import losses, metrics, networks, train
from mofa.code import FaceCode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.configs import quickstart  # noqa: E402


def tiny_config(**overrides):
    config = quickstart.get_config()
    config.image_size = 32
    config.encoder.width = 8
    config.batch_size = 8
    config.num_steps = 4
    config.log_every = 1
    config.image_every = 1000
    config.checkpoint_every = 2
    config.eval_batches = 1
    config.eval_batch_size = 8
    config.progress = False
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


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
    # Uniform heatmaps point at the image centre; the map is differentiable.
    np.testing.assert_allclose(networks.soft_argmax(jnp.zeros((2, h, w, 5)), size),
                               size / 2, atol=1e-4)
    check_grads(lambda x: networks.soft_argmax(x, size),
                              (jax.random.normal(jax.random.key(0), (2, h, w, 3)),),
                              order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_augmentation_scales_photo_and_light_together(builtin_model):
    """The jittered photo is the rendering of the jittered light: exposure stays explainable."""
    from mofa.data import synthetic

    size = 32
    code, background = synthetic.random_inputs(builtin_model, jax.random.key(3), 4, size)
    batch = synthetic.render_codes(builtin_model, code, background, size)
    augmented = train._augment(batch, jax.random.key(5))
    gain = augmented["code/illumination"] / batch["code/illumination"]
    assert float(jnp.std(gain[:, 0, 0])) > 0.01  # the jitter differs per image
    relit = synthetic.render_codes(
        builtin_model, code.replace(illumination=augmented["code/illumination"]),
        background * gain[:, 0][:, None, None, :], size)
    unclipped = np.asarray(batch["image"] < 0.8)
    np.testing.assert_allclose(np.asarray(relit["image"])[unclipped],
                               np.asarray(augmented["image"])[unclipped], atol=1e-4)
    assert not np.allclose(augmented["image"], batch["image"], atol=1e-3)
    for key in ("landmarks", "code/identity", "code/rotation"):
        np.testing.assert_array_equal(augmented[key], batch[key])


# --- data parallel ------------------------------------------------------------


def test_data_parallel_step_equals_single_device():
    assert jax.device_count() == 8
    config = tiny_config()
    decoder = train.make_decoder(config)
    weights = train.LossWeights.from_config(config.loss)
    from mofa.data import sources

    batch = sources.make_source(config, decoder.face_model).batch(0, 8)
    key = jax.random.key(5)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                             devices=devices)
        replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        state = jax.device_put(train.create_state(config, decoder.face_model, jax.random.key(0)),
                               replicated)
        step = jax.jit(functools.partial(train.train_step, weights=weights),
                       out_shardings=(replicated, replicated))
        new_state, values = step(state, jax.device_put(batch, sharded), key,
                                 jax.device_put(decoder, replicated))
        results.append((jax.device_get(new_state.params), jax.device_get(new_state.batch_stats),
                        jax.device_get(values)))
    (p1, s1, m1), (p8, s8, m8) = results
    assert m1["loss"] == pytest.approx(float(m8["loss"]), rel=1e-4)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p8, s8))):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5)


# --- end to end ---------------------------------------------------------------


def test_quickstart_trains_end_to_end_and_writes_outputs(tmp_path):
    config = tiny_config(num_steps=3, image_every=3)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(results["vertex_error_mm_mean"]) and results["landmark_nme"] > 0
    log = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert os.path.exists(tmp_path / "images" / "step_0000003.png")
    assert os.path.exists(tmp_path / "eval.json")
    assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "3"
    restored_config, state, _, step = train.load_trained(str(tmp_path))
    assert step == 3 and restored_config.image_size == config.image_size
    assert int(state.step) == 3
    with pytest.raises(FileNotFoundError, match="not a mofa training workdir"):
        train.load_trained(str(tmp_path / "images"))


def test_non_finite_loss_stops_with_step_and_terms(tmp_path):
    config = tiny_config(num_steps=2)
    config.loss.photometric = float("nan")
    with pytest.raises(FloatingPointError, match=r"step 0: .*loss"):
        train.train_and_evaluate(config, str(tmp_path))


def test_synthetic_supervised_config_takes_a_step(tmp_path):
    from experiments.configs import synthetic_supervised

    config = synthetic_supervised.get_config()
    config.data.source = "synthetic"  # the tfds variant is covered by the data tests
    for key, value in tiny_config().items():
        if key not in ("loss", "data"):
            config[key] = value
    config.num_steps = 1
    results = train.train_and_evaluate(config, str(tmp_path))
    log = [r for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
    assert log[0]["loss/model_space"] > 0 and np.isfinite(results["pose_error_deg"])


def _tiny_variant(module, **overrides):
    config = module.get_config()
    for key, value in tiny_config(**overrides).items():
        if key not in ("loss", "data"):
            config[key] = value
    config.eval_before_training = False
    return config


def test_mofa_folder_config_takes_a_step_on_photos(builtin_model, tmp_path):
    from PIL import Image

    from experiments.configs import mofa_folder
    from mofa import images
    from mofa.data import synthetic

    photos = tmp_path / "photos"
    photos.mkdir()
    batch = next(synthetic.synthetic_batches(builtin_model, 160, 8, jax.random.key(3)))
    for i, image in enumerate(images.to_uint8(images.linear_to_srgb(batch["image"]))):
        Image.fromarray(image).save(photos / f"face{i}.jpg", quality=92)
    (photos / "broken.jpg").write_text("not a photo")
    config = _tiny_variant(mofa_folder, num_steps=1)
    config.data.path = str(photos)
    results = train.train_and_evaluate(config, str(tmp_path / "work"))
    assert np.isfinite(results["photometric_error"])
    log = metrics.read_jsonl(str(tmp_path / "work" / "metrics.jsonl"))
    assert log[0]["step"] == 1 and np.isfinite(log[0]["loss/landmark"])


def test_mofa_celeba_config_takes_a_step_on_mock_tfds(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from experiments.configs import mofa_celeba
    from mofa.data import faces

    class FixedLandmarks:
        """Mock CelebA images are noise: stand in for the detector with a fixed face."""

        cache_tag = "fixed"

        def __init__(self, **_):
            pass

        @staticmethod
        def tag(*_):
            return "fixed"

        def __call__(self, image):
            h, w = image.shape[:2]
            unit = np.random.default_rng(0).uniform(-0.3, 0.3, (68, 2))
            return [(unit * min(h, w) + [w / 2, h / 2]).astype(np.float32)]

    monkeypatch.setattr(faces, "MediaPipeDetector", FixedLandmarks)
    config = _tiny_variant(mofa_celeba, num_steps=1)
    with tfds.testing.mock_data(num_examples=16):
        results = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(results["photometric_error"])


def test_code_fields_are_the_dataclass_fields_and_round_trip_through_a_batch(builtin_model):
    import dataclasses

    from mofa.code import FIELDS, random_code

    assert FIELDS == tuple(f.name for f in dataclasses.fields(FaceCode))
    code = random_code(builtin_model, jax.random.key(0), (2,))
    batch = {f"code/{k}": v for k, v in code.as_dict().items()}
    again = FaceCode.from_batch(batch)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(again, field), getattr(code, field))


def test_every_config_names_a_task_the_launcher_runs():
    import importlib
    import pathlib

    from experiments import main

    configs = sorted(p.stem for p in (pathlib.Path(REPO) / "experiments" / "configs").glob("*.py")
                     if p.stem != "__init__")
    tasks = {name: importlib.import_module(f"experiments.configs.{name}").get_config().task
             for name in configs}
    assert tasks["quickstart"] == "mofa" and tasks["bootstrap"] == "bootstrap"
    assert tasks["detail_sfs"] == "detail"
    for name, task in tasks.items():
        assert callable(main.TASKS[task]()), name
