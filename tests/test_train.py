"""Training: the augmentation, data-parallel equivalence, every config end to end
(kill-and-resume: test_multiprocess.py; the objective: test_losses.py)."""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mofa import losses, metric_log, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from conftest import tiny_config  # noqa: E402


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
    weights = losses.LossWeights.from_config(config.loss)
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


@pytest.mark.slow
def test_quickstart_trains_end_to_end_and_writes_outputs(tmp_path):
    config = tiny_config(num_steps=3, image_every=3, **{"encoder.fit_steps": 4})
    results = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(results["vertex_error_mm_mean"]) and results["landmark_nme"] > 0
    log = metric_log.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    for name in ("step_0000003.png", "test_encoder.png", "test_fitted.png"):
        assert os.path.exists(tmp_path / "images" / name)
    # eval.json: encoder and test-time fit; eval_encoder.json: the encoder alone, which
    # also ends the learning curves.
    encoder_only = json.loads((tmp_path / "eval_encoder.json").read_text())
    assert json.loads((tmp_path / "eval.json").read_text()) == results
    assert results["photometric_error"] != encoder_only["photometric_error"]
    final = [r for r in log if "eval/landmark_nme" in r][-1]
    assert final["step"] == 3 and final["eval/landmark_nme"] == pytest.approx(
        encoder_only["landmark_nme"])
    assert [r for r in log if "eval_fitted/landmark_nme" in r][-1][
        "eval_fitted/landmark_nme"] == pytest.approx(results["landmark_nme"])
    assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "3"
    restored_config, state, _, step = train.load_trained(str(tmp_path))
    assert step == 3 and restored_config.image_size == config.image_size
    assert int(state.step) == 3
    with pytest.raises(FileNotFoundError, match="not a mofa training workdir"):
        train.load_trained(str(tmp_path / "images"))


def test_non_finite_loss_stops_with_step_and_terms(tmp_path):
    # A corrupt photo (NaN pixels) in the end-to-end test's config: the training program
    # is that test's (loaded from the persistent compilation cache, not compiled again).
    from mofa.data import sources

    config = tiny_config(num_steps=3, image_every=3, **{"encoder.fit_steps": 4})
    source = sources.make_source(config, train.make_decoder(config).face_model)

    class NanPhotos:
        def batch(self, step, batch_size, rows=slice(None)):
            batch = dict(source.batch(step, batch_size, rows))
            batch["image"] = np.asarray(batch["image"]).copy()
            batch["image"][0] = np.nan
            return batch

    with pytest.raises(FloatingPointError, match=r"step 0: .*loss.*photometric"):
        train.train_and_evaluate(config, str(tmp_path), source=NanPhotos())
    assert not (tmp_path / "checkpoints" / "1").exists()  # nothing saved past the bad step


def test_synthetic_supervised_config_takes_a_step(tmp_path):
    from experiments.configs import synthetic_supervised

    config = synthetic_supervised.get_config()
    config.data.source = "synthetic"  # the tfds variant is covered by the data tests
    for key, value in tiny_config().items():
        if key not in ("loss", "data"):
            config[key] = value
    config.num_steps = 1
    results = train.train_and_evaluate(config, str(tmp_path))
    log = [r for r in metric_log.read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
    assert log[0]["loss/model_space"] > 0 and np.isfinite(results["pose_error_deg"])


def _tiny_variant(module, **overrides):
    config = module.get_config()
    for key, value in tiny_config(**overrides).items():
        if key not in ("loss", "data"):
            config[key] = value
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
    log = metric_log.read_jsonl(str(tmp_path / "work" / "metrics.jsonl"))
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
