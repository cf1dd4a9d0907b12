"""`mofa reconstruct` end to end, and the export formats (mofa.export)."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from PIL import Image

from mofa import (cli, export, facemodel, fitting, images, inference, reconstruct, render,
                  trainer)
from mofa.code import FaceCode, random_code
from mofa.data import synthetic

SIZE = 160  # mediapipe finds the builtin model's renders at this size


@pytest.fixture(scope="module")
def renders(builtin_model):
    """Six rendered faces (uint8 sRGB) with their landmarks, and a 6-frame turning head
    with its landmarks."""
    batch = next(synthetic.synthetic_batches(builtin_model, SIZE, 6, jax.random.key(11)))
    faces = images.to_uint8(images.linear_to_srgb(batch["image"]))
    code = FaceCode.from_batch(batch)
    # Frame t: face 0 turning by 3 degrees a frame (same batch shape: no new compile).
    turning = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), code)
    yaw = jnp.radians(3.0 * jnp.arange(6.0)) - 0.1
    turning = turning.replace(rotation=turning.rotation.at[:, 1].set(yaw))
    background = jnp.broadcast_to(jnp.asarray(batch["image"][:1, :4, :4].mean((1, 2))),
                                  (6, SIZE, SIZE, 3))
    frames = synthetic.render_codes(builtin_model, turning, background, SIZE)
    turning_landmarks = np.asarray(frames["landmarks"])
    frames = images.to_uint8(images.linear_to_srgb(np.asarray(frames["image"])))
    return faces, batch["landmarks"], frames, turning_landmarks


@pytest.mark.slow
# imageio-ffmpeg runs ffmpeg through subprocess (fork + exec at once): harmless here.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_reconstruct_cli_end_to_end(renders, builtin_model, tmp_path, capsys):
    pytest.importorskip("mediapipe", reason="mediapipe==0.10.14 is the default detector")
    imageio = pytest.importorskip("imageio.v3", reason="videos need imageio[ffmpeg]")
    faces, truth, frames, _ = renders
    inputs = tmp_path / "in"
    (inputs / "more").mkdir(parents=True)
    Image.fromarray(faces[0]).save(inputs / "one.jpg", quality=95)
    Image.fromarray(np.concatenate([faces[1], faces[2]], axis=1)).save(
        inputs / "more" / "two.jpg", quality=95)
    Image.fromarray(np.full((SIZE, SIZE, 3), (90, 140, 200), np.uint8)).save(inputs / "flat.png")
    (inputs / "broken.jpg").write_text("not an image\n")
    video = tmp_path / "clip.mp4"
    imageio.imwrite(video, frames, fps=10, codec="libx264", plugin="FFMPEG",
                    macro_block_size=16)
    out = tmp_path / "out"
    status = cli.main(["reconstruct", str(inputs), str(video), "--out", str(out),
                       "--fit-steps", "40", "--image-size", "64", "--batch-size", "2",
                       "--texture-size", "64", "--quiet"])
    assert status == 1  # two inputs were unusable
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "flat.png" in err

    summary = json.loads((out / "summary.json").read_text())
    skipped = {os.path.basename(s["source"]): s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"broken.jpg", "flat.png"}
    assert "not an image" in skipped["broken.jpg"] and "no face" in skipped["flat.png"]
    assert summary["num_faces"] == 3 + 6 and summary["faces_per_second"] > 0

    # Every face of the photos: meshes, texture, codes in original-image pixels.
    # Folder inputs keep their layout below the folder (`more/two.jpg` -> `more/two_face0`).
    shifts = {"one_face0": [(0, 0.0)], "more/two_face0": [(1, 0.0), (2, SIZE)],
              "more/two_face1": [(1, 0.0), (2, SIZE)]}
    outputs = {os.path.relpath(f["output"], out): os.path.relpath(f["source"], inputs)
               for f in summary["faces"]}
    assert outputs == {"one_face0": "one.jpg", "more/two_face0": "more/two.jpg",
                       "more/two_face1": "more/two.jpg"}
    seen_two, photo_errors = set(), []
    for name, candidates in shifts.items():
        folder = out / name
        for file in ("mesh.obj", "mesh.mtl", "texture.png", "mesh.ply", "code.json",
                     "code.npz", "overlay.jpg", "overlay_crop.png", "depth.png",
                     "blendshapes.json", "mesh.glb"):
            assert (folder / file).is_file(), (name, file)
        # overlay.jpg: the photo at its own resolution, shaded where the face is.
        photo = np.asarray(Image.open(inputs / outputs[name]))
        overlay = np.asarray(Image.open(folder / "overlay.jpg"))
        assert overlay.shape == photo.shape
        changed = np.abs(overlay.astype(int) - photo).sum(-1) > 30
        assert 0.1 < changed.mean() < 0.6, changed.mean()
        assert np.asarray(Image.open(folder / "overlay_crop.png")).shape[:2] == (64, 64)
        ply = trimesh.load(folder / "mesh.ply", process=False)
        assert len(ply.vertices) == builtin_model.num_vertices
        colors = np.asarray(ply.visual.vertex_colors)[:, :3]
        assert colors.std() > 1.0 and 60 < colors.mean() < 250  # skin, not a constant
        obj = trimesh.load(folder / "mesh.obj", process=False)
        assert len(obj.vertices) == builtin_model.num_vertices
        assert obj.visual.uv.shape == (builtin_model.num_vertices, 2)
        # trimesh shows the texture and drops `v x y z r g b` colours then: read them here.
        obj_colors = np.array([line.split()[4:7] for line in
                               (folder / "mesh.obj").read_text().splitlines()
                               if line.startswith("v ")], float)
        np.testing.assert_allclose(obj_colors * 255.0, colors, atol=0.6)
        code = json.loads((folder / "code.json").read_text())
        fitted = np.asarray(code["landmarks"])
        detected = np.asarray(code["landmarks_detected"])
        distance = lambda a, b: np.mean(np.linalg.norm(a - b, axis=-1))  # noqa: E731
        # Fitted landmarks come back through the crop transform onto the face, closer to
        # the render's ground truth (shifted where pasted) than the detector's own over
        # the photos' faces (checked after the loop): the fit corrects the detector's
        # bias (its jaw line, its lean toward the average face), which the fit's landmark
        # table models. Per face within 2 px of it: the truth's jaw is the model's fixed
        # vertices, where the fit slides its jaw onto a turned face's silhouette (on one
        # 64 px face 4.7 px against the detector's 4.3; 4.5 against 6.2 on another).
        errors = [distance(fitted, truth[index] + [shift, 0]) for index, shift in candidates]
        best = int(np.argmin(errors))
        index, shift = candidates[best]
        detector_error = distance(detected, truth[index] + [shift, 0])
        assert errors[best] < detector_error + 2.0, (name, errors, detector_error)
        photo_errors.append((errors[best], detector_error))
        if name.startswith("more/two"):
            seen_two.add(best)
        # The expression by name and the head pose, as animation tools read them.
        shapes = json.loads((folder / "blendshapes.json").read_text())
        assert list(shapes["weights"]) == list(builtin_model.expression_names)
        np.testing.assert_allclose(list(shapes["weights"].values()), code["expression"],
                                   atol=1e-6)
        assert shapes["kind"] == "pca_components" and shapes["range"] is None
        np.testing.assert_allclose(
            [shapes["head_pose_degrees"][k] for k in ("pitch", "yaw", "roll")],
            np.degrees(code["rotation"]), atol=1e-4)
        assert np.asarray(code["identity"]).shape == (builtin_model.num_identity,)
        # The rig's base is this face's identity at neutral expression (metres).
        neutral = facemodel.shape(builtin_model, jnp.asarray(code["identity"], jnp.float32),
                                  jnp.zeros(builtin_model.num_expression))
        np.testing.assert_allclose(export.read_glb(str(folder / "mesh.glb"))["positions"][
            export.glb_layout(builtin_model, True).triangles[:, 0]],
            np.asarray(neutral)[np.asarray(builtin_model.triangles)[:, 0]] * 1e-3, atol=1e-6)
        indices = np.asarray(builtin_model.landmark_indices)
        np.testing.assert_allclose(code["landmarks_3d"], ply.vertices[indices], atol=1e-3)
        depth = np.asarray(Image.open(folder / "depth.png"))
        assert depth.dtype == np.uint16 or depth.max() > 255
    assert seen_two == {0, 1}  # both faces of the pair, not one twice
    fitted_mean, detector_mean = np.mean(photo_errors, axis=0)
    assert fitted_mean < detector_mean, photo_errors

    # The video: overlay and per-frame codes with one identity.
    overlay = imageio.imread(out / "clip_overlay.mp4")
    assert overlay.shape[0] == 6 and overlay.shape[1:3] == (SIZE, SIZE)
    codes = np.load(out / "clip_codes.npz")
    assert codes["rotation"].shape == (6, 3) and list(codes["frame"]) == list(range(6))
    np.testing.assert_allclose(codes["identity"], codes["identity"][:1].repeat(6, 0))
    yaw = np.degrees(codes["rotation"][:, 1])
    assert np.all(np.diff(yaw) > 0), yaw  # the head keeps turning the same way
    assert json.loads((out / "clip_codes.json").read_text())["frames"] == 6
    # Its face rig: the clip's identity, expressions and head turn animated at 10 fps.
    rig = export.read_glb(str(out / "clip_track0_mesh.glb"))
    np.testing.assert_allclose(rig["animation"]["times"], np.arange(6) / 10, atol=1e-6)
    np.testing.assert_allclose(rig["animation"]["expression"], codes["expression"], atol=1e-6)
    from scipy.spatial.transform import Rotation

    turned = Rotation.from_quat(rig["animation"]["rotation_quaternion"]).as_matrix()
    np.testing.assert_allclose(turned, render.euler_to_matrix(codes["rotation"]), atol=1e-5)


def test_output_names_never_collide(tmp_path):
    from mofa import reconstruct

    for folder in ("a/x", "b/x", "c"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "IMG_0001.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "img_0001.png")  # differs only in case
    (tmp_path / "c" / "clip.mp4").write_bytes(b"")
    images_, videos, skipped = reconstruct.collect_inputs(
        [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c" / "IMG_0001.jpg"),
         str(tmp_path / "c" / "img_0001.png"), str(tmp_path / "c" / "clip.mp4"),
         str(tmp_path / "missing.jpg")])
    stems = {os.path.relpath(path, tmp_path): stem for path, stem in images_}
    assert stems == {os.path.join("a", "x", "IMG_0001.jpg"): os.path.join("x", "IMG_0001"),
                     os.path.join("b", "x", "IMG_0001.jpg"): os.path.join("x", "IMG_0001-2"),
                     os.path.join("c", "IMG_0001.jpg"): "IMG_0001",
                     os.path.join("c", "img_0001.png"): "img_0001-2"}
    assert [stem for _, stem in videos] == ["clip"]
    assert skipped == [(str(tmp_path / "missing.jpg"), "file not found")]


def test_export_round_trips_through_trimesh(builtin_model, tmp_path):
    vertices = np.asarray(builtin_model.mean_shape)
    colors = np.random.default_rng(0).uniform(0, 1, vertices.shape)
    export.write_ply(tmp_path / "m.ply", vertices, builtin_model.triangles, colors)
    export.write_obj(str(tmp_path / "m.obj"), vertices, builtin_model.triangles,
                     vertex_colors=colors)
    ply = trimesh.load(tmp_path / "m.ply", process=False)
    obj = trimesh.load(tmp_path / "m.obj", process=False)
    for mesh in (ply, obj):
        assert len(mesh.vertices) == len(vertices)
        np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-4)
        np.testing.assert_array_equal(mesh.faces, np.asarray(builtin_model.triangles))
        np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3] / 255.0, colors, atol=0.003)
    # The topology's text is formatted once per topology: another one gets its own.
    flipped = np.asarray(builtin_model.triangles)[:, ::-1]
    export.write_obj(str(tmp_path / "f.obj"), vertices, flipped)
    np.testing.assert_array_equal(trimesh.load(tmp_path / "f.obj", process=False).faces,
                                  flipped)
    depth = np.full((8, 8), 990.0)
    depth[2:6, 2:6] = 980.0
    near, far = export.write_depth_png(str(tmp_path / "d.png"), depth, depth < 995)
    stored = np.asarray(Image.open(tmp_path / "d.png"))
    assert (near, far) == (980.0, 990.0) and stored.max() == 65535 and stored.min() == 1


def test_obj_numbers_print_as_printf_does():
    # The vertex lines are built as bytes in numpy; they must read as "%.5f" / "%.4f".
    rng = np.random.default_rng(3)
    edge = [0.0, -0.0, -1e-6, 9.999996, -99.999996, 0.5, 1e-7, 123456.789, -5.0, 0.015625,
            1.5e10, -2.5e9]  # integer parts of 1-11 digits: one to three 5-digit groups
    for rows in [rng.normal(size=(500, 6)) * scale for scale in (1e-3, 1.0, 80.0, 2e4)] + [
            np.stack([edge, edge[::-1], edge, edge, edge[::-1], edge], 1)]:
        expected = "\n".join("v %.5f %.5f %.5f %.4f %.4f %.4f" % tuple(r) for r in rows)
        assert export._format_fixed("v", rows, (5, 5, 5, 4, 4, 4)) == expected.encode()
    with pytest.raises(ValueError, match="non-finite"):
        export._format_fixed("v", np.array([[0.0, np.nan]]), (5, 5))
    with pytest.raises(ValueError, match="decimals"):
        export._format_fixed("v", np.zeros((1, 2)), (6, 5))
    with pytest.raises(ValueError, match="fixed-point"):
        export._format_fixed("v", np.array([[1.0, -1e15]]), (5, 5))


def test_json_outputs_read_back_as_written_one_member_per_line(tmp_path):
    document = {"source": 'a "quoted" \\ path.png', "crop": {"origin_xy": [1.5, -2.0],
                                                           "note": "x"},
                "empty": {}, "none": None, "weights": {"jawOpen": 0.25, "eyeBlink_L": 1.0},
                "identity": [0.1, -3e-9, 12345.678], "landmarks": [[1.0, 2.0], [3.5, 4.0]]}
    path = str(tmp_path / "doc.json")
    export._write_json(path, document)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert json.loads(text) == document
    lines = text.splitlines()
    # Top-level members and a dict's members each on a line; arrays stay on theirs.
    assert ' "landmarks": [[1.0, 2.0], [3.5, 4.0]]' in lines
    assert '  "jawOpen": 0.25,' in lines and len(lines) == 2 + len(document) + 3 + 3


def test_texture_baking_samples_the_photo_where_uv_matches_the_screen():
    # Two triangles whose UV square lies exactly on the photo's pixels: every texel is
    # its pixel. A uint8 photo is read as /255, as the same photo in floats.
    size = 16
    photo = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    uv = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # v up
    screen = np.array([[0.0, 0.0], [size, 0.0], [size, size], [0.0, size]])
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    layout = export.uv_layout(uv, triangles, size, triangles, 4)
    assert (layout.triangle_id >= 0).all()
    baked = export.bake_texture(photo, screen, np.ones(4, bool), uv, triangles, triangles,
                                size, layout=layout)
    np.testing.assert_allclose(baked, photo / 255.0, atol=1e-5)
    floats = export.bake_texture(photo / 255.0, screen, np.ones(4, bool), uv, triangles,
                                 triangles, size, layout=layout)
    np.testing.assert_allclose(floats, baked, atol=1e-6)
    # Hidden corners: the fallback colours instead of the photo.
    hidden = export.bake_texture(photo, screen, np.zeros(4, bool), uv, triangles, triangles,
                                 size, np.full((4, 3), 0.25), layout=layout)
    np.testing.assert_allclose(hidden, 0.25, atol=1e-6)


def test_reconstruct_with_a_checkpoint(renders, tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe==0.10.14 is the default detector")
    import orbax.checkpoint as ocp

    from experiments.configs import quickstart
    from mofa import train

    # An untrained encoder saved the way training saves it (training itself takes ~30 s).
    config = quickstart.get_config()
    config.update(image_size=32, checkpoint_every=1)
    config.encoder.width = 8
    config.encoder.fit_steps = 3  # the test-time fit: reconstruction's default steps
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.json").write_text(config.to_json_best_effort())
    state = train.create_state(config, train.make_decoder(config).face_model, jax.random.key(0))
    manager = trainer.checkpoint_manager(str(work), config)
    manager.save(1, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    manager.close()
    faces, _, _, _ = renders
    Image.fromarray(faces[3]).save(tmp_path / "face.png")
    out = tmp_path / "out"
    args = ["reconstruct", str(tmp_path / "face.png"), "--checkpoint", str(tmp_path / "work"),
            "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] and summary["fit_steps"] == 3 and summary["image_size"] == 32
    assert (out / "face_face0" / "mesh.ply").is_file()
    # Crops at another size: the fit runs there, the encoder sees them resized to its own.
    assert cli.main(args + ["--image-size", "64"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] and summary["image_size"] == 64
    # Codes only: no meshes, textures or images are drawn or written.
    codes = tmp_path / "codes"
    assert cli.main(args[:-3] + ["--out", str(codes), "--quiet", "--outputs", "code"]) == 0
    assert sorted(os.listdir(codes / "face_face0")) == ["blendshapes.json", "code.json",
                                                        "code.npz"]
    assert json.loads((codes / "summary.json").read_text())["outputs"] == ["code"]
    written = json.loads((codes / "face_face0" / "code.json").read_text())
    assert np.asarray(written["landmarks"]).shape == (68, 2)
    assert cli.main(args + ["--outputs", "code,meshes"]) == 1  # a typo is an error


@pytest.mark.slow
def test_reconstruct_with_detail_writes_the_refined_depth_normals_and_mesh(renders, tmp_path,
                                                                            capsys):
    pytest.importorskip("mediapipe", reason="mediapipe==0.10.14 is the default detector")
    from experiments.configs import detail_supervised
    from mofa import detail

    def finenet(size):  # a FineNet trained for one step, saved the way training saves it
        config = detail_supervised.get_config()
        config.image_size, config.batch_size, config.num_steps = size, 8, 1
        config.fine.width, config.fine.depth = 4, 1
        config.checkpoint_every, config.eval_batches = 1, 0
        workdir = str(tmp_path / f"fine{size}")
        detail.train_detail(config, workdir)
        return workdir

    faces, _, _, _ = renders
    Image.fromarray(faces[4]).save(tmp_path / "face.png")
    out = tmp_path / "out"
    args = ["reconstruct", str(tmp_path / "face.png"), "--out", str(out), "--fit-steps", "5",
            "--image-size", "64", "--texture-size", "32", "--quiet"]
    assert cli.main(args + ["--detail", finenet(64)]) == 0
    folder = out / "face_face0"
    depth = np.asarray(Image.open(folder / "detail_depth.png"))
    assert depth.dtype == np.uint16 and depth.shape == (64, 64) and (depth > 0).sum() > 500
    normals = np.asarray(Image.open(folder / "detail_normals.png"))
    assert normals.shape == (64, 64, 3)
    mesh = trimesh.load(folder / "detail_mesh.obj", process=False)
    # One vertex per masked pixel that lies in a fully masked 2x2 block (isolated
    # border pixels belong to no triangle).
    inside = depth > 0
    full = inside[:-1, :-1] & inside[:-1, 1:] & inside[1:, :-1] & inside[1:, 1:]
    used = np.zeros_like(inside)
    for dy in (0, 1):
        for dx in (0, 1):
            used[dy:dy + 63, dx:dx + 63] |= full
    assert len(mesh.vertices) == used.sum() and len(mesh.faces) == 2 * full.sum()
    # The camera looks down -z: the detailed face lies in front of it, about 1 m away.
    assert -1300 < float(np.median(mesh.vertices[:, 2])) < -700
    capsys.readouterr()
    assert cli.main(args + ["--detail", finenet(32)]) == 1  # sizes must match
    assert "works at 32 px" in capsys.readouterr().err


def test_reconstruction_recovers_shape_better_than_the_placed_mean_face(renders, builtin_model):
    """Detector -> crop -> default fit on rendered faces of known shape: the fitted face
    is closer to the truth than the mean face placed from the landmarks (what the
    calibrated landmarks, the sliding contour and the photometric stage are for)."""
    pytest.importorskip("mediapipe", reason="mediapipe==0.10.14 is the default detector")
    from mofa import facemodel, geometry, render
    from mofa.code import DEFAULT_FOV_DEGREES
    from mofa.data import faces as faces_lib

    model = builtin_model
    batch = next(synthetic.synthetic_batches(model, 224, 8, jax.random.key(23)))
    truth = FaceCode.from_batch(batch)
    photos = images.to_uint8(images.linear_to_srgb(batch["image"]))
    detector = faces_lib.MediaPipeDetector(max_faces=1)
    crops, found = [], []
    for i, photo in enumerate(photos):
        faces = detector(photo)
        if faces:
            crops.append(inference.crop_face(photo, faces[0], 128))
            found.append(i)
    assert len(found) >= 6, found
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, 128, 128)
    mask = np.asarray(model.face_mask) > 0.5
    true_shape = np.asarray(facemodel.shape(model, truth.identity, truth.expression))[found]

    def shape_error(code):
        shapes = np.asarray(facemodel.shape(model, jnp.asarray(code.identity),
                                            jnp.asarray(code.expression)))
        return np.mean([np.linalg.norm(np.asarray(geometry.similarity_align(
            jnp.asarray(a[mask]), jnp.asarray(b[mask]))) - b[mask], axis=-1).mean()
            for a, b in zip(shapes, true_shape)])

    placed = shape_error(inference.Reconstructor(model, camera, fit_steps=0).codes(crops))
    rec = inference.Reconstructor(model, camera)
    assert rec.options.landmark < 0.1  # derived from the calibrated table, not 0.94
    assert rec.options.prior_identity == fitting.MODEL_PRIORS["builtin"]["prior_identity"]
    fitted = shape_error(rec.codes(crops))
    print(f"shape error: placed mean face {placed:.2f} mm, fitted {fitted:.2f} mm")
    assert fitted < 0.8 * placed, (fitted, placed)


def _gltf_validator_report(path):
    """The Khronos glTF validator's issue counts for a file, or a skip reason."""
    import shutil
    import subprocess

    folder = os.environ.get("MOFA_GLTF_VALIDATOR_DIR", "")
    if not shutil.which("node") or not os.path.isdir(
            os.path.join(folder, "node_modules", "gltf-validator")):
        pytest.skip("the Khronos glTF validator needs node and `npm install gltf-validator` "
                    "in $MOFA_GLTF_VALIDATOR_DIR (.ci/run sets it up)")
    script = os.path.join(os.path.dirname(__file__), "tools", "gltf_validate.js")
    done = subprocess.run(["node", script, str(path)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NODE_PATH": os.path.join(
                              folder, "node_modules")})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("seams", [False, True])
