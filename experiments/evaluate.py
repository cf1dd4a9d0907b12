"""Evaluates a trained encoder on the synthetic test split of its config.

python -m experiments.evaluate --config=experiments/configs/quickstart.py --workdir=workdir/quickstart

Prints and writes WORKDIR/eval.json: per-vertex error after similarity alignment
(mm, mean and median over the face region), landmark NME, photometric error,
pose (degrees), translation (mm) and illumination errors.
"""

import json
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from mofa import evaluation, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/quickstart.py",
                                "The experiment's configuration.", lock_config=False)
flags.DEFINE_string("workdir", "workdir/quickstart", "Holds checkpoints/ of the trained run.")
flags.DEFINE_integer("eval_batches", 8, "Number of test batches.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    checkpoints_dir = os.path.join(os.path.abspath(FLAGS.workdir), "checkpoints")
    if not os.path.isdir(checkpoints_dir):
        raise app.UsageError(f"no checkpoints in {checkpoints_dir}: train first")
    decoder = train.make_decoder(config)
    state = train.create_state(config, decoder.face_model, jax.random.key(config.seed))
    manager = train.checkpoint_manager(os.path.abspath(FLAGS.workdir), config)
    state, step = train.restore_latest(manager, state)
    results = evaluation.evaluate_state(config, state, decoder,
                                        train.LossWeights.from_config(config.loss),
                                        num_batches=FLAGS.eval_batches)
    results["step"] = step
    evaluation.write_json(os.path.join(FLAGS.workdir, "eval.json"), results)
    print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
