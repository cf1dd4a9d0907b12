"""What an image-only method can recover from the quickstart's test faces.

Fits (`mofa.fitting.fit`, analysis by synthesis) rendered builtin faces at the
quickstart's 64 px given their exact landmarks, and the same landmarks jittered,
and prints the errors the training evaluation reports (identity shape,
expression, illumination, R^2) beside the mean face's. Run by hand:

    python benchmarks/fit_ceiling.py [--size 64] [--faces 64] [--steps 200]
"""

import argparse

import jax
import numpy as np

from mofa import evaluation, facemodel, fitting
from mofa.code import FaceCode
from mofa.data import synthetic
from mofa.render import Camera

METRICS = ("identity_shape_error_mm", "expression_error_mm", "illumination_rmse",
           "albedo_rmse", "landmark_error_px")


def _row(name, model, camera, code, truth, batch, background):
    out = fitting.render_face(model, code, camera, background=background)
    errors = evaluation.reconstruction_errors(model, camera, code, truth, batch["image"],
                                              batch["landmarks"], out)
    r2 = evaluation.component_r_squared(
        model, {"identity": np.asarray(code.identity), "expression": np.asarray(code.expression)},
        {"identity": np.asarray(truth.identity), "expression": np.asarray(truth.expression)})
    cells = [f"{float(np.mean(errors[k])):.3f}" for k in METRICS]
    cells += [f"{r2['r2/identity_first10_mean']:.2f}", f"{r2.get('r2/jawOpen', float('nan')):.2f}"]
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--jitter", default="0,0.5,1.0,1.5", help="landmark noise, px RMS")
    args = parser.parse_args()
    model = facemodel.load("builtin")
    camera = Camera.from_fov(synthetic.DEFAULT_FOV_DEGREES, args.size, args.size)
    truth, background = synthetic.random_inputs(model, jax.random.key(7), args.faces, args.size)
    batch = synthetic.render_codes(model, truth, background, args.size)
    print("| landmarks given | " + " | ".join(METRICS) + " | R² identity 1-10 | R² jawOpen |")
    print("|---" * (len(METRICS) + 3) + "|")
    mean_face = FaceCode.neutral(model, (args.faces,)).replace(
        rotation=truth.rotation, translation=truth.translation)
    _row("mean face at the true pose", model, camera, mean_face, truth, batch, background)
    for sigma in [float(v) for v in args.jitter.split(",")]:
        noise = jax.random.normal(jax.random.key(1), batch["landmarks"].shape)
        landmarks = batch["landmarks"] + sigma / np.sqrt(2.0) * noise
        code = fitting.fit(model, camera, batch["image"], landmarks, batch["landmark_weight"],
                           steps=args.steps)
        _row(f"fit, landmarks ± {sigma:g} px", model, camera, code, truth, batch, background)


if __name__ == "__main__":
    main()
