"""Does the fit reach the objective's minimum? Fits from the mean face against fits
started closer to the truth, on faces rendered by mofa with their exact landmarks.

Each row fits the same faces (`fitting.fit`, the CLI's calibrated identity prior)
from a different start, and prints the objective the fit minimizes, the identity
shape error (neutral, similarity-aligned), the expression error, and the least-squares
slope and mean norm of the fitted identity codes against the true ones. Where a fit
from the mean face ends at a higher objective than a fit started at the truth, the
optimizer, not the objective, limits it. Run by hand:

    python benchmarks/fit_basin.py --face-model ict:PATH [--faces 16] [--size 128]
        [--rows mean,truth,truepose_held,truepose_free] [--options k=v,k=v]

Rows: `mean` (what `mofa reconstruct` does), `truth` (only the appearance stage,
from the true code), `truepose_held` (from the mean face at the true pose, pose
held), `truepose_free` (the same start, pose free).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

from mofa import evaluation, facemodel, fitting
from mofa.code import FaceCode
from mofa.data import synthetic
from mofa.render import Camera

ROWS = ("mean", "truth", "truepose_held", "truepose_free")


def parse_options(text: str) -> fitting.FitOptions:
    """The CLI's fit options (calibrated identity prior) with k=v overrides, each in its
    field's type."""
    options = fitting.FitOptions(prior_identity=fitting.CALIBRATED_PRIOR_IDENTITY)
    return dataclasses.replace(options, **fitting.option_overrides(text))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--face-model", default="builtin")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--faces", type=int, default=16)
    parser.add_argument("--steps", type=int, default=fitting.DEFAULT_FIT_STEPS)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--options", default="", help="FitOptions overrides, k=v,k=v")
    args = parser.parse_args()
    rows = args.rows.split(",")
    if unknown := set(rows) - set(ROWS):
        parser.error(f"--rows: unknown {sorted(unknown)}; choose from {ROWS}")
    options = parse_options(args.options)
    model = facemodel.load(args.face_model)
    camera = Camera.from_fov(synthetic.DEFAULT_FOV_DEGREES, args.size, args.size)
    truth, background = synthetic.random_inputs(model, jax.random.key(7), args.faces, args.size)
    batch = synthetic.render_codes(model, truth, background, args.size)
    images, landmarks, weight = batch["image"], batch["landmarks"], batch["landmark_weight"]
    true_identity = np.asarray(truth.identity)
    at_true_pose = FaceCode.neutral(model, (args.faces,)).replace(
        rotation=truth.rotation, translation=truth.translation)

    print(f"{args.faces} faces of {args.face_model} at {args.size} px, {args.steps} steps, "
          f"{options}")
    print("| start | objective | identity shape (mm) | expression (mm) | identity slope "
          "| identity norm | s |")
    print("|---|---|---|---|---|---|---|")

    def row(name, code, seconds):
        out = fitting.render_face(model, code, camera, background=background)
        errors = evaluation.reconstruction_errors(model, camera, code, truth, images,
                                                  landmarks, out)
        value = fitting.objective(model, camera, code, images, landmarks, weight, options)
        fitted = np.asarray(code.identity)
        slope = np.sum(fitted * true_identity) / np.sum(true_identity ** 2)
        print(f"| {name} | {float(value):.4f} "
              f"| {np.mean(errors['identity_shape_error_mm']):.3f} "
              f"| {np.mean(errors['expression_error_mm']):.3f} | {slope:.2f} "
              f"| {np.mean(np.linalg.norm(fitted, axis=1)):.2f} | {seconds:.0f} |", flush=True)

    row("the truth itself", truth, 0)
    row("mean face at the true pose, no fit", at_true_pose, 0)
    appearance_only = dataclasses.replace(options, rigid_fraction=0.0, shape_fraction=0.0)
    for name in rows:
        start = time.perf_counter()
        if name == "mean":
            code = fitting.fit(model, camera, images, landmarks, weight, steps=args.steps,
                               options=options)
        elif name == "truth":
            steps = fitting.stage_steps(args.steps, options, photometric=True)["appearance"]
            code = fitting.fit(model, camera, images, landmarks, weight, init_code=truth,
                               steps=steps, options=appearance_only)
        else:
            fixed = ("rotation", "translation") if name == "truepose_held" else ()
            code = fitting.fit(model, camera, images, landmarks, weight,
                               init_code=at_true_pose, steps=args.steps, options=options,
                               fixed=fixed)
        jax.block_until_ready(code.identity)
        row(f"fit from: {name}", code, time.perf_counter() - start)


if __name__ == "__main__":
    main()
