"""Training on photos with ground truth: rendered faces as a photo folder, then encoders
trained on it (`mofa_folder`) scored on held-out rendered photos whose codes are known.

The photos go through what real ones do: 8-bit PNGs, MediaPipe's 68 landmarks, the
crop around them (`mofa.data.faces`). Only the scoring reads the renders' codes. Run by
hand from the repository root:

    python benchmarks/photo_training.py make --out /tmp/photos --faces 2048
    python -m experiments.main --config=experiments/configs/mofa_folder.py \\
        --workdir=/tmp/pt_cal --config.data.path=/tmp/photos ...   # (README lists the flags)
    python benchmarks/photo_training.py score --checkpoint /tmp/pt_cal /tmp/pt_own

`make` draws the builtin model's synthetic faces (`mofa.data.synthetic`: identity,
expression, albedo, SH light, pose, backgrounds) 1.5-1.8 m from the camera in 224 px
images, so a crop around the face fits inside the photo. `score` renders another seed's
faces the same way (`--seed`), and reports per checkpoint the metrics of `mofa
evaluate` that do not depend on the camera (the crop's camera is not the render's):
identity and expression shape errors, rotation, albedo, light, and the 2D NME of the
model's own landmark vertices against their true positions in the crop.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mofa import evaluation, facemodel, images, render, train
from mofa.code import DEFAULT_DISTANCE_MM, DEFAULT_FOV_DEGREES, FaceCode
from mofa.data import faces as faces_lib
from mofa.data.sources import SyntheticSource
from mofa.data.synthetic import Framing

PHOTO_SIZE = 224
BATCH = 32


def _photo_batches(model, seed: int, faces: int):
    """(images uint8 (B, S, S, 3), FaceCode) batches of rendered photos."""
    framing = Framing(min_distance_mm=1.5 * DEFAULT_DISTANCE_MM,
                      max_distance_mm=1.8 * DEFAULT_DISTANCE_MM)
    source = SyntheticSource(model, PHOTO_SIZE, seed, "photos", framing)
    for b in range((faces + BATCH - 1) // BATCH):
        batch = source.batch(b, BATCH)
        code = FaceCode.from_batch(jax.tree.map(jnp.asarray, batch))
        yield images.to_uint8(images.linear_to_srgb(np.asarray(batch["image"]))), code


def make(args) -> None:
    model = facemodel.load("builtin")
    os.makedirs(args.out, exist_ok=True)
    index = 0
    for pixels, _ in _photo_batches(model, args.seed, args.faces):
        for image in pixels[:args.faces - index]:
            images.save_png(os.path.join(args.out, f"face{index:05d}.png"), image / 255.0)
            index += 1
    print(f"wrote {index} photos to {args.out}")


def score(args) -> None:
    model = facemodel.load("builtin")
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, PHOTO_SIZE, PHOTO_SIZE)
    detector = faces_lib.MediaPipeDetector()
    crops, truths, true_landmarks = [], [], []
    configs = [train.load_trained(path) for path in args.checkpoint]
    size = configs[0][0].image_size
    for pixels, code in _photo_batches(model, args.seed, args.faces):
        projected = np.asarray(jax.jit(render.render_face)(model, code, camera).landmarks)
        for i, image in enumerate(pixels):
            found, problem = faces_lib.usable_faces(detector(image))
            if problem:
                continue
            example, scale, origin = faces_lib.face_crop_with_transform(image, found[0], size)
            crops.append(example["image"])
            true_landmarks.append((projected[i] - origin) * scale)
            truths.append(jax.tree.map(lambda x: np.asarray(x)[i], code))  # noqa: B023
    count = len(crops) - len(crops) % BATCH  # whole batches: one compilation
    print(f"{len(crops)} of {args.faces} photos with a face found; scoring {count}")
    truth = jax.tree.map(lambda *x: jnp.asarray(np.stack(x[:count])), *truths)
    pixels = jnp.asarray(np.stack(crops[:count]))
    landmarks = jnp.asarray(np.stack(true_landmarks[:count]), jnp.float32)

    def scores(predicted: FaceCode, decoder) -> dict:
        out = jax.jit(decoder.render)(predicted, background=pixels)
        errors = evaluation.reconstruction_errors(model, decoder.camera, predicted, truth,
                                                  pixels, landmarks, out)
        result = {k: float(np.mean(v)) for k, v in errors.items()
                  if k not in ("translation_error_mm", "landmark_error_px")}
        r2 = evaluation.component_r_squared(model, predicted.as_dict(), truth.as_dict())
        result.update({k: float(v) for k, v in r2.items()
                       if k in ("r2/identity_first10_mean", "r2/jawOpen")})
        return result

    rows = {}
    for path, (config, state, decoder, step) in zip(args.checkpoint, configs):
        if config.image_size != size or config.face_model != "builtin":
            raise ValueError(f"{path}: scores builtin-model checkpoints of one image size "
                             f"({size} px), not {config.face_model} at {config.image_size}")
        encode = train.code_encoder(state, decoder, train.config_refine_steps(config))
        predicted = jax.tree.map(lambda *x: jnp.concatenate(x), *[
            encode(pixels[s:s + BATCH]) for s in range(0, count, BATCH)])
        rows[path] = {"step": step, **scores(predicted, decoder)}
        if "mean face" not in rows:  # the encoder's pose and light, the mean face's shape
            mean = predicted.replace(identity=jnp.zeros_like(predicted.identity),
                                     expression=jnp.zeros_like(predicted.expression))
            rows["mean face"] = {k: v for k, v in scores(mean, decoder).items()
                                 if k.startswith(("identity", "expression"))}
    print(json.dumps(rows, indent=1))
    keys = ["identity_shape_error_mm", "expression_error_mm", "pose_error_deg", "landmark_nme",
            "vertex_error_mm_mean", "r2/identity_first10_mean", "r2/jawOpen", "albedo_rmse",
            "illumination_rmse", "photometric_error"]
    print("| checkpoint | " + " | ".join(keys) + " |")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" if k in row else "–" for k in keys)
              + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("make", help="render a folder of photos")
    made.add_argument("--out", required=True)
    made.add_argument("--faces", type=int, default=2048)
    made.add_argument("--seed", type=int, default=5)
    scored = commands.add_parser("score", help="score checkpoints on held-out photos")
    scored.add_argument("--checkpoint", nargs="+", required=True, help="training workdirs")
    scored.add_argument("--faces", type=int, default=256)
    scored.add_argument("--seed", type=int, default=6)
    args = parser.parse_args(argv)
    {"make": make, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
