"""Reconstruction accuracy on rendered ICT-FaceKit faces with known 3D ground truth.

  python benchmarks/ict_benchmark.py make --ict PATH --out DIR [--faces 50] [--occluders]
  python benchmarks/ict_benchmark.py run --ict PATH --out DIR [--variants ict,builtin,...]

`make` draws N faces of the ICT Face Model (its 'face_and_head' region, so the
photos show forehead, ears and neck as a photo does): identity ~ N(0, 1) on all
100 ICT modes (ICT's own randomize_identity), 0-4 random ARKit blendshapes at
weights 0-0.8, yaw +-45 deg, pitch +-20 deg, roll +-8 deg, random SH light,
reflectance from the transferred albedo space, textured backgrounds; 224 px
photos with the face at 1.3-1.7 m (about half the width). With --occluders,
half the photos get a random bar or blob over part of the face (glasses frame,
hand, hair strand stand-ins). Written: images/<stem>.png, and the ground truth
as NoW-style scans: scans/<stem>.obj (the posed-neutral mesh of the face
region, model space, mm) and scans/<stem>.txt (its 7 NoW landmarks), plus
truth.json (yaw per face, codes).

By default the photos are drawn by mofa's own renderer (`render.render_face`),
so the benchmark shares the fit's image formation (same SH shading, same
rasterizer): it measures the pipeline's ability to recover shape through a real
detector, crop and optimisation. `make --renderer open3d` draws them with
Open3D's Embree ray caster instead (`pip install open3d`; on a bare Linux it
also needs `apt-get install libusb-1.0-0`): exact ray-triangle hits and their
own barycentrics, 3x3 supersampling per pixel (anti-aliased edges, as a camera
integrates over its pixel, where mofa samples pixel centres) and back faces
seen through the open mouth and eye sockets drawn as a dark interior (mofa
culls them). Only the Lambertian SH shading formula is shared.

`run` reconstructs the photos in-process with `mofa.reconstruct` (MediaPipe
detection, crop, fit), then scores every variant with `mofa.scan_eval`'s NoW
protocol (7-landmark similarity alignment, rigid ICP, scan-to-surface distance
within 95 mm of the nose tip) and prints median / mean mm overall and per yaw
bin, and faces/s. Variants:
  ict-mean     ICT's mean face, unposed (no image used at all)
  ict-placed   --face-model ict --fit-steps 0 (mean face placed from landmarks)
  ict          --face-model ict (default fit)
  builtin-mean, builtin-placed, builtin   the same with the builtin model
               (or the --builtin-model SPEC)
  encoder      --checkpoint WORKDIR: the trained encoder's code (its model), then
               --encoder-fit-steps of fitting (default: the checkpoint's own)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mofa import (export, facemodel, fitting, images, inference, reconstruct, render,
                  scan_eval)
from mofa.code import DEFAULT_FOV_DEGREES, FaceCode, random_code
from mofa.data import faces as faces_lib
from mofa.render import sh
from render_bench import camera_rays  # Open3D rays through our pixel centres

SIZE = 224
CROP_RADIUS_MM = 95.0
YAW_BINS = (0.0, 15.0, 30.0, 45.0)


def _ict(path: str, region: str) -> facemodel.FaceModel:
    return facemodel.load(f"ict:{path}", region=region)


def sample_codes(model: facemodel.FaceModel, key: jax.Array, n: int) -> FaceCode:
    keys = jax.random.split(key, 6)
    code = random_code(model, keys[0], (n,), max_yaw_degrees=45.0, max_pitch_degrees=20.0,
                       max_roll_degrees=8.0, distance_mm=1500.0, shift_mm=25.0)
    distance = jax.random.uniform(keys[1], (n,), minval=1300.0, maxval=1700.0)
    translation = code.translation.at[:, 2].set(-distance)
    # 0-4 blendshapes at weights 0-0.8 (ICT's expression code is the weight).
    count = jax.random.randint(keys[2], (n,), 0, 5)
    order = jax.vmap(lambda k: jax.random.permutation(k, model.num_expression))(
        jax.random.split(keys[3], n))
    weights = jax.random.uniform(keys[4], (n, model.num_expression), maxval=0.8)
    active = jnp.zeros((n, model.num_expression), bool).at[
        jnp.arange(n)[:, None], order[:, :4]].set(jnp.arange(4)[None] < count[:, None])
    expression = jnp.where(active, weights, 0.0)
    return code.replace(translation=translation, expression=expression)


def _occlude(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random bar (glasses / hair strand) or blob (hand) over part of the face."""
    from PIL import ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    if rng.random() < 0.5:  # a bar through the eyes or across the face
        y = float(np.mean(landmarks[36:48, 1])) + rng.uniform(-5, 5)
        x0, x1 = landmarks[:, 0].min() - 5, landmarks[:, 0].max() + 5
        angle = rng.uniform(-0.3, 0.3)
        dy = (x1 - x0) * np.tan(angle) / 2
        draw.line([(x0, y - dy), (x1, y + dy)], fill=colour, width=int(rng.integers(3, 7)))
    else:  # a blob over the cheek or chin
        centre = landmarks[int(rng.choice([3, 5, 8, 11, 13]))]
        r = rng.uniform(10, 18)
        draw.ellipse([centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r], fill=colour)
    return np.asarray(canvas)


