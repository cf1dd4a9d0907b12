"""Trains a model-based face autoencoder: python -m experiments.main --config=... --workdir=..."""

import importlib

import jax
from absl import app, flags, logging
from ml_collections import config_flags

import mofa
from mofa import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/quickstart.py",
                                "Experiment configuration (a get_config() file).", lock_config=True)
flags.DEFINE_string("workdir", "workdir/quickstart", "Checkpoints, metrics and images go here.")
flags.DEFINE_bool("multihost", False,
                  "One process per host: call jax.distributed.initialize() (coordinator and "
                  "process ids auto-detected on SLURM, Open MPI and Cloud TPU, or set below).")
flags.DEFINE_string("coordinator_address", None,
                    "--multihost: HOST:PORT of process 0's coordination service.")
flags.DEFINE_integer("num_processes", None, "--multihost: number of processes.")
flags.DEFINE_integer("process_id", None, "--multihost: this process's index.")
flags.DEFINE_integer("heartbeat_timeout_seconds", 100,
                     "--multihost: a process that stops responding for this long ends the run "
                     "in every other process with an error (then relaunch all to resume).")
flags.DEFINE_integer("shutdown_timeout_seconds", 3600,
                     "--multihost: how long finished processes wait at exit for the others; "
                     "process 0 runs the final evaluation alone meanwhile.")


def _task(module: str, name: str):
    return lambda: getattr(importlib.import_module(f"mofa.{module}"), name)


# config.task -> its stateful entry point (config, workdir) -> results.
TASKS = {"mofa": _task("train", "train_and_evaluate"),
         "bootstrap": _task("bootstrap", "train_rounds"),
         "detail": _task("detail", "train_detail")}


def initialize_distributed():
    """jax.distributed.initialize() from the flags; CPU processes use gloo collectives."""
    # Only the CPU backend reads this; without it CPU processes cannot all-reduce.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
                               shutdown_timeout_seconds=FLAGS.shutdown_timeout_seconds)
    trainer.connect_processes()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
    if any(v is not None for v in explicit) and not FLAGS.multihost:
        raise app.UsageError("--coordinator_address/--num_processes/--process_id need --multihost")
    mofa.enable_compilation_cache()  # before the first compilation (connect_processes')
    if FLAGS.multihost:
        initialize_distributed()
    logging.info("JAX process %d/%d, %d local devices, %d total", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    task = FLAGS.config.get("task", "mofa")
    if task not in TASKS:
        raise app.UsageError(f"config.task={task!r}: expected one of {sorted(TASKS)}")
    try:
        results = TASKS[task]()(FLAGS.config, FLAGS.workdir)
    except jax.errors.JaxRuntimeError:
        if jax.process_count() > 1:  # a collective failed: another process is gone
            logging.error("process %d of %d: a collective with another process failed, so "
                          "this run stops; relaunch every process to resume from the last "
                          "checkpoint in %s", jax.process_index(), jax.process_count(),
                          FLAGS.workdir)
        raise
    if results:  # process 0's
        logging.info("evaluation: %s", results)


if __name__ == "__main__":
    app.run(main)
