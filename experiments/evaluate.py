"""Evaluates a trained encoder on the synthetic test split of its training config.

python -m experiments.evaluate --workdir=workdir/quickstart

Scores the encoder as its config runs it at evaluation (its landmark refinement
and test-time fit, `encoder.refine_steps` / `encoder.fit_steps`).
Prints and writes WORKDIR/eval.json: per-vertex error after similarity alignment
(mm, mean and median over the face region), landmark NME, photometric error,
pose (degrees), translation (mm) and illumination errors; with --yaw_split=35
also over the faces inside / outside that head-yaw range.
"""

import json
import os

from absl import app, flags

from mofa import evaluation, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdir/quickstart", "Holds checkpoints/ of the trained run.")
flags.DEFINE_integer("eval_batches", 8, "Number of test batches.")
flags.DEFINE_float("yaw_split", None, "Also report every metric for faces whose true |yaw| "
                   "(degrees) is at most / above this (e.g. 35, the prior's range).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = train.evaluate_checkpoint(FLAGS.workdir, num_batches=FLAGS.eval_batches,
                                        yaw_split_degrees=FLAGS.yaw_split)
    evaluation.write_json(os.path.join(FLAGS.workdir, "eval.json"), results)
    print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
