"""Coarse-to-fine detail: normals from depth, the wrinkle generator, FineNet and its losses."""

import functools
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from mofa import detail, export, trainer
from mofa.render import Camera

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.configs import detail_sfs, detail_sfs_photos, detail_supervised  # noqa: E402

SIZE = 32


def _rays(camera: Camera) -> np.ndarray:
    """(H, W, 3) pixel-centre ray directions with z = -1 (so depth = ray parameter)."""
    f = float(camera.focal)
    cx, cy = np.asarray(camera.principal_point)
    v, u = np.meshgrid(np.arange(camera.height) + 0.5, np.arange(camera.width) + 0.5,
                       indexing="ij")
    return np.stack([(u - cx) / f, -(v - cy) / f, -np.ones_like(u)], -1)


def test_normals_of_a_tilted_plane_are_its_normal():
    camera = Camera.from_fov(30.0, 16, 20)
    rays = _rays(camera)
    normal = np.array([np.sin(0.4) * np.cos(0.3), np.sin(0.3), np.cos(0.4) * np.cos(0.3)])
    # Plane n.p = n.p0 through p0 = (0, 0, -500): depth t solves n.(t r) = n.p0.
    depth = (normal @ np.array([0.0, 0.0, -500.0])) / (rays @ normal)
    got = np.asarray(detail.normals_from_depth(jnp.asarray(depth[None], jnp.float32), camera))[0]
    np.testing.assert_allclose(got, np.broadcast_to(normal, got.shape), atol=2e-4)


def test_normals_of_a_sphere_are_radial_and_zero_off_the_mask():
    camera = Camera.from_fov(20.0, 48, 48)
    centre, radius = np.array([5.0, -3.0, -400.0]), 50.0
    rays = _rays(camera)
    # |t r - c|^2 = R^2: the nearer root.
    a, b = np.sum(rays * rays, -1), -2.0 * rays @ centre
    disc = b * b - 4.0 * a * (centre @ centre - radius**2)
    hit = disc > 0
    depth = np.where(hit, (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a), 0.0)
    mask = hit.astype(np.float32)
    got = np.asarray(detail.normals_from_depth(jnp.asarray(depth[None], jnp.float32), camera,
                                               jnp.asarray(mask[None])))[0]
    expected = (depth[..., None] * rays - centre) / radius
    # Away from the grazing rim the finite differences follow the sphere closely
    # (one-sided next to the silhouette, so a little less there).
    interior = hit & (expected[..., 2] > 0.5)
    angle = np.degrees(np.arccos(np.clip(np.sum(got * expected, -1), -1.0, 1.0)))
    assert interior.sum() > 200
    assert np.mean(angle[interior]) < 0.5 and np.max(angle[interior]) < 2.5
    assert np.all(got[~hit] == 0.0)
    np.testing.assert_allclose(np.linalg.norm(got[hit], axis=-1), 1.0, atol=1e-5)


