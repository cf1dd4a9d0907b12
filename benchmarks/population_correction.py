"""The multi-level model's population correction as a face model of its own.

A `multilevel` training run (builtin 3DMM + learned corrective level, trained on ICT
renders) learns almost one correction for everyone (README, "Multi-level model"). This
averages the encoder's corrections over the run's synthetic test faces and writes the
builtin model with them added to its mean shape and albedo, so the ICT benchmark can
score that mean face (`ict_benchmark.py run --builtin-model npz:OUT`). Run by hand:

    python benchmarks/population_correction.py WORKDIR --out /tmp/builtin_corrected.npz
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mofa import corrective, facemodel, losses, train  # noqa: E402
from mofa.data import sources  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a multilevel training workdir")
    parser.add_argument("--out", required=True, help="the corrected model (.npz)")
    parser.add_argument("--batches", type=int, default=4, help="test batches to average")
    args = parser.parse_args()
    config, state, decoder, step = train.load_trained(args.workdir)
    if "corrective" not in state.params:
        raise SystemExit(f"{args.workdir}: the checkpoint has no corrective level")
    weights = losses.LossWeights.from_config(config.loss)
    data_spec = config.data.get("face_model") or config.face_model
    data_config = config.copy_and_resolve_references()
    data_config.face_model = data_spec
    source = sources.make_source(data_config, facemodel.load(data_spec), split="test")
    shape, albedo = [], []
    for i in range(args.batches):
        batch = jax.tree.map(jnp.asarray, source.batch(i, config.eval_batch_size))
        _, aux = train.eval_step(state, batch, decoder, weights)
        s, a = corrective.corrections(state.params["corrective"], aux["corrective"])
        shape.append(np.asarray(s))
        albedo.append(np.asarray(a))
    shape, albedo = np.concatenate(shape), np.concatenate(albedo)
    mean_shape, mean_albedo = shape.mean(0), albedo.mean(0)
    region = np.asarray(decoder.face_model.face_mask) > 0.5
    rms = lambda x: float(np.sqrt(np.mean(np.sum(x[..., region, :] ** 2, -1))))  # noqa: E731
    print(f"step {step}, {len(shape)} faces: population shape correction RMS "
          f"{rms(mean_shape):.2f} mm, per-face deviation {rms(shape - mean_shape):.2f} mm")
    model = decoder.face_model
    corrected = model.replace(mean_shape=model.mean_shape + mean_shape,
                              albedo_mean=jnp.clip(model.albedo_mean + mean_albedo, 0.0, 1.0))
    facemodel.save_npz(corrected, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