def test_glb_face_rig_round_trips_and_validates(builtin_model, tmp_path, seams):
    """mesh.glb re-read (pygltflib) gives the identity's neutral vertices (metres),
    one morph target per expression component (its std x basis) named after it, and the
    fitted code as default weights; with UV seams the split vertices keep their
    positions."""
    model = builtin_model
    if seams:  # every triangle its own UV corners: each position gets several UVs
        count = model.triangles.shape[0] * 3
        uv = np.asarray(model.uv_coords)[np.asarray(model.triangles).ravel()]
        model = model.replace(uv_coords=jnp.asarray(uv),
                              uv_triangles=jnp.arange(count, dtype=jnp.int32).reshape(-1, 3))
    rng = np.random.default_rng(0)
    identity = rng.normal(size=model.num_identity).astype(np.float32)
    expression = rng.normal(size=model.num_expression).astype(np.float32)
    colors = rng.uniform(0, 1, (model.num_vertices, 3))
    texture = rng.uniform(0, 1, (32, 32, 3))
    path = tmp_path / "mesh.glb"
    export.write_glb(str(path), model, identity, expression, colors, texture)
    # A layout computed once for many rigs writes the same file.
    layout = export.glb_layout(model, textured=True)
    export.write_glb(str(tmp_path / "again.glb"), model, identity, expression, colors, texture,
                     layout=layout)
    assert (tmp_path / "again.glb").read_bytes() == path.read_bytes()
    # So does the texture given as its PNG file (reconstruction encodes it once).
    png = io.BytesIO()
    images.save_png(png, texture)
    export.write_glb(str(tmp_path / "png.glb"), model, identity, expression, colors,
                     png.getvalue(), layout=layout)
    assert (tmp_path / "png.glb").read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match="without texture"):
        export.write_glb(str(tmp_path / "x.glb"), model, identity, expression, layout=layout)
    # And the neutral mesh given by the caller (reconstruction computes it with the
    # meshes): the same file; a mesh of the wrong size is refused.
    given = facemodel.shape(model, jnp.asarray(identity), jnp.zeros(model.num_expression))
    export.write_glb(str(tmp_path / "given.glb"), model, identity, expression, colors, texture,
                     layout=layout, neutral=np.asarray(given))
    assert (tmp_path / "given.glb").read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match="neutral"):
        export.write_glb(str(tmp_path / "x.glb"), model, identity, expression, colors, texture,
                         neutral=np.asarray(given)[:-1])

    rig = export.read_glb(str(path))
    positions, triangles = rig["positions"], rig["triangles"]
    neutral = np.asarray(facemodel.shape(model, jnp.asarray(identity),
                                         jnp.zeros(model.num_expression))) * 1e-3
    # Every corner of every triangle is the model's vertex (split or not).
    np.testing.assert_allclose(positions[triangles], neutral[np.asarray(model.triangles)],
                               atol=1e-6)
    assert rig["names"] == list(model.expression_names)
    np.testing.assert_allclose(rig["weights"], expression, atol=1e-6)
    assert len(rig["targets"]) == model.num_expression
    posed = positions + np.einsum("k,kvc->vc", rig["weights"], rig["targets"])
    expected = np.asarray(facemodel.shape(model, jnp.asarray(identity),
                                          jnp.asarray(expression))) * 1e-3
    np.testing.assert_allclose(posed[triangles], expected[np.asarray(model.triangles)],
                               atol=2e-6)
    assert len(positions) == (model.triangles.shape[0] * 3 if seams else model.num_vertices)
    assert rig["has_texture"]
    np.testing.assert_allclose(rig["colors"][triangles], colors[np.asarray(model.triangles)],
                               atol=1e-6)