def _ray_traced(model: facemodel.FaceModel, code: FaceCode, camera: render.Camera,
                background: np.ndarray, supersample: int = 3) -> np.ndarray:
    """One face (batch 1 code) drawn by Open3D's ray caster: (H, W, 3) linear RGB."""
    import open3d as o3d

    vertices, albedo = (np.asarray(x[0]) for x in render.face_geometry(model, code))
    triangles = np.asarray(model.triangles)
    normals = np.asarray(facemodel.vertex_normals(jnp.asarray(vertices), model.triangles))
    rays = camera_rays(camera.width * supersample, float(camera.focal) * supersample,
                       np.asarray(camera.principal_point) * supersample)  # square images
    directions = rays[..., 3:]
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)),
                        o3d.core.Tensor(triangles.astype(np.uint32)))
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    ids = hit["primitive_ids"].numpy().astype(np.int64)
    covered = ids != o3d.t.geometry.RaycastingScene.INVALID_ID
    ids = np.where(covered, ids, 0)
    uv = hit["primitive_uvs"].numpy()  # weights of corners 1 and 2
    weights = np.stack([1.0 - uv[..., 0] - uv[..., 1], uv[..., 0], uv[..., 1]], -1)
    corners = triangles[ids]  # (H, W, 3)
    pixel_albedo = np.einsum("hwk,hwkc->hwc", weights, albedo[corners])
    pixel_normals = np.einsum("hwk,hwkc->hwc", weights, normals[corners])
    pixel_normals /= np.maximum(np.linalg.norm(pixel_normals, axis=-1, keepdims=True), 1e-9)
    front = np.sum(pixel_normals * directions, -1) < 0
    shaded = np.asarray(sh.shade_lambertian(jnp.asarray(pixel_albedo), jnp.asarray(
        pixel_normals), jnp.asarray(code.illumination[0])[None, None]))
    interior = 0.04 * pixel_albedo  # inside the mouth or an eye socket: little light
    big = np.repeat(np.repeat(background, supersample, 0), supersample, 1)
    image = np.where(covered[..., None], np.where(front[..., None], shaded, interior), big)
    return image.reshape(camera.height, supersample, camera.width, supersample, 3).mean((1, 3))


def make(args) -> None:
    head = _ict(args.ict, "face_and_head")
    face = _ict(args.ict, "face")
    code = sample_codes(head, jax.random.key(args.seed), args.faces)
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, SIZE, SIZE)
    from mofa.data import synthetic
    background = synthetic.random_backgrounds(jax.random.key(args.seed + 1), args.faces,
                                              SIZE, SIZE)
    draw = jax.jit(render.render_face)
    shapes = np.asarray(facemodel.shape(face, code.identity, code.expression))
    rng = np.random.default_rng(args.seed)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "scans"), exist_ok=True)
    truth = {}
    for i in range(args.faces):
        one = jax.tree.map(lambda x: x[i:i + 1], code)
        out = draw(head, one, camera, background=background[i:i + 1])
        linear = (np.asarray(out.image[0]) if args.renderer == "mofa" else
                  _ray_traced(head, one, camera, np.asarray(background[i])))
        photo = images.to_uint8(images.linear_to_srgb(np.clip(linear, 0, 1)))
        occluded = bool(args.occluders and i % 2 == 1)
        if occluded:
            photo = _occlude(photo, np.asarray(out.landmarks[0]), rng)
        stem = f"face{i:03d}"
        Image.fromarray(photo).save(os.path.join(args.out, "images", stem + ".png"))
        export.write_obj(os.path.join(args.out, "scans", stem + ".obj"), shapes[i],
                         np.asarray(face.triangles))
        now = shapes[i][np.asarray(face.landmark_indices)[list(scan_eval.NOW_LANDMARKS)]]
        np.savetxt(os.path.join(args.out, "scans", stem + ".txt"), now, fmt="%.4f")
        truth[stem] = {"yaw_degrees": float(np.degrees(code.rotation[i, 1])),
                       "pitch_degrees": float(np.degrees(code.rotation[i, 0])),
                       "occluded": occluded,
                       # The true 68 landmark vertices, projected (for --oracle runs).
                       "landmarks": np.round(np.asarray(out.landmarks[0]), 3).tolist(),
                       "expression_weights": {n: round(float(w), 3) for n, w in zip(
                           face.expression_names, np.asarray(code.expression[i])) if w > 0}}
    with open(os.path.join(args.out, "truth.json"), "w") as f:
        json.dump(truth, f, indent=1)
    print(f"{args.faces} faces -> {args.out}")