def test_normals_from_depth_gradients():
    camera = Camera.from_fov(30.0, 6, 6)
    depth = 100.0 + jax.random.uniform(jax.random.key(0), (1, 6, 6))
    mask = jnp.ones((1, 6, 6)).at[0, 0, :3].set(0.0)
    fn = lambda d: detail.normals_from_depth(d, camera, mask)  # noqa: E731
    check_grads(fn, (depth,), order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_shading_ratio_ignores_a_smooth_albedo_and_the_light_colour():
    y, x = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    shading = 0.5 + 0.05 * np.sin(1.3 * x) * np.cos(0.7 * y)  # fine detail
    weight = jnp.ones((1, 16, 16))
    image = jnp.asarray(np.repeat(shading[None, ..., None], 3, -1), jnp.float32)
    ratio = detail.shading_ratio(image, weight)
    assert float(jnp.max(jnp.abs(ratio))) > 0.05  # the detail is there ...
    tinted = image * jnp.array([0.9, 0.6, 0.4])  # ... under any albedo colour or light
    np.testing.assert_allclose(detail.shading_ratio(tinted, weight), ratio, atol=2e-3)
    flat = jnp.full((1, 16, 16, 3), 0.3)
    np.testing.assert_allclose(detail.shading_ratio(flat, weight), 0.0, atol=1e-6)
    # Off the weight's support it is 0, and masked pixels do not enter the local mean.
    half = weight.at[:, :, 8:].set(0.0)
    spoiled = image.at[:, :, 8:].set(5.0)
    masked = detail.shading_ratio(spoiled, half)
    assert np.all(np.asarray(masked)[:, :, 8:] == 0.0)
    np.testing.assert_allclose(masked[:, :, :8], detail.shading_ratio(image, half)[:, :, :8],
                               atol=1e-6)


def test_skin_weight_leaves_out_brows_eyes_and_lips(batch):
    skin = np.asarray(detail.skin_weight(batch["landmarks"], batch["mask"]))
    landmarks = np.asarray(batch["landmarks"])
    mask = np.asarray(batch["mask"])
    for i in range(len(skin)):
        at = lambda k: skin[i, int(landmarks[i, k, 1]), int(landmarks[i, k, 0])]  # noqa: E731
        for k in (19, 24, 37, 44, 51, 57, 62):  # brows, eyelids, lips
            assert at(k) < 0.2, k
        assert at(30) > 0.8  # the nose tip is skin
    assert np.all(skin[mask == 0] == 0) and np.all(skin <= mask + 1e-6)


def test_depth_errors_separate_distance_from_shape():
    camera = Camera.from_fov(30.0, 8, 8)
    truth, mask = jnp.full((2, 8, 8), 500.0), jnp.ones((2, 8, 8))
    moved = detail.depth_normal_errors(truth + 5.0, truth, mask, camera)
    assert float(moved["depth_mae_mm"]) == pytest.approx(5.0)
    assert float(moved["shape_depth_mae_mm"]) == pytest.approx(0.0, abs=1e-4)
    assert float(moved["normal_deg"]) < 0.1  # a fronto-parallel plane stays one
    bumped = detail.depth_normal_errors(truth.at[:, 4, 4].add(2.0) + 5.0, truth, mask, camera)
    # Off the bump |2/64|, on it |2 - 2/64|: the mean offset 5 + 2/64 is removed.
    assert float(bumped["shape_depth_mae_mm"]) == pytest.approx(4.0 * 63 / 64 / 64, rel=1e-3)
    assert float(bumped["normal_deg"]) > 0.1


@pytest.fixture(scope="module")
def batch(builtin_model):
    return detail.detailed_batch(builtin_model, jax.random.key(3), 2, SIZE)


def test_detail_lies_inside_the_mask_and_changes_the_shading(batch):
    camera = detail.camera_for(SIZE)
    mask = np.asarray(batch["mask"]) > 0
    added = np.asarray(batch["depth"] - batch["coarse_depth"])
    assert np.all(added[~mask] == 0.0)
    assert 0.2 < np.abs(added[mask]).max() < 4.0  # mm: wrinkle scale
    plain = detail.shade(batch["albedo"], detail.normals_from_depth(
        batch["coarse_depth"], camera, batch["mask"]), batch["code"].illumination)
    change = np.abs(np.asarray(batch["image"] - jnp.clip(plain, 0.0, 1.0))).max(-1)
    assert change[mask].max() > 1e-3


def _state(tx=optax.adam(1e-3), width=4):
    net = detail.FineNet(width=width, depth=1)  # shallow: quick to compile
    params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, detail.NUM_FEATURES)),
                      jnp.zeros((1, SIZE, SIZE)))["params"]
    return trainer.TrainState.create(apply_fn=net.apply, params=params, batch_stats={},
                                   tx=tx)


def test_untrained_finenet_returns_the_coarse_depth(batch):
    state = _state()
    out = detail.refine(state.apply_fn, state.params, batch["image"], batch["coarse_depth"],
                        batch["mask"], detail.camera_for(SIZE))
    np.testing.assert_array_equal(np.asarray(out["depth"]), np.asarray(batch["coarse_depth"]))
    assert out["normals"].shape == batch["image"].shape


@pytest.mark.parametrize("phase", ["supervised", "sfs"])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(builtin_model, batch, phase):
    camera = detail.camera_for(SIZE)
    config = (detail_supervised if phase == "supervised" else detail_sfs).get_config()
    weights = detail.DetailWeights.from_config(config.loss)
    # SfS starts from a perturbed depth, so shading has something to correct.
    coarse = (batch["coarse_depth"] if phase == "supervised"
              else batch["depth"] + 0.5 * batch["detail"])
    inputs = {"image": batch["image"], "coarse_depth": coarse, "mask": batch["mask"],
              "albedo": batch["albedo"], "illumination": batch["code"].illumination,
              "depth": batch["depth"], "landmarks": batch["landmarks"]}
    step = jax.jit(functools.partial(detail.train_step, weights=weights))
    # Plain SGD with a small step: descent is then guaranteed on a smooth loss (the
    # SfS step is inversely proportional to its loss scale).
    state = _state(optax.sgd(3e-3 if phase == "supervised" else 1.0 / weights.photometric))
    losses_ = []
    for _ in range(3):
        state, metrics = step(state, inputs, camera)
        losses_.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses_))
    assert losses_[2] < losses_[1] < losses_[0]


