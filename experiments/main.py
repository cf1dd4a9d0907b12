"""Trains a model-based face autoencoder: python -m experiments.main --config=... --workdir=..."""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mofa import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/quickstart.py",
                                "Experiment configuration (a get_config() file).", lock_config=True)
flags.DEFINE_string("workdir", "workdir/quickstart", "Checkpoints, metrics and images go here.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-host GPU/TPU).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.multihost:
        jax.distributed.initialize()
    logging.info("JAX process %d/%d, %d local devices, %d total", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    if "bootstrap" in FLAGS.config:  # InverseFaceNet rounds (experiments/configs/bootstrap.py)
        from mofa import bootstrap

        results = bootstrap.run(FLAGS.config, FLAGS.workdir)
    elif "detail" in FLAGS.config:  # FineNet (experiments/configs/detail_*.py)
        from mofa import detail

        results = detail.train_detail(FLAGS.config, FLAGS.workdir)
    else:
        results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info("evaluation: %s", results)


if __name__ == "__main__":
    app.run(main)