def _write_mean(model: facemodel.FaceModel, stems: list, out: str) -> None:
    """The model's mean face as every prediction (no image used)."""
    for stem in stems:
        folder = os.path.join(out, f"{stem}_face0")
        os.makedirs(folder, exist_ok=True)
        export.write_obj(os.path.join(folder, "mesh.obj"), np.asarray(model.mean_shape),
                         np.asarray(model.triangles))
        export.write_code(os.path.join(folder, "code"), {
            "landmarks_3d": np.asarray(model.mean_shape)[np.asarray(model.landmark_indices)]})


def _score(predictions: str, scans: str, truth: dict, stride: int = 1) -> dict:
    result = scan_eval.evaluate_scans(predictions, scans, crop_radius=CROP_RADIUS_MM,
                                      skip_missing=True, point_stride=stride)
    rows = {"all": (result["median_mm"], result["mean_mm"], result["num_scans"])}
    if result["missing"]:
        print(f"no prediction (no face detected) for {result['missing']}", file=sys.stderr)
    per = result["scans"]
    for lo, hi in zip(YAW_BINS[:-1], YAW_BINS[1:]):
        stems = [s for s in per if lo <= abs(truth[s]["yaw_degrees"]) < hi]
        if stems:
            rows[f"|yaw| {lo:.0f}-{hi:.0f}"] = (
                float(np.median([per[s]["median_mm"] for s in stems])),
                float(np.mean([per[s]["mean_mm"] for s in stems])), len(stems))
    occluded = [s for s in per if truth[s]["occluded"]]
    if occluded:
        rows["occluded"] = (float(np.median([per[s]["median_mm"] for s in occluded])),
                            float(np.mean([per[s]["mean_mm"] for s in occluded])), len(occluded))
    return rows


def _median_mean(values: list) -> tuple | None:
    return (float(np.median(values)), float(np.mean(values))) if values else None


def _nme_to_truth(points, face: dict) -> float:
    """Outer-eye-corner NME of 68 image points against a face's true projected ones."""
    return scan_eval.landmark_nme(np.asarray(points)[:, :2],
                                  np.asarray(face["landmarks"]))["nme_interocular"]


def _landmark_nme(predictions: str, truth: dict) -> tuple | None:
    """(median, mean) outer-eye-corner NME of the reconstructions' 68 image landmarks
    against the true projected ones (faces with a prediction), or None where the
    variant writes none (the mean face)."""
    values = []
    for stem, face in truth.items():
        folders = scan_eval.prediction_faces(predictions, stem)
        if not folders:
            continue
        fitted = scan_eval.read_code_json(folders[0]).get("landmarks")
        if fitted is None:
            return None
        values.append(_nme_to_truth(fitted, face))
    return _median_mean(values)


def _photometric_residuals(predictions: str, truth: dict) -> tuple | None:
    """(p10, median, p90) of the fits' photometric residuals (code.json), or None where
    the variant did not fit the image."""
    values = []
    for stem in truth:
        folders = scan_eval.prediction_faces(predictions, stem)
        if folders:
            residual = scan_eval.read_code_json(folders[0]).get("photometric_error")
            if residual is None:
                return None
            values.append(residual)
    return tuple(np.percentile(values, [10, 50, 90])) if values else None


class CachedDetector:
    """A detector (`faces.DETECTORS`), run once per image: every variant sees the same
    detections, and faces/s then measures crop + reconstruction + writing (detection is
    timed apart)."""

    def __init__(self, name: str = "mediapipe"):
        self.detector = faces_lib.make_detector(name, max_faces=8)
        self.cache, self.seconds = {}, 0.0

    def __call__(self, image):
        key = hash(image.tobytes())
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = self.detector(image)
            self.seconds += time.perf_counter() - start
        return self.cache[key]


