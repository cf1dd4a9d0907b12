"""FineNet's training on `trainer.run_steps`: its state, checkpoints and `train_detail`."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from mofa import facemodel, trainer
from mofa.detail.synthetic import camera_for
from mofa.detail.model import FineNet, NUM_FEATURES
from mofa.detail.losses import DetailWeights, train_step
from mofa.detail.data import CoarseSource
from mofa.detail.evaluation import evaluate_photos, evaluate_synthetic


def create_state(config: ml_collections.ConfigDict, key: jax.Array) -> trainer.TrainState:
    net = FineNet(width=config.fine.width, depth=config.fine.depth)
    size = config.image_size
    return trainer.initial_state(net.init, net.apply, trainer.make_optimizer(config), key,
                                 jnp.zeros((1, size, size, NUM_FEATURES)),
                                 jnp.zeros((1, size, size)))


def load_detail(workdir: str) -> tuple[ml_collections.ConfigDict, trainer.TrainState, int]:
    """(config, state, step) of the latest checkpoint of a `train_detail` workdir."""
    workdir = os.path.abspath(workdir)
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a detail workdir")
    with open(config_path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    if "fine" not in config:
        raise ValueError(f"{workdir} is a training workdir without a FineNet (config.fine)")
    state = create_state(config, jax.random.key(config.seed))
    manager = trainer.checkpoint_manager(workdir, config)
    if manager.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    state, step = trainer.restore_latest(manager, state)
    manager.close()
    return config, state, step


def train_detail(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains FineNet per `config` (phase by its loss weights), checkpointing to `workdir`.

    Resumes from the workdir's last checkpoint; a fresh run starts from
    detail.init_workdir's FineNet if set (phase 2 after phase 1). Returns the
    coarse-vs-fine synthetic errors over config.eval_batches batches (also written to
    workdir/eval.json; none if 0).
    """
    from mofa import metric_log

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_lead = jax.process_index() == 0
    if is_lead:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))
    weights = DetailWeights.from_config(config.loss)
    model = facemodel.load(config.face_model)
    camera = camera_for(config.image_size)
    parallel = trainer.DataParallel.create(config.batch_size)
    state = jax.device_put(create_state(config, jax.random.key(config.seed)), parallel.replicated)
    checkpoints = trainer.checkpoint_manager(workdir, config)
    state, start_step = trainer.restore_latest(checkpoints, state)
    init_workdir = config.detail.get("init_workdir", "")
    if start_step == 0 and init_workdir:
        _, init_state, _ = load_detail(init_workdir)
        state = state.replace(params=jax.device_put(init_state.params, parallel.replicated))
    source = CoarseSource(config, model, camera, workdir)
    if (weights.depth or weights.normal) and source.photos is not None:
        raise ValueError("supervised detail losses need data.source='synthetic_detail'")
    step_fn = jax.jit(functools.partial(train_step, weights=weights), donate_argnums=(0,),
                      out_shardings=(parallel.replicated, parallel.replicated))
    writer = metric_log.MetricWriter(workdir, enabled=is_lead)
    state = trainer.run_steps(config, state, lambda state, batch, step: step_fn(state, batch, camera),
                            source, parallel, checkpoints, writer, start_step, desc="FineNet")
    results = {}
    params = trainer.local_copy(state.params)  # each process evaluates alone
    if config.eval_batches:
        results.update(evaluate_synthetic(model, state.apply_fn, params, config.image_size,
                                          config.eval_batches, config.eval_batch_size,
                                          encoder=source.encoder))
    eval_photos = config.detail.get("eval_photos", "")
    if eval_photos:
        results.update(evaluate_photos(model, state.apply_fn, params, eval_photos,
                                       source.photo_codes(), config.image_size,
                                       config.eval_batch_size))
    if results and is_lead:
        writer.write_scalars(config.num_steps, {f"eval/{k}": v for k, v in results.items()})
        with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    writer.close()
    return results