def test_glb_passes_the_khronos_validator(builtin_model, tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "mesh.glb"
    frames, k = 5, builtin_model.num_expression
    export.write_glb(str(path), builtin_model, rng.normal(size=builtin_model.num_identity),
                     rng.normal(size=k), rng.uniform(0, 1, (builtin_model.num_vertices, 3)),
                     rng.uniform(0, 1, (32, 32, 3)),
                     animation={"times": np.arange(frames) / 30.0,
                                "expression": rng.normal(size=(frames, k)),
                                "rotation": rng.uniform(-0.5, 0.5, (frames, 3))})
    report = _gltf_validator_report(path)
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, report


def test_retarget_puts_a_performance_on_another_identity(builtin_model, tmp_path, capsys):
    """`mofa retarget`: the source clip's expressions and head turn on the target's
    identity, as a glTF animation and an OBJ per frame whose vertices are the model's
    shape of (target identity, source expression)."""
    from mofa import retarget

    model, rng = builtin_model, np.random.default_rng(3)
    frames = 4

    def codes(n):
        return {"identity": rng.normal(size=(n, model.num_identity)),
                "expression": rng.normal(size=(n, model.num_expression)),
                "reflectance": rng.normal(size=(n, model.num_albedo)),
                "rotation": rng.uniform(-0.4, 0.4, (n, 3)),
                "translation": np.tile([0.0, 0.0, -1000.0], (n, 1)),
                "illumination": rng.normal(size=(n, 9, 3))}

    source = {**codes(frames), "frame": np.array([0, 1, 3, 4])}
    export.write_code(str(tmp_path / "clip_codes"), source, {"fps": 25.0, "face_model": "builtin"})
    target = {k: v[0] for k, v in codes(1).items()}
    export.write_code(str(tmp_path / "face0" / "code"), target, {"face_model": "builtin"})

    out = tmp_path / "out"
    assert cli.main(["retarget", str(tmp_path / "clip_codes.npz"), "--to",
                     str(tmp_path / "face0"), "--out", str(out)]) == 0
    assert "retarget.glb" in capsys.readouterr().out
    rig = export.read_glb(str(out / "retarget.glb"))
    neutral = facemodel.shape(model, jnp.asarray(target["identity"], jnp.float32),
                              jnp.zeros(model.num_expression))
    np.testing.assert_allclose(rig["positions"], np.asarray(neutral) * 1e-3, atol=1e-6)
    np.testing.assert_allclose(rig["animation"]["times"], source["frame"] / 25.0, atol=1e-6)
    np.testing.assert_allclose(rig["animation"]["expression"], source["expression"], atol=1e-6)
    for k in (0, frames - 1):
        mesh = trimesh.load(out / "frames" / f"frame_{k:05d}.obj", process=False)
        expected = facemodel.shape(model, jnp.asarray(target["identity"], jnp.float32),
                                   jnp.asarray(source["expression"][k], jnp.float32))
        np.testing.assert_allclose(mesh.vertices, expected, atol=1e-3)
    combined, meta = retarget.load_codes(str(out / "retarget_codes"))
    np.testing.assert_allclose(combined["identity"], np.repeat(target["identity"][None], frames, 0))
    np.testing.assert_allclose(combined["rotation"], source["rotation"])
    assert meta["fps"] == 25.0

    # Codes of another model, or no codes, are refused by name.
    export.write_code(str(tmp_path / "other"), {**target, "expression": np.zeros(3)},
                      {"face_model": "builtin"})
    with pytest.raises(ValueError, match="expression"):
        retarget.run(str(tmp_path / "clip_codes"), str(tmp_path / "other"), str(out))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        retarget.run(str(tmp_path / "missing"), str(tmp_path / "face0"), str(out))


def test_face_tracker_keeps_ids_and_starts_new_ones():
    square = np.stack(np.meshgrid(np.linspace(0, 60, 17), np.linspace(0, 60, 4)), -1).reshape(-1, 2)
    face = lambda x, y: square + [x, y]  # noqa: E731  68 points, 60 px wide
    tracker = reconstruct.FaceTracker(max_gap=2)
    assert tracker.update(0, [face(0, 0), face(200, 0)]) == [0, 1]
    # Listed in the other order and moved a little: the same faces.
    assert tracker.update(1, [face(205, 3), face(8, 2)]) == [1, 0]
    # Face 1 leaves; a face far from both appears: a new track.
    assert tracker.update(2, [face(12, 4), face(100, 150)]) == [0, 2]
    # Face 1 reappears after more than max_gap frames: new id, not 1.
    assert tracker.update(6, [face(205, 3)]) == [3]


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_video_tracks_every_face_streaming(renders, builtin_model, tmp_path):
    """Two faces moving (one turning, one sliding), one leaving after frame 3: two tracks,
    each with its own identity over its frames, its own face rig, and one overlay video at
    the source resolution."""
    imageio = pytest.importorskip("imageio.v3", reason="videos need imageio[ffmpeg]")
    faces, truth, frames, turning = renders
    background = np.full_like(faces[3], faces[3][0, 0])
    slide = lambda t: 3 * t  # noqa: E731  px to the right per frame
    clip = [np.concatenate([frames[t], np.roll(faces[3], slide(t), axis=1) if t < 4
                            else background], axis=1) for t in range(6)]
    video = tmp_path / "pair.mp4"
    imageio.imwrite(video, np.stack(clip), fps=10, codec="libx264", plugin="FFMPEG",
                    macro_block_size=16)
    calls = []

    def detector(image):  # scripted detections, in changing order
        t = len(calls)
        calls.append(t)
        sliding = [np.asarray(truth[3]) + [SIZE + slide(t), 0.0]] if t < 4 else []
        return [turning[t]] + sliding if t % 2 == 0 else sliding + [turning[t]]

    # The scripted detections are the model's own landmark vertices, exactly: no detector
    # table (MediaPipe's vertices, noise and shrinkage) describes them.
    rec = inference.Reconstructor(builtin_model, render.Camera.from_fov(12.6, 64, 64),
                                  batch_size=4, fit_steps=20, calibrated_landmarks=False)
    summary = reconstruct.run([str(video)], str(tmp_path / "out"), rec, detector=detector,
                              progress=False)
    assert len(calls) == 6  # detected once per frame, in the first pass only
    assert summary["num_faces"] == 6 + 4 and not summary["skipped"]
    entry = summary["videos"][0]
    # Ids in the order the faces are first seen (largest first): the sliding face is 0.
    assert [(t["track"], t["first_frame"], t["last_frame"], t["faces"])
            for t in entry["tracks"]] == [(0, 0, 3, 4), (1, 0, 5, 6)]
    codes = np.load(tmp_path / "out" / "pair_codes.npz")
    assert sorted(codes["frame"]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 5]
    for track, frames_of in ((0, range(4)), (1, range(6))):
        rows = codes["track"] == track
        assert list(codes["frame"][rows]) == list(frames_of)
        np.testing.assert_allclose(codes["identity"][rows], codes["identity"][rows][:1].repeat(
            rows.sum(), 0))
        rig = export.read_glb(str(tmp_path / "out" / f"pair_track{track}_mesh.glb"))
        np.testing.assert_allclose(rig["animation"]["times"], np.asarray(frames_of) / 10,
                                   atol=1e-6)
    first = codes["identity"][codes["track"] == 0][0]
    second = codes["identity"][codes["track"] == 1][0]
    assert np.linalg.norm(first - second) > 0.1
    # The fitted landmarks follow each face in the original frame's pixels, the sliding
    # one included.
    errors = np.linalg.norm(codes["landmarks"] - codes["landmarks_detected"], axis=-1)
    assert np.median(errors) < 2.5, np.median(errors)
    sliding_x = codes["landmarks"][codes["track"] == 0][:, :, 0].mean(1)
    np.testing.assert_allclose(np.diff(sliding_x), 3.0, atol=1.5)
    overlay = imageio.imread(tmp_path / "out" / "pair_overlay.mp4")
    assert overlay.shape == (6, SIZE, 2 * SIZE, 3)


def test_batches_fitted_side_by_side_give_the_codes_of_one_after_another(builtin_model):
    """`Reconstructor.parallel_batches`: after the first batch (alone: it compiles), the
    others fit two at a time in threads, with the same codes, in the crops' order."""
    batch = next(synthetic.synthetic_batches(builtin_model, 64, 7, jax.random.key(5)))
    crops = [{"image": np.asarray(batch["image"][i]), "landmarks": np.asarray(
        batch["landmarks"][i]), "landmark_weight": np.ones(68, np.float32)} for i in range(7)]
    camera = render.Camera.from_fov(12.6, 64, 64)

    def codes(parallel):
        rec = inference.Reconstructor(builtin_model, camera, batch_size=2, fit_steps=12,
                                      calibrated_landmarks=False, parallel_batches=parallel)
        first = rec.codes(crops[:2])  # compiles; the next call fits 4 batches, 2 at a time
        return jax.tree.map(lambda a, b: np.concatenate([a, b]), first, rec.codes(crops))

    side_by_side, one_by_one = codes(2), codes(1)
    for field in ("identity", "expression", "rotation", "translation", "illumination"):
        np.testing.assert_array_equal(getattr(side_by_side, field), getattr(one_by_one, field))
    # Each crop's own code: the faces differ, so a mix-up of batches would show.
    assert np.ptp(side_by_side.translation[2:, 0]) > 1.0


def test_render_gives_the_photometric_error_fit_errors_would_render_for(builtin_model):
    """`Reconstructor.render` returns each face's photometric residual on its crop, which
    `fit_errors` then takes instead of rendering the faces again: the same numbers, and
    the faces' own codes explain their crops better than shuffled codes."""
    from mofa.code import FaceCode

    batch = next(synthetic.synthetic_batches(builtin_model, 64, 3, jax.random.key(6)))
    crops = [{"image": batch["image"][i], "landmarks": batch["landmarks"][i],
              "landmark_weight": np.ones(68, np.float32)} for i in range(3)]
    rec = inference.Reconstructor(builtin_model, render.Camera.from_fov(12.6, 64, 64),
                                  batch_size=2, fit_steps=1, calibrated_landmarks=False)
    truth = FaceCode(**{f: batch[f"code/{f}"] for f in reconstruct.FIELDS})
    rendered = rec.render(truth, crops)["photometric"]
    errors = rec.fit_errors(truth, crops)
    # Two programs, one computation: equal to float rounding.
    np.testing.assert_allclose(rendered, errors["photometric"], rtol=1e-5)
    given = rec.fit_errors(truth, crops, rendered)
    np.testing.assert_array_equal(given["photometric"], rendered)
    for key in ("landmark_px", "landmarks"):
        np.testing.assert_array_equal(given[key], errors[key])
    shuffled = jax.tree.map(lambda x: np.roll(x, 1, axis=0), truth)
    assert np.all(rec.render(shuffled, crops)["photometric"] > 2.0 * rendered)


def _rendered_photos(model, count: int, key, folder) -> dict:
    """`count` 64 px renders saved as folder/face<i>.png; their true landmarks by the
    photo's bytes (a detector that looks them up)."""
    batch = next(synthetic.synthetic_batches(model, 64, count, key))
    landmarks = {}
    for i, photo in enumerate(images.to_uint8(images.linear_to_srgb(np.asarray(batch["image"])))):
        Image.fromarray(photo).save(folder / f"face{i}.png")
        landmarks[photo.tobytes()] = np.asarray(batch["landmarks"][i])
    return landmarks


def test_a_failed_write_stops_the_run_with_its_error(builtin_model, tmp_path, monkeypatch):
    """Files are written in a thread while the next batch is fitted: a write that fails
    (a full disk) still ends the run with that error, and the faces written before it
    are complete."""
    landmarks = _rendered_photos(builtin_model, 3, jax.random.key(8), tmp_path)
    detector = lambda image: [landmarks[np.asarray(image).tobytes()]]  # noqa: E731
    camera = render.Camera.from_fov(12.6, 64, 64)
    rec = inference.Reconstructor(builtin_model, camera, batch_size=2, fit_steps=0,
                                  calibrated_landmarks=False, parallel_batches=1)
    paths = [str(tmp_path / f"face{i}.png") for i in range(3)]
    written = []
    real_write_ply = export.write_ply

    def write_ply(path, *args, **kwargs):
        if len(written) == 2:  # the second batch's face: the disk is full
            raise OSError(28, "No space left on device", path)
        written.append(path)
        real_write_ply(path, *args, **kwargs)

    monkeypatch.setattr(export, "write_ply", write_ply)
    with pytest.raises(OSError, match="No space left"):
        reconstruct.run(paths, str(tmp_path / "out"), rec, detector, progress=False,
                        outputs=("mesh",))
    for name in ("face0_face0", "face1_face0"):  # the first batch, whole
        folder = tmp_path / "out" / name
        assert sorted(os.listdir(folder)) == sorted([
            "blendshapes.json", "code.json", "code.npz", "mesh.glb", "mesh.mtl", "mesh.obj",
            "mesh.ply", "texture.png"])


def test_photos_load_ahead_in_threads_with_a_thread_safe_detector(builtin_model, tmp_path):
    """With a thread-safe detector, photos are decoded and detected in threads ahead of
    the fit: the same faces, codes and skipped inputs, in the inputs' order, as when
    the detector runs in the main thread."""
    import threading

    landmarks = _rendered_photos(builtin_model, 5, jax.random.key(9), tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths = [str(tmp_path / f"face{i}.png") for i in range(3)] + [str(tmp_path / "broken.png")]
    paths += [str(tmp_path / f"face{i}.png") for i in range(3, 5)]
    camera = render.Camera.from_fov(12.6, 64, 64)
    rec = inference.Reconstructor(builtin_model, camera, batch_size=2, fit_steps=0,
                                  calibrated_landmarks=False, parallel_batches=1)
    threads = []

    class Detector:
        def __init__(self, thread_safe):
            self.thread_safe = thread_safe

        def __call__(self, image):
            threads.append(threading.current_thread())
            return [landmarks[np.asarray(image).tobytes()]]

    runs = {}
    for thread_safe in (False, True):
        threads.clear()
        out = tmp_path / f"out{thread_safe}"
        runs[thread_safe] = reconstruct.run(paths, str(out), rec, Detector(thread_safe),
                                            progress=False, outputs=())
        runs[thread_safe]["codes"] = [
            np.load(os.path.join(face["output"], "code.npz"))["translation"]
            for face in runs[thread_safe]["faces"]]
        in_main = {t is threading.main_thread() for t in threads}
        assert in_main == ({False} if thread_safe else {True}), thread_safe
    assert len(set(threads)) == reconstruct.LOAD_THREADS
    ahead, here = runs[True], runs[False]
    assert [f["source"] for f in ahead["faces"]] == [p for p in paths if "broken" not in p]
    assert [f["source"] for f in ahead["faces"]] == [f["source"] for f in here["faces"]]
    assert ahead["skipped"] == here["skipped"] and len(ahead["skipped"]) == 1
    for a, b in zip(ahead["codes"], here["codes"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)


def test_shading_pastes_onto_the_photo_as_the_float_blend_does():
    """The overlay's blend (8-bit, PIL, only the mask's box resampled) gives the float
    blend alpha * (0.65 shade + 0.35 photo) + (1 - alpha) photo of the whole resized
    square within 2 levels, for crops inside the photo and crossing its edges."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    mask = (((yy - 30) ** 2 + (xx - 34) ** 2) < 400).astype(np.float32)
    shading = (0.1 + 0.8 * xx / 63.0).astype(np.float32)
    for origin, scale in (((50.3, 40.7), 64 / 150), ((-30, 200), 64 / 170), ((300, 250), 0.5)):
        crop = {"image": np.zeros((64, 64, 3)), "origin": np.array(origin), "scale": scale}
        side = int(round(64 / scale))
        x0, y0 = (int(v) for v in np.round(origin))
        resize = lambda a: np.asarray(Image.fromarray(a).resize(  # noqa: E731
            (side, side), Image.BILINEAR))[..., None]
        shade, alpha = resize(shading), np.clip(resize(mask), 0, 1)
        canvas = np.zeros((300 + 2 * side, 400 + 2 * side, 3), np.float32)
        canvas[side:side + 300, side:side + 400] = photo / 255.0
        square = canvas[side + y0:2 * side + y0, side + x0:2 * side + x0]
        square[:] = alpha * (0.65 * shade + 0.35 * square) + (1 - alpha) * square
        expected = np.clip(canvas[side:side + 300, side:side + 400] * 255 + 0.5, 0, 255)
        pasted = photo.copy()
        reconstruct._paste_shading(pasted, shading, mask, crop)
        assert np.abs(pasted.astype(int) - expected.astype(np.uint8)).max() <= 2, origin
        shaded = (expected.astype(np.uint8) != photo).any(-1).sum()
        assert shaded > 1000 and abs((pasted != photo).any(-1).sum() - shaded) < 0.05 * shaded


def test_photo_overlay_reuses_the_crop_render_up_to_its_upsampling(builtin_model, tmp_path,
                                                                   monkeypatch):
    """A face up to OVERLAY_UPSAMPLING x the crop's size in the photo is drawn from the
    crop's own 128 px render (the same camera, so the same pixels); a larger one is
    rendered again at 256 px (started by the main thread, read by the writer). Either
    way the photo is shaded where the face is."""
    camera = render.Camera.from_fov(12.6, 128, 128)
    rec = inference.Reconstructor(builtin_model, camera, fit_steps=0,
                                  calibrated_landmarks=False)
    job = reconstruct.ReconstructionJob(rec, str(tmp_path), detector=None)
    code = random_code(builtin_model, jax.random.key(5), (1,)).replace(
        translation=jnp.array([[0.0, 0.0, -1000.0]]))
    crop_render = inference.render_face(builtin_model, code, camera)
    out = {"normals": np.asarray(crop_render.normals)[0], "mask": np.asarray(crop_render.mask)[0],
           "landmarks": np.zeros((68, 2))}
    sizes = []
    real_render = reconstruct.render_face

    def recording_render(model, single, cam):
        sizes.append(cam.height)
        return real_render(model, single, cam)

    monkeypatch.setattr(reconstruct, "render_face", recording_render)
    photo = np.full((400, 400, 3), 90, np.uint8)
    fields = {f: np.asarray(getattr(code, f))[0] for f in reconstruct.FIELDS}
    for side, rendered in ((150.0, []), (170.0, [256])):
        sizes.clear()
        face = {"photo": photo, "scale": 128 / side, "origin": np.array([100.0, 80.0]),
                "image": np.zeros((128, 128, 3)), "detected": np.zeros((68, 2))}
        folder = tmp_path / f"side{int(side)}"
        folder.mkdir()
        job._dispatch_overlay_renders([face], {f: v[None] for f, v in fields.items()})
        job._write_photo_overlay([(face, fields, out, str(folder))])
        assert sizes == rendered
        overlay = np.asarray(Image.open(folder / "overlay.jpg")).astype(int)
        changed = np.abs(overlay - photo).sum(-1) > 30
        face_area = crop_render.mask.mean() * side**2 / overlay[..., 0].size
        assert abs(changed.mean() - face_area) < 0.2 * face_area, (changed.mean(), face_area)
    job.close()