class OracleDetector:
    """The true projected landmark vertices instead of a detector: isolates what the
    fit recovers from what the detector's landmark semantics cost."""

    def __init__(self, truth: dict, photos: str):
        self.by_image = {}
        for stem, face in truth.items():
            image = np.asarray(Image.open(os.path.join(photos, stem + ".png")).convert("RGB"))
            self.by_image[hash(image.tobytes())] = np.asarray(face["landmarks"], np.float32)
        self.seconds = 0.0

    def __call__(self, image):
        return [self.by_image[hash(image.tobytes())]]


def _start_identity_from(rec, codes) -> None:
    """Every fit of `rec` starts with its face's identity code from `codes` (by photo stem;
    e.g. `identity_reach.py --save-codes`, the codes nearest the ground truth), the rest
    of the start as usual: does the fit stay near them?"""
    plain = rec.codes

    def codes_from(crops, *args, known=None, **kwargs):
        if known is None and crops and "name" in crops[0]:
            known = {"identity": np.stack([codes[c["name"].rsplit("_face", 1)[0]]
                                           for c in crops]).astype(np.float32)}
        return plain(crops, *args, known=known, **kwargs)

    rec.codes = codes_from


def _subset(scans: str, stems: list, folder: str) -> str:
    """A folder of links to the first scans (scan_eval scores every scan of a folder)."""
    os.makedirs(folder, exist_ok=True)
    for stem in stems:
        for ext in (".obj", ".txt"):
            link = os.path.join(folder, stem + ext)
            if not os.path.exists(link):
                os.symlink(os.path.join(scans, stem + ext), link)
    return folder


