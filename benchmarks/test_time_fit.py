"""The test-time fit of a trained encoder's code, and what landmarks alone give.

`--checkpoint WORKDIR`: the encoder's code (as trained, refined to its own
landmarks) fitted photometrically for `--steps` (`mofa.train.fit_code`), with
`--rigid-fraction` / `--shape-fraction` / `--lr-illumination` /
`--prior-identity` / `--prior-reflectance` (or any field through `--options
k=v,k=v`) overriding `train.FIT_OPTIONS` for ablations, scored on the config's
synthetic test faces.
Without `--checkpoint`: the mean face at each test face's *true* pose fitted
to its exact landmarks, jittered by `--jitter-px` (landmark fit only, the
refinement's weights): the best a landmark-only method gets. Run by hand:

    python benchmarks/test_time_fit.py --checkpoint WORKDIR --steps 150
    python benchmarks/test_time_fit.py --landmarks-only --jitter-px 1.0
"""

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp

from mofa import evaluation, fitting, train
from mofa.code import FaceCode

METRICS = ("expression_error_mm", "identity_shape_error_mm", "illumination_rmse", "albedo_rmse",
           "landmark_nme", "translation_error_mm", "r2/identity_first10_mean", "r2/jawOpen")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="training workdir (default: quickstart config)")
    parser.add_argument("--landmarks-only", action="store_true",
                        help="mean face at the true pose, landmark fit to the true landmarks")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rigid-fraction", type=float, default=None)
    parser.add_argument("--shape-fraction", type=float, default=None)
    parser.add_argument("--lr-illumination", type=float, default=None)
    parser.add_argument("--prior-identity", type=float, default=None)
    parser.add_argument("--prior-reflectance", type=float, default=None)
    parser.add_argument("--options", default="",
                        help="FitOptions overrides k=v,k=v (fitting.option_overrides)")
    parser.add_argument("--jitter-px", type=float, default=0.0)
    parser.add_argument("--batches", type=int, default=4, help="test batches of the config's size")
    args = parser.parse_args()
    if args.landmarks_only == bool(args.checkpoint):
        parser.error("give exactly one of --checkpoint and --landmarks-only")

    changes = {k: v for k, v in (("rigid_fraction", args.rigid_fraction),
                                 ("shape_fraction", args.shape_fraction),
                                 ("lr_illumination", args.lr_illumination),
                                 ("prior_identity", args.prior_identity),
                                 ("prior_reflectance", args.prior_reflectance)) if v is not None}
    changes.update(fitting.option_overrides(args.options))
    if args.checkpoint:
        config, state, decoder, _ = train.load_trained(args.checkpoint)
        refine = train.config_refine_steps(config)
        options = dataclasses.replace(train.FIT_OPTIONS, **changes)

        @jax.jit
        def predict(state, batch):
            code, _, landmarks, _ = train.encode(state.params, state.batch_stats, state.apply_fn,
                                                 batch["image"], decoder, False, refine)
            if args.steps:
                code = train.fit_code(code, batch["image"], landmarks, decoder, args.steps,
                                      options)
            return code, decoder.render(code), None

        results = evaluation.evaluate_predictions(config, lambda b: predict(state, b), decoder,
                                                  args.batches)
    else:
        from experiments.configs import quickstart

        config = quickstart.get_config()
        decoder = train.make_decoder(config)
        options = dataclasses.replace(train.REFINE_OPTIONS, **changes)

        @jax.jit
        def predict(batch):
            truth = FaceCode.from_batch(batch)
            start = dataclasses.replace(truth, identity=jnp.zeros_like(truth.identity),
                                        expression=jnp.zeros_like(truth.expression))
            landmarks = batch["landmarks"] + args.jitter_px * jax.random.normal(
                jax.random.key(0), batch["landmarks"].shape)
            code = train.refine_code(start, landmarks, decoder, args.steps, options)
            return code, decoder.render(code), None

        results = evaluation.evaluate_predictions(config, predict, decoder, args.batches)
    print(json.dumps({"args": vars(args), **{k: round(results[k], 3) for k in METRICS}}))


if __name__ == "__main__":
    main()