@pytest.mark.parametrize("phase", ["supervised", "sfs"])
def test_detail_loss_gradients(batch, phase):
    """Finite differences of each phase's whole loss with respect to the depth residual."""
    camera = detail.camera_for(SIZE)
    config = (detail_supervised if phase == "supervised" else detail_sfs).get_config()
    weights = detail.DetailWeights(**{name: 1.0 for name in config.loss})  # every term on
    inputs = {"image": batch["image"], "coarse_depth": batch["coarse_depth"],
              "mask": batch["mask"], "albedo": batch["albedo"], "depth": batch["depth"],
              "illumination": batch["code"].illumination, "landmarks": batch["landmarks"]}
    # A "network" whose output is its parameter: the residual itself.
    apply_fn = lambda variables, features, mask: variables["params"]["residual"]  # noqa: E731
    loss = lambda residual: detail.detail_losses(  # noqa: E731
        {"residual": residual}, apply_fn, inputs, camera, weights)[0]
    residual = 0.3 * jax.random.normal(jax.random.key(5), batch["mask"].shape) * batch["mask"]
    check_grads(loss, (residual,), order=1, modes=("rev",), eps=1e-2, atol=5e-2, rtol=5e-2)


def test_detail_mesh_exports_one_vertex_per_meshed_pixel(tmp_path, batch):
    trimesh = pytest.importorskip("trimesh")
    camera = detail.camera_for(SIZE)
    vertices, triangles = detail.detail_mesh(batch["depth"][0], batch["mask"][0], camera)
    inside = np.asarray(batch["mask"][0]) > 0.5
    # Every pixel that is a corner of a 2x2 block inside the mask is one vertex.
    full = inside[:-1, :-1] & inside[:-1, 1:] & inside[1:, :-1] & inside[1:, 1:]
    corners = np.zeros_like(inside)
    corners[:-1, :-1] |= full
    corners[:-1, 1:] |= full
    corners[1:, :-1] |= full
    corners[1:, 1:] |= full
    assert len(vertices) == corners.sum() > 0.9 * inside.sum()
    assert len(triangles) == 2 * full.sum()
    path = tmp_path / "detail.obj"
    export.write_obj(str(path), vertices, triangles)
    mesh = trimesh.load(str(path), process=False)
    assert len(mesh.vertices) == len(vertices)
    assert len(mesh.faces) == len(triangles) > 0
    # Wound towards the camera: face normals have +z (the camera looks down -z).
    assert np.mean(mesh.face_normals[:, 2] > 0) > 0.9


@pytest.mark.slow
def test_train_detail_runs_both_phases_and_resumes(tmp_path):
    def tiny(module, **extra):
        config = module.get_config()
        # Batches of 8: one face per (fake CPU) device.
        config.image_size, config.batch_size, config.num_steps = SIZE, 8, 2
        config.fine.width, config.fine.depth = 4, 1
        config.log_every, config.checkpoint_every = 1, 1
        config.eval_batches, config.eval_batch_size = 1, 2
        for key, value in extra.items():
            config.detail[key] = value
        return config

    first = str(tmp_path / "supervised")
    results = detail.train_detail(tiny(detail_supervised), first)
    assert results["coarse/depth_mae_mm"] > 0
    assert set(results) >= {"fine/depth_mae_mm", "fine/normal_deg"}
    # A run stopped after step 2's checkpoint resumes to the very FineNet of step 3.
    _, finished, _ = detail.load_detail(first)
    first_results = dict(results)
    shutil.rmtree(os.path.join(first, "checkpoints", "2"))
    config = tiny(detail_supervised)
    config.num_steps = 2
    assert detail.train_detail(config, first) == first_results
    _, resumed, step = detail.load_detail(first)
    assert step == 2
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7),
                 resumed.params, finished.params)
    second = str(tmp_path / "sfs")
    config = tiny(detail_sfs, init_workdir=first)
    config.num_steps, config.eval_batches = 1, 0
    assert detail.train_detail(config, second) == {}
    _, state, step = detail.load_detail(second)
    assert step == 1
    with pytest.raises(FileNotFoundError, match="not a detail workdir"):
        detail.load_detail(str(tmp_path))