def run(args) -> None:
    with open(os.path.join(args.out, "truth.json")) as f:
        truth = json.load(f)
    scans = os.path.join(args.out, "scans")
    photos = os.path.join(args.out, "images")
    stems = sorted(truth)[:args.limit]
    truth = {s: truth[s] for s in stems}
    scans = _subset(scans, stems, os.path.join(args.out, f"scans_{len(stems)}"))
    detector = (OracleDetector(truth, photos) if args.oracle_landmarks
                else CachedDetector(args.detector))
    overrides = fitting.option_overrides(args.options)
    models = {"ict": _ict(args.ict, "face"), "builtin": facemodel.load(args.builtin_model)}
    table = {}
    for variant in args.variants.split(","):
        name, _, kind = variant.partition("-")
        if name == "encoder" and not args.checkpoint:
            raise SystemExit("the encoder variant needs --checkpoint WORKDIR")
        model = models.get(name)
        # A tag's predictions apart from the default run's (a trial never overwrites it).
        predictions = os.path.join(args.out, "pred" if args.tag == "default"
                                   else f"pred_{args.tag}", variant)
        shutil.rmtree(predictions, ignore_errors=True)
        seconds = None
        if kind == "mean":
            _write_mean(model, stems, predictions)
        else:
            if name == "encoder":
                rec = inference.load_reconstructor(args.checkpoint,
                                                   image_size=args.encoder_image_size,
                                                   fit_steps=args.encoder_fit_steps,
                                                   batch_size=args.batch_size,
                                                   detector=args.detector)
                rec.place_encoder = not args.encoder_no_place
            else:
                camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, args.image_size,
                                                args.image_size)
                steps = 0 if kind == "placed" else args.fit_steps
                rec = inference.Reconstructor(model, camera, batch_size=args.batch_size,
                                              fit_steps=steps, contour=not args.no_contour,
                                              calibrated_landmarks=not args.no_calibration,
                                              detector=args.detector)
            rec.options = dataclasses.replace(rec.options, **overrides)
            if args.start_identity:
                _start_identity_from(rec, np.load(args.start_identity))
            paths = [os.path.join(photos, f"{s}.png") for s in stems]
            # Warm-up compile on the first batch, so faces/s is the steady state.
            outputs = tuple(x for x in args.outputs.split(",") if x)
            reconstruct.run(paths[:args.batch_size], predictions, rec, detector,
                            texture_size=64, progress=False, outputs=outputs)
            start = time.perf_counter()
            summary = reconstruct.run(paths, predictions, rec, detector, texture_size=64,
                                      progress=False, outputs=outputs)
            seconds = time.perf_counter() - start
            if summary["skipped"]:
                print(f"{variant}: skipped {summary['skipped']}", file=sys.stderr)
        # Without meshes (--outputs images or none) only the 2D landmarks are scored.
        rows = (_score(predictions, scans, truth, args.scan_stride)
                if kind == "mean" or "mesh" in args.outputs.split(",") else {})
        nme = _landmark_nme(predictions, truth)
        line = "  ".join(f"{k}: {m:.2f}/{a:.2f} (n={n})" for k, (m, a, n) in rows.items())
        if nme:
            line += f"  2D NME median/mean {nme[0]:.3f}/{nme[1]:.3f}"
        residual = _photometric_residuals(predictions, truth) if kind != "mean" else None
        if residual:
            line += "  photometric residual p10/median/p90 {:.3f}/{:.3f}/{:.3f}".format(*residual)
        speed = "" if seconds is None else f"  {len(stems) / seconds:.2f} faces/s"
        table[variant] = {"rows": rows, "landmark_nme": nme, "photometric_residual": residual,
                          "faces_per_second": None if seconds is None else len(stems) / seconds}
        print(f"{variant:16s} median/mean mm  {line}{speed}", flush=True)
        if seconds is not None:
            print(f"{variant:16s} options {rec.options}", flush=True)
    if detector.seconds:
        nme = []  # the detector's own 68 points against the true ones
        for stem in stems:
            found = detector(np.asarray(Image.open(os.path.join(photos, f"{stem}.png"))
                                        .convert("RGB")))
            if len(found):
                nme.append(_nme_to_truth(found[0], truth[stem]))
        median, mean = _median_mean(nme) or (float("nan"),) * 2
        print(f"detection: {detector.seconds:.1f} s for {len(stems)} photos "
              f"({len(stems) / detector.seconds:.1f} faces/s), its 2D NME median/mean "
              f"{median:.3f}/{mean:.3f} (n={len(nme)})", flush=True)
    with open(os.path.join(args.out, f"results_{args.tag}.json"), "w") as f:
        json.dump(table, f, indent=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("make", "run"):
        p = sub.add_parser(name)
        p.add_argument("--ict", required=True, help="ICT-FaceKit clone")
        p.add_argument("--out", required=True, help="benchmark folder")
    sub.choices["make"].add_argument("--faces", type=int, default=50)
    sub.choices["make"].add_argument("--seed", type=int, default=7)
    sub.choices["make"].add_argument("--occluders", action="store_true")
    sub.choices["make"].add_argument("--renderer", choices=("mofa", "open3d"), default="mofa",
                                     help="who draws the photos (module docstring)")
    r = sub.choices["run"]
    r.add_argument("--variants", default="ict-mean,ict-placed,ict,builtin-placed,builtin")
    r.add_argument("--fit-steps", type=int, default=fitting.DEFAULT_FIT_STEPS)
    r.add_argument("--image-size", type=int, default=128)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--tag", default="default",
                   help="names the results file and, unless 'default', the predictions' "
                   "folder (OUT/pred_TAG)")
    r.add_argument("--checkpoint", help="training workdir, for the encoder variant")
    r.add_argument("--encoder-image-size", type=int, default=None,
                   help="crop and fit size of the encoder variant (default: the "
                   "checkpoint's; the encoder sees the crop resized to its own size)")
    r.add_argument("--encoder-no-place", action="store_true",
                   help="the encoder's own pose, not re-posed on the detector's landmarks")
    r.add_argument("--encoder-fit-steps", type=int, default=None,
                   help="fit steps after the encoder (default: the checkpoint's)")
    r.add_argument("--outputs", default="mesh,images",
                   help="`mofa reconstruct --outputs` besides the codes ('' for codes only: "
                   "faces/s and 2D NME, no 3D score)")
    r.add_argument("--detector", default="mediapipe", choices=faces_lib.DETECTORS,
                   help="the 2D landmark detector (and its landmark table)")
    r.add_argument("--start-identity", default=None, metavar="NPZ",
                   help="start every fit at these identity codes (by stem; "
                   "identity_reach.py --save-codes)")
    r.add_argument("--oracle-landmarks", action="store_true",
                   help="fit to the true projected landmarks instead of MediaPipe's")
    r.add_argument("--no-calibration", action="store_true",
                   help="the model's own landmark vertices, unweighted")
    r.add_argument("--scan-stride", type=int, default=1,
                   help="score every n-th ground-truth vertex (quicker ablations)")
    r.add_argument("--no-contour", action="store_true", help="fixed jaw landmark vertices")
    r.add_argument("--limit", type=int, default=None, help="the first N faces only")
    r.add_argument("--options", default="", help="FitOptions overrides, k=v,k=v")
    r.add_argument("--builtin-model", default="builtin",
                   help="face-model SPEC the builtin-* variants use instead of the builtin "
                        "(e.g. npz:PATH from benchmarks/population_correction.py)")
    args = parser.parse_args(argv)
    {"make": make, "run": run}[args.command](args)


if __name__ == "__main__":
    main()
