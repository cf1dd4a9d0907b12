"""The training machinery every task shares: the train state, the optimizer, SPMD data
parallelism over a device mesh (every process's devices), orbax checkpoints, and the
one training loop (`run_steps`: prefetch, shard, step, finite check, metrics, hook,
checkpoint). The tasks (`mofa.train` for MoFA, `mofa.detail.training` for FineNet,
`mofa.bootstrap`) bring their step functions and sources.

Data parallelism is SPMD: the batch is sharded over a 1-D `jax.make_mesh` mesh with
`NamedSharding`, parameters are replicated, and XLA inserts the gradient all-reduce
(the modern form of pmap training).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from mofa.data import common as data_common


class TrainState(train_state.TrainState):
    batch_stats: Any = None


def initial_state(init: Callable[..., dict], apply_fn: Callable,
                  tx: optax.GradientTransformation, *init_args) -> TrainState:
    """The step-0 TrainState of a Flax module: its variables (`init(*init_args)`, e.g.
    `module.init`) and the optimizer's state made by one jitted program. Run op by op,
    the optimizer's zeros compiled a small program per parameter shape (19 for an
    encoder) in every process that built a state."""
    def variables_and_optimizer(*args):
        variables = init(*args)
        return variables, tx.init(variables["params"])

    variables, opt_state = jax.jit(variables_and_optimizer)(*init_args)
    return TrainState(step=0, apply_fn=apply_fn, params=variables["params"], tx=tx,
                      opt_state=opt_state, batch_stats=variables.get("batch_stats", {}))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate,
        warmup_steps=min(config.warmup_steps, max(config.num_steps - 1, 1)),
        decay_steps=max(config.num_steps, 2), end_value=config.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adam(schedule))


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """SPMD data parallelism over every device (of every process): a 1-D "data" mesh,
    parameters replicated, each batch split along its first axis."""

    mesh: jax.sharding.Mesh

    @classmethod
    def create(cls, batch_size: int) -> "DataParallel":
        num_devices = jax.device_count()
        if batch_size % num_devices:
            raise ValueError(f"config.batch_size={batch_size} must be divisible by the "
                             f"{num_devices} devices")
        return cls(jax.make_mesh((num_devices,), ("data",),
                                 axis_types=(jax.sharding.AxisType.Auto,)))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def process_rows(self, batch_size: int) -> slice:
        """This process's rows of every global batch: the contiguous block its devices
        hold (`jax.make_mesh` orders devices by process), so each process produces only
        its own share of the data (`source.batch(step, batch_size, rows)`)."""
        count, index = jax.process_count(), jax.process_index()
        if batch_size % count:
            raise ValueError(f"batch_size={batch_size} must be divisible by the {count} processes")
        share = batch_size // count
        return slice(index * share, (index + 1) * share)

    def shard(self, local_batch):
        """This process's rows of a global batch -> global arrays split over the devices."""
        data = NamedSharding(self.mesh, P("data"))
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(data, x),
                            local_batch)


def connect_processes(timeout_seconds: int = 600) -> None:
    """Connects the processes' collectives while they are in step (multi-process runs).

    A CPU process group (gloo) exchanges its peers' addresses the first time a program
    all-reduces over a set of devices, and gives up after 30 s, which XLA does not let
    us configure: processes that reach their first train step further apart than that
    (a loaded machine, one process compiling while another loads the compilation
    cache) fail. One tiny all-reduce over every device, compiled first and run right
    after a barrier of the coordination service (whose timeout is ours), sets the group
    up; later collectives reuse it and wait as long as XLA's collective timeout allows.
    """
    if jax.process_count() == 1:
        return
    parallel = DataParallel.create(jax.device_count())  # the mesh training uses
    ones = parallel.shard(np.ones(jax.local_device_count(), np.float32))
    total = jax.jit(jax.numpy.sum, out_shardings=parallel.replicated).lower(ones).compile()
    ocp.multihost.get_barrier_sync_fn()(key="mofa_connect_processes",
                                        timeout_ms=timeout_seconds * 1000)
    count = float(np.asarray(total(ones).addressable_data(0)))
    if count != jax.device_count():
        raise RuntimeError(f"the all-reduce over {jax.device_count()} devices returned {count}")


def local_copy(tree):
    """Replicated arrays -> this process's copy of them on one of its devices.

    Evaluation and pictures run on one device of each process: a global array that
    spans several processes cannot be read whole, and a computation on replicated
    inputs would run once per device.
    """
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x,
                        tree)


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    # Orbax's default replica-parallel save splits every replicated array over its
    # replicas for the device-to-host copy, compiling a slice per array (~130 jits, 4-9 s
    # on 2 CPU cores) at a run's first save; a train state of a few MB is copied whole
    # from one replica instead (orbax's default on GPUs too).
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    return ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint_keep,
                                             save_interval_steps=config.checkpoint_every,
                                             enable_async_checkpointing=True, create=True))


def restore_latest(checkpoints: ocp.CheckpointManager, state: TrainState) -> tuple:
    """The latest checkpointed state (shaped and sharded like `state`) and its step."""
    step = checkpoints.latest_step()
    if step is None:
        return state, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    logging.info("restoring step %d from %s", step, checkpoints.directory)
    return checkpoints.restore(step, args=ocp.args.StandardRestore(abstract)), step


def check_finite(step: int, values: dict) -> None:
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite training loss at step {step}: "
            + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())))


def run_steps(config: ml_collections.ConfigDict, state, step_fn, source, parallel: DataParallel,
              checkpoints: ocp.CheckpointManager, writer, start_step: int, desc: str = "train",
              after_step=None):
    """The loop every trainer runs, from `start_step` to `config.num_steps`; returns the
    final state.

    Each step: this process's rows of the global batch from `source` (prepared by one
    thread ahead: a batch is a pure function of its step), sharded over the devices,
    `step_fn(state, batch, step) -> (state, scalar metrics)`, a stop naming the terms at
    a non-finite loss, metrics every `config.log_every` steps, `after_step(step, state,
    local_batch)` (pictures, interim evaluations), a checkpoint.
    """
    from tqdm import tqdm

    progress = tqdm(range(start_step, config.num_steps), initial=start_step,
                    total=config.num_steps, desc=desc, unit="step",
                    disable=jax.process_index() != 0 or not config.get("progress", True))
    rows = parallel.process_rows(config.batch_size)
    local_batches = data_common.ordered_map(
        lambda step: source.batch(step, config.batch_size, rows),
        range(start_step, config.num_steps), num_workers=1, prefetch=2)
    tick, seen = time.perf_counter(), 0
    for step, local_batch in zip(progress, local_batches):
        state, step_metrics = step_fn(state, parallel.shard(local_batch), step)
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        check_finite(step, values)
        seen += config.batch_size
        if (step + 1) % config.log_every == 0 or step + 1 == config.num_steps:
            rate = seen / max(time.perf_counter() - tick, 1e-9)
            writer.write_scalars(step + 1, {**values, "images_per_second": rate})
            progress.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.1f}")
            tick, seen = time.perf_counter(), 0
        if after_step is not None:
            after_step(step, state, local_batch)
        checkpoints.save(step + 1, args=ocp.args.StandardSave(state))
    if checkpoints.latest_step() != config.num_steps:
        checkpoints.save(config.num_steps, args=ocp.args.StandardSave(state), force=True)
    checkpoints.wait_until_finished()
    checkpoints.close()
    return state