class _CountingReconstructor:
    """Stands in for `inference.Reconstructor`: a code whose rotation encodes the crop."""

    def __init__(self, model):
        self.model, self.faces = model, 0

    def codes(self, crops):
        from mofa.code import FaceCode

        self.faces += len(crops)
        code = FaceCode.neutral(self.model, (len(crops),))
        marks = jnp.asarray([[float(c["image"].mean()), 0.0, 0.0] for c in crops])
        return jax.tree.map(np.asarray, code.replace(rotation=marks))


def test_coarse_codes_are_estimated_once_per_face_and_kept(builtin_model, tmp_path):
    images = np.stack([np.full((4, 4, 3), v, np.float32) for v in (0.1, 0.2, 0.1, 0.3)])
    batch = {"image": images, "landmarks": np.zeros((4, 68, 2), np.float32),
             "landmark_weight": np.ones((4, 68), np.float32)}
    path = str(tmp_path / "coarse_codes.npz")
    reconstructor = _CountingReconstructor(builtin_model)
    codes = detail.CoarseCodes(reconstructor, path)(batch)
    assert reconstructor.faces == 3  # the repeated face is estimated once
    np.testing.assert_allclose(codes.rotation[:, 0], [0.1, 0.2, 0.1, 0.3], rtol=1e-6)
    assert codes.identity.shape == (4, builtin_model.num_identity)
    # A new run over the same photos reads them back instead of fitting again ...
    again = _CountingReconstructor(builtin_model)
    restored = detail.CoarseCodes(again, path)(batch)
    assert again.faces == 0
    for field in ("rotation", "translation", "identity", "illumination"):
        np.testing.assert_array_equal(getattr(restored, field), getattr(codes, field))
    # ... unless they were estimated otherwise (say, with more fitting steps).
    changed = _CountingReconstructor(builtin_model)
    detail.CoarseCodes(changed, path, settings="fit_steps=400")(batch)
    assert changed.faces == 3


@pytest.mark.slow
def test_shape_from_shading_on_photos_with_fitted_coarse_codes(builtin_model, tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe==0.10.14 is the default detector")
    from PIL import Image

    from mofa import images
    from mofa.data import synthetic

    photos = tmp_path / "photos"
    photos.mkdir()
    from mofa.data import faces as faces_lib
    faces = next(synthetic.synthetic_batches(builtin_model, 160, 3, jax.random.key(3)))
    detector, found = faces_lib.MediaPipeDetector(max_faces=1), 0
    for i, image in enumerate(images.to_uint8(images.linear_to_srgb(faces["image"]))):
        Image.fromarray(image).save(photos / f"face{i}.png")
        found += len(detector(image))  # a turned synthetic face may go undetected
    assert found >= 2, found
    config = detail_sfs_photos.get_config()
    config.image_size, config.batch_size, config.num_steps = SIZE, 8, 2
    config.fine.width, config.fine.depth = 4, 1
    config.log_every, config.checkpoint_every = 1, 1
    config.eval_batches, config.eval_batch_size = 0, 2
    workdir = tmp_path / "sfs"
    with pytest.raises(ValueError, match="data.path"):
        detail.train_detail(config, str(workdir))
    config.data.path = str(photos)
    config.detail.coarse_fit_steps = 0
    with pytest.raises(ValueError, match="coarse_fit_steps"):
        detail.train_detail(config, str(workdir))
    config.detail.coarse_fit_steps = 6
    config.detail.eval_photos = str(photos)
    results = detail.train_detail(config, str(workdir))
    assert results["photo_faces"] == found
    for key in ("coarse/photo_photometric", "fine/photo_photometric"):
        assert 0.0 < results[key] < 1.0, key
    assert results["fine/photo_depth_change_mm"] > 0.0  # FineNet moved off the coarse depth
    with np.load(workdir / "coarse_codes.npz") as saved:
        assert len(saved["keys"]) == found  # each face fitted once over training and evaluation
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and steps[-1]["loss/shading_detail"] > 0
    assert log[-1]["eval/photo_faces"] == found  # the evaluation is logged too
