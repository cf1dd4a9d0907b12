"""Does the objective point at the truth? The training objective of every shipped config
(and the fitting objective) on rendered builtin faces, at the ground-truth code and with
identity, expression and reflectance shrunk toward the mean (pose and light at the truth).
Photo configs score the landmarks the calibrated detector reports for the true faces
(`train.photo_decoder`), the others the model's own landmark vertices.

  python benchmarks/objective_check.py [--faces 32]

`tests/test_losses.py` asserts the ordering; this prints the numbers README quotes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mofa import facemodel, fitting, losses, render, train  # noqa: E402
from mofa.decoder import Decoder  # noqa: E402
from mofa.code import DEFAULT_FOV_DEGREES  # noqa: E402
from mofa.data import sources, synthetic  # noqa: E402

CONFIGS = ("quickstart", "synthetic_supervised", "mofa_folder", "mofa_celeba", "bootstrap",
           "multilevel")
FACTORS = (1.0, 0.75, 0.5, 0.25, 0.0)


def faces(model, size, count, seed=7):
    code, background = synthetic.random_inputs(model, jax.random.key(seed), count, size)
    batch = synthetic.render_codes(model, code, background, size)
    batch = dict(batch, image=synthetic.decode_srgb8(synthetic.encode_srgb8(
        np.asarray(batch["image"]))))
    return code, batch


def shrunk(code, factor):
    return code.replace(identity=code.identity * factor, expression=code.expression * factor,
                        reflectance=code.reflectance * factor)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=32)
    args = parser.parse_args()
    model = facemodel.load("builtin")
    print("objective at code scale s (1 = truth, 0 = mean face):")
    print(f"{'config':22s} {'px':>4s} " + " ".join(f"{f'{s:g}':>9s}" for s in FACTORS))
    for name in CONFIGS:
        config = importlib.import_module(f"experiments.configs.{name}").get_config()
        weights = losses.LossWeights.from_config(config.loss)
        size = min(config.image_size, 128)
        camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
        decoder = train.photo_decoder(config, Decoder(face_model=model, camera=camera))
        truth, batch = faces(model, size, args.faces)
        if config.data.source in sources.DETECTED_SOURCES:  # what the detector reports
            out = decoder.render(truth)
            batch = dict(batch, landmarks=decoder.detector.points(
                camera, truth, out.screen_vertices, batch["landmarks"]))
        totals = [float(losses.objective(shrunk(truth, s), batch, decoder, weights)[0])
                  for s in FACTORS]
        print(f"{name:22s} {size:4d} " + " ".join(f"{t:9.4f}" for t in totals))
    size = 128
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
    truth, batch = faces(model, size, args.faces, seed=8)
    totals = [float(fitting.objective(model, camera, shrunk(truth, s), batch["image"],
                                      batch["landmarks"], batch["landmark_weight"]))
              for s in FACTORS]
    print(f"{'fitting (appearance)':22s} {size:4d} " + " ".join(f"{t:9.4f}" for t in totals))


if __name__ == "__main__":
    main()
