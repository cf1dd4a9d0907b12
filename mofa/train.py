"""The MoFA task: training the model-based face autoencoder on `mofa.trainer`.

`train_and_evaluate(config, workdir)` is the one stateful entry point; the
jitted `train_step(state, batch, key, decoder, weights)` is pure and runs data
parallel over every device (`trainer.DataParallel`). The config never enters
jitted code: it is turned into a static `LossWeights` and array pytrees first.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from mofa import (corrective, evaluation, facemodel, fitting, images, landmark_calibration,
                  losses, metric_log, networks, render, visualize)
from mofa.code import DEFAULT_FOV_DEGREES, FaceCode
from mofa.decoder import Decoder
from mofa.losses import LossWeights
from mofa.data import sources
from mofa.trainer import (DataParallel, TrainState, checkpoint_manager, initial_state,
                          local_copy, make_optimizer, restore_latest, run_steps)


def _augment(batch: dict, key: jax.Array) -> dict:
    """Per-image exposure and white-balance jitter of a batch, consistent everywhere.

    The gain scales the photo the encoder reads *and* the photo the loss compares
    against (and a ground-truth illumination, which a linear-RGB gain scales the
    same way): exposure is part of the light the code must explain, so jittering
    the input alone would teach the encoder to ignore it.
    """
    k1, k2 = jax.random.split(key)
    b = batch["image"].shape[0]
    gain = (jax.random.uniform(k1, (b, 1, 1, 1), minval=0.8, maxval=1.2)
            * (1.0 + 0.05 * jax.random.normal(k2, (b, 1, 1, 3))))
    out = dict(batch, image=jnp.clip(batch["image"] * gain, 0.0, 1.0))
    if "code/illumination" in batch:  # (B, 9, 3) SH radiance per channel
        out["code/illumination"] = batch["code/illumination"] * gain[:, 0]
    return out


def encode(params, batch_stats, apply_fn, images, decoder: Decoder, train: bool = False,
           refine_steps: int = 0) -> tuple:
    """The encoder's reading of images (B, S, S, 3): (FaceCode, corrective coefficients or
    None, its heatmap landmarks (B, 68, 2) or None, new batch stats).

    refine_steps > 0 (`config.encoder.refine_steps`): the code is refined to the
    encoder's own heatmap landmarks (`refine_code`), a differentiable part of the model
    in training and evaluation alike."""
    variables = {"params": params, "batch_stats": batch_stats}
    mutable = ["batch_stats", "intermediates"] if train else ["intermediates"]
    raw, updates = apply_fn(variables, images, train=train, mutable=mutable)
    new_batch_stats = updates["batch_stats"] if train else batch_stats
    space = params.get("corrective")  # the learned corrective bases, if the level is on
    code, coefficients = networks.decode_outputs(raw, decoder.face_model, space)
    (encoder_landmarks,) = updates.get("intermediates", {}).get("landmarks", (None,))
    if refine_steps:
        if encoder_landmarks is None:
            raise ValueError("refine_steps needs an encoder with the landmark heatmap head "
                             "(config.encoder.landmark_head)")
        code = refine_code(code, encoder_landmarks, decoder, refine_steps)
    return code, coefficients, encoder_landmarks, new_batch_stats


def compute_losses(params, batch_stats, apply_fn, batch, decoder: Decoder, weights: LossWeights,
                   train: bool = True, refine_steps: int = 0):
    """Encodes, renders and scores a batch; returns (total, (terms, new_batch_stats, aux))."""
    code, coefficients, encoder_landmarks, new_batch_stats = encode(
        params, batch_stats, apply_fn, batch["image"], decoder, train, refine_steps)
    space = params.get("corrective")
    total, terms, diagnostics, out = losses.objective(code, batch, decoder, weights, space,
                                                      coefficients, encoder_landmarks)
    points, _ = decoder.scored_landmarks(code, out, batch["landmarks"], batch["landmark_weight"])
    landmark_px = jnp.sum(jnp.linalg.norm(points - batch["landmarks"], axis=-1)
                          * batch["landmark_weight"]) / jnp.maximum(
                              jnp.sum(batch["landmark_weight"]), 1.0)
    aux = {"code": code, "corrective": coefficients, "render": out,
           "encoder_landmarks": encoder_landmarks,
           "landmark_error_px": landmark_px, "diagnostics": diagnostics}
    return total, (terms, new_batch_stats, aux)


def train_step(state: TrainState, batch: dict, key: jax.Array, decoder: Decoder,
               weights: LossWeights, refine_steps: int = 0):
    """One optimizer step; pure. Returns the new state and scalar metrics."""
    batch = _augment(batch, key)

    def loss_fn(params):
        return compute_losses(params, state.batch_stats, state.apply_fn, batch, decoder, weights,
                              train=True, refine_steps=refine_steps)

    (total, (terms, batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics_ = {"loss": total, "grad_norm": optax.tree.norm(grads),
                "landmark_error_px": aux["landmark_error_px"],
                **{f"loss/{k}": v for k, v in terms.items()},
                **{f"loss/{k}": v for k, v in aux["diagnostics"].items()}}
    return new_state, metrics_


def eval_step(state: TrainState, batch: dict, decoder: Decoder, weights: LossWeights,
              refine_steps: int = 0):
    """Reconstruction of a batch without updates: metrics and the `compute_losses` aux
    (code, corrective coefficients, render)."""
    total, (terms, _, aux) = compute_losses(state.params, state.batch_stats, state.apply_fn,
                                            batch, decoder, weights, train=False,
                                            refine_steps=refine_steps)
    return {"loss": total, **{f"loss/{k}": v for k, v in terms.items()},
            "landmark_error_px": aux["landmark_error_px"]}, aux


# ---------------------------------------------------------------------------


def create_state(config: ml_collections.ConfigDict, model: facemodel.FaceModel,
                 key: jax.Array) -> TrainState:
    encoder = networks.FaceEncoder(backbone=config.encoder.backbone,
                                   output_size=networks.code_size(model),
                                   width=config.encoder.width,
                                   hidden=int(config.encoder.get("hidden", 1024)),
                                   dtype=jnp.dtype(config.encoder.get("dtype", "float32")),
                                   corrective_dims=corrective_dims(config),
                                   num_vertices=model.num_vertices,
                                   num_landmarks=(len(model.landmark_indices)
                                                  if config.encoder.get("landmark_head") else 0),
                                   exposure_inputs=bool(config.encoder.get("exposure_inputs")))
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    return initial_state(functools.partial(encoder.init, train=False), encoder.apply,
                         make_optimizer(config), key, dummy)


def corrective_dims(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(shape, albedo) sizes of the corrective level; (0, 0) when it is off."""
    level = config.get("corrective") or {}
    return int(level.get("shape_dim", 0)), int(level.get("albedo_dim", 0))


def make_decoder(config: ml_collections.ConfigDict) -> Decoder:
    model = facemodel.load(config.face_model)
    camera = render.Camera.from_fov(config.get("fov_degrees", DEFAULT_FOV_DEGREES),
                                    config.image_size, config.image_size)
    mesh = None
    if any(corrective_dims(config)):
        loss = config.get("loss") or {}
        symmetric = bool(loss.get("corrective_shape_symmetry", 0.0)
                         or loss.get("corrective_albedo_symmetry", 0.0))
        mesh = corrective.mesh_operators(model, symmetric=symmetric)
    return Decoder(face_model=model, camera=camera, mesh=mesh)


def photo_decoder(config: ml_collections.ConfigDict, decoder: Decoder) -> Decoder:
    """The decoder that scores `config.data`'s training batches: for photo sources
    (`sources.DETECTED_SOURCES`) with `config.data.calibrated_landmarks`, the detector's
    calibrated landmarks on the model (`landmark_calibration.detector_landmarks`), as
    `mofa reconstruct` fits them; otherwise `decoder` itself. Evaluation on rendered faces
    keeps `decoder`: their landmarks are the model's own vertices."""
    if (config.data.source not in sources.DETECTED_SOURCES
            or not config.data.get("calibrated_landmarks", True)):
        return decoder
    detector = landmark_calibration.detector_landmarks(decoder.face_model)
    if detector is None:
        logging.warning("face model %s has no calibrated landmark table: training scores "
                        "the detector's landmarks as the model's own vertices",
                        decoder.face_model.name)
        return decoder
    return decoder.replace(detector=detector)


def load_trained(workdir: str, face_model: str | None = None):
    """(config, state, decoder, step) of the latest checkpoint of a training workdir, or
    of an encoder file written by `export_encoder`."""
    if os.path.isfile(workdir):
        return _load_packaged(workdir, face_model)
    workdir = os.path.abspath(workdir)
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a mofa training "
                                "workdir (expected config.json and checkpoints/) nor an "
                                "encoder file")
    with open(config_path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    if face_model:
        config.face_model = face_model
    decoder = make_decoder(config)
    state = create_state(config, decoder.face_model, jax.random.key(config.seed))
    manager = checkpoint_manager(workdir, config)
    if manager.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    state, step = restore_latest(manager, state)
    manager.close()
    return config, state, decoder, step


def export_encoder(workdir: str, out: str, dtype: str = "float16") -> dict:
    """Packs the latest checkpoint of a training workdir into one encoder file at `out`
    (`pretrained.write_encoder`); `load_trained(out)` reads it back."""
    from mofa import pretrained

    config, state, decoder, step = load_trained(workdir)
    return pretrained.write_encoder(out, config, state.params, state.batch_stats, step,
                                    decoder.face_model, dtype)


def _load_packaged(path: str, face_model: str | None = None):
    from flax import serialization

    from mofa import pretrained

    config, variables, meta = pretrained.read_encoder(path)
    if face_model:
        config.face_model = face_model
    decoder = make_decoder(config)
    pretrained.check_model(meta, decoder.face_model, path)
    state = create_state(config, decoder.face_model, jax.random.key(config.seed))
    state = state.replace(
        params=serialization.from_state_dict(state.params, variables["params"]),
        batch_stats=serialization.from_state_dict(state.batch_stats, variables["batch_stats"]))
    return config, state, decoder, meta["step"]


def code_encoder(state: TrainState, decoder: Decoder, refine_steps: int = 0):
    """The trained encoder as a jitted function: images (B, S, S, 3) linear RGB -> FaceCode
    (the 3DMM level; a corrective level's coefficients are dropped). refine_steps: the
    encoder's own refinement (`encode`; a training config's `encoder.refine_steps`)."""
    return jax.jit(lambda images: encode(state.params, state.batch_stats, state.apply_fn,
                                         images, decoder, refine_steps=refine_steps)[0])


def config_refine_steps(config: ml_collections.ConfigDict) -> int:
    """The encoder's refinement steps of a training config (0 where the key predates it)."""
    return int(config.encoder.get("refine_steps", 0))


def config_fit_steps(config: ml_collections.ConfigDict) -> int:
    """The test-time photometric fit's steps of a training config (`fit_code`; 0 where
    the key predates it)."""
    return int(config.encoder.get("fit_steps", 0))


# The encoder's own heatmap landmarks (`config.encoder.landmark_head`) refine its code
# with the training noise model's detector sigma, a quarter of their 136 coordinates
# counted as independent (the encoder's errors are correlated, e.g. a shared offset from
# its pose), and the derived priors of fitting. Measured on two quickstart encoders:
# counting all of them (or loosening the identity prior) fits their noise into identity.
REFINE_OPTIONS = dataclasses.replace(
    fitting.FitOptions().with_landmark_noise(losses.NoiseModel().landmark_sigma,
                                             independent_fraction=0.25),
    prior_identity=fitting.FitOptions().prior_identity)


def refine_code(code, encoder_landmarks: jax.Array, decoder: Decoder, steps: int,
                options: fitting.FitOptions = REFINE_OPTIONS):
    """The encoder's code refined by a landmark fit (`fitting.fit_landmarks`: `steps`
    Adam steps on pose, then identity and expression, unrolled, so differentiable) to
    the encoder's own heatmap landmarks (B, 68, 2). The head reads those landmarks only
    through a small MLP and learns from them slowly, so they are more accurate than its
    code's landmarks; the fit closes that gap without a detector, and in training the
    losses of the refined code reach the heatmaps and the head through it (README,
    "Quickstart results")."""
    weight = jnp.ones(encoder_landmarks.shape[:2], encoder_landmarks.dtype)
    return fitting.fit_landmarks(decoder.face_model, decoder.camera, encoder_landmarks, weight,
                                 steps=steps, init_code=code, options=options)


# Analysis by synthesis at test time (`config.encoder.fit_steps`): the encoder's code as
# the start of a photometric fit (`fitting.fit`) to the image and the encoder's own
# landmarks, weighted as in `refine_code`. Every step fits all fields with the dense
# term: the encoder's pose is already close, and on the quickstart encoder that beat
# fitting's rigid and landmark-shape stages first (expression 1.80 against 1.88 mm
# after 150 steps). With the dense term's evidence the identity and reflectance priors
# are the calibrated fit's looser one (`fitting.CALIBRATED_PRIOR_IDENTITY`, where the
# landmark-only refinement keeps the stricter): on the quickstart and the 128 px
# supervised encoders alike that lowered identity, light and albedo errors (README,
# "Quickstart results"). The illumination prior weighs as the reflectance prior: the
# two split the image's brightness between skin and light. The coarse steps (crops of
# 128 px and up) render the full mesh: this fit runs under jit, where the model is
# traced and cannot be decimated (`fitting.coarse_render_model`).
FIT_OPTIONS = dataclasses.replace(REFINE_OPTIONS, rigid_fraction=0.0, shape_fraction=0.0,
                                  prior_identity=fitting.CALIBRATED_PRIOR_IDENTITY,
                                  prior_reflectance=fitting.CALIBRATED_PRIOR_IDENTITY,
                                  prior_illumination=fitting.CALIBRATED_PRIOR_IDENTITY,
                                  coarse_mesh_mm=0.0)


def fit_code(code: FaceCode, images: jax.Array, encoder_landmarks: jax.Array,
             decoder: Decoder, steps: int,
             options: fitting.FitOptions = FIT_OPTIONS,
             corrections: tuple[jax.Array, jax.Array] | None = None) -> FaceCode:
    """The encoder's code fitted to its images (B, S, S, 3) for `steps` photometric
    steps (`options`: FIT_OPTIONS but in ablations), the encoder's heatmap landmarks
    (B, 68, 2) as the landmark term. Evaluation and inference only: training never
    differentiates through it.

    corrections: the corrective level's per-image (shape mm, albedo) offsets (B, V, 3),
    held fixed while the 3DMM code is fitted on top of them: each face is fitted with
    its own corrected model (mean shape and albedo plus its offsets)."""
    if encoder_landmarks is None:
        raise ValueError("fit_steps needs an encoder with the landmark heatmap head "
                         "(config.encoder.landmark_head)")
    model = decoder.face_model
    weight = jnp.ones(encoder_landmarks.shape[:2], encoder_landmarks.dtype)
    if corrections is None:
        return fitting.fit(model, decoder.camera, images, encoder_landmarks, weight,
                           init_code=code, steps=steps, options=options)

    def fit_one(code, image, landmarks, weight, shape_offset, albedo_offset):
        corrected = model.replace(mean_shape=model.mean_shape + shape_offset,
                                  albedo_mean=model.albedo_mean + albedo_offset)
        one = jax.tree.map(lambda x: x[None], code)
        fitted = fitting.fit(corrected, decoder.camera, image[None], landmarks[None],
                             weight[None], init_code=one, steps=steps, options=options)
        return jax.tree.map(lambda x: x[0], fitted)

    return jax.vmap(fit_one)(code, images, encoder_landmarks, weight, *corrections)


def predictor(state: TrainState, decoder: Decoder, weights: LossWeights, refine_steps: int = 0,
              fit_steps: int = 0):
    """The trained encoder's reconstruction of a batch, jitted, as evaluation wants it:
    batch -> (FaceCode, RenderOutput, corrective shape offset (B, V, 3) or None).
    refine_steps: the encoder's refinement to its own landmarks (`encode`); fit_steps:
    then the test-time photometric fit (`fit_code`: the 3DMM code, on top of the
    corrective level's offsets where the encoder has one)."""
    return functools.partial(_predict, state, decoder, weights=weights,
                             refine_steps=refine_steps, fit_steps=fit_steps)


# Module-level, so every evaluation of one shape and setting reuses the compiled program.
@functools.partial(jax.jit, static_argnames=("weights", "refine_steps", "fit_steps"))
def _predict(state, decoder, batch, weights: LossWeights, refine_steps: int, fit_steps: int):
    _, aux = eval_step(state, batch, decoder, weights, refine_steps)
    space, coefficients = state.params.get("corrective"), aux["corrective"]
    offsets = None if coefficients is None else corrective.corrections(space, coefficients)
    if fit_steps:
        code = fit_code(aux["code"], batch["image"], aux["encoder_landmarks"], decoder,
                        fit_steps, corrections=offsets)
        out = decoder.render(code, space, coefficients, background=batch["image"])
        return code, out, None if offsets is None else offsets[0]
    return aux["code"], aux["render"], None if offsets is None else offsets[0]


def evaluate_state(config, state: TrainState, decoder: Decoder, weights: LossWeights,
                   num_batches: int | None = None, refine_steps: int | None = None,
                   fit_steps: int | None = None, **options) -> dict:
    """`evaluation.evaluate_predictions` of a trained state (options: num_faces,
    face_model, yaw_split_degrees; refine_steps: see `encode`, fit_steps: see
    `fit_code`, both default to the config's)."""
    if refine_steps is None:
        refine_steps = config_refine_steps(config)
    if fit_steps is None:
        fit_steps = config_fit_steps(config)
    return evaluation.evaluate_predictions(
        config, predictor(state, decoder, weights, refine_steps, fit_steps), decoder,
        num_batches, **options)


def evaluate_checkpoint(workdir: str, num_faces: int | None = None,
                        num_batches: int | None = None, face_model: str | None = None,
                        yaw_split_degrees: float | None = None,
                        refine_steps: int | None = None, fit_steps: int | None = None) -> dict:
    """`evaluate_state` of a training workdir's latest checkpoint on synthetic test faces
    (rendered ones where it trained on photos); adds "step" and "face_model"."""
    if num_faces is not None and num_faces < 1:
        raise ValueError(f"num_faces={num_faces}: must be at least 1")
    config, state, decoder, step = load_trained(workdir)
    if config.data.source not in ("synthetic", "synthetic_tfds"):
        config.data.source = "synthetic"  # trained on photos: test on rendered faces
    if refine_steps is None:
        refine_steps = config_refine_steps(config)
    if fit_steps is None:
        fit_steps = config_fit_steps(config)
    results = evaluate_state(config, state, decoder, losses.LossWeights.from_config(config.loss),
                             num_batches=num_batches, num_faces=num_faces,
                             face_model=face_model, yaw_split_degrees=yaw_split_degrees,
                             refine_steps=refine_steps, fit_steps=fit_steps)
    results.update(step=step, face_model=face_model or config.face_model,
                   refine_steps=refine_steps, fit_steps=fit_steps)
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, source=None) -> dict:
    """Trains per `config`, checkpointing to `workdir`; resumes from its last checkpoint.

    source: the training batches (`source.batch(step, batch_size)`) in place of
    `config.data`'s, which then serves evaluation only (e.g. `mofa.bootstrap`).

    Returns the final evaluation metrics (also written to `workdir/eval.json`; those of
    the untrained encoder go to `workdir/eval_initial.json`). Evaluation runs on one
    device of process 0 only (every process would score the same test faces); the other
    processes return an empty dict, and so does a run with `config.eval_batches = 0`
    (training only: `mofa evaluate` scores its checkpoints later).
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if config.eval_batches < 0:
        raise ValueError(f"config.eval_batches must be >= 0 (0: no evaluation), "
                         f"got {config.eval_batches}")
    is_lead = jax.process_index() == 0
    evaluates = is_lead and config.eval_batches > 0
    if is_lead:  # what `load_trained` needs to rebuild the model from the workdir alone
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))
    writer = metric_log.MetricWriter(workdir, enabled=is_lead)
    weights = LossWeights.from_config(config.loss)
    decoder = make_decoder(config)
    # How the training batches' landmarks are scored (a `source` given here is rendered).
    train_decoder = photo_decoder(config, decoder) if source is None else decoder

    parallel = DataParallel.create(config.batch_size)
    replicated = parallel.replicated

    root_key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(root_key)
    state = create_state(config, decoder.face_model, init_key)
    state = jax.device_put(state, replicated)
    decoder, train_decoder = jax.device_put((decoder, train_decoder), replicated)

    checkpoints = checkpoint_manager(workdir, config)
    state, start_step = restore_latest(checkpoints, state)

    if start_step == 0 and config.eval_before_training and evaluates:
        # The untrained head's code (mean face, frontal) is the baseline for "it learns";
        # refined to untrained heatmaps it would be a worse, arbitrary one.
        initial = evaluate_state(config, local_copy(state), local_copy(decoder), weights,
                                 refine_steps=0, fit_steps=0)
        evaluation.write_json(os.path.join(workdir, "eval_initial.json"), initial)
        writer.write_scalars(0, {f"eval/{k}": v for k, v in initial.items()})

    if source is None:
        # One device renders the synthetic stream (the batch is sharded afterwards): with
        # the replicated model every device would render the whole batch (measured with 8
        # CPU devices: 0.38 against 0.08 s a batch of 16 at 64 px).
        data_model = (facemodel.load(config.data.face_model) if config.data.get("face_model")
                      else local_copy(decoder.face_model))
        source = sources.make_source(config, data_model, split="train")
    refine_steps = config_refine_steps(config)
    step_fn = jax.jit(functools.partial(train_step, weights=weights, refine_steps=refine_steps),
                      donate_argnums=(0,),
                      out_shardings=(replicated, replicated))

    image_step = jax.jit(functools.partial(eval_step, weights=weights,
                                           refine_steps=refine_steps))

    def after_step(step: int, state: TrainState, local_batch: dict) -> None:
        if (step + 1) % config.image_every == 0 or step + 1 == config.num_steps:
            if is_lead:  # this process's rows of the batch
                _, aux = image_step(local_copy(state), jax.tree.map(jnp.asarray, local_batch),
                                    local_copy(train_decoder))
                sheet = visualize.contact_sheet(local_batch, jax.device_get(aux["render"]))
                images.save_png(os.path.join(workdir, "images", f"step_{step + 1:07d}.png"), sheet)
                writer.write_images(step + 1, {"reconstructions": sheet})
        eval_every = config.get("eval_every", 0)
        if (evaluates and eval_every and (step + 1) % eval_every == 0
                and step + 1 < config.num_steps):
            # Learning curves of the test-set metrics (metrics.jsonl, "eval/...").
            interim = evaluate_state(config, local_copy(state), local_copy(decoder), weights,
                                     fit_steps=0)
            writer.write_scalars(step + 1, {f"eval/{k}": v for k, v in interim.items()})

    state = run_steps(
        config, state, lambda state, batch, step: step_fn(
            state, batch, jax.random.fold_in(train_key, step), train_decoder),
        source, parallel, checkpoints, writer, start_step, after_step=after_step)

    results = {}
    if evaluates:
        # The learning curves ("eval/...") follow the encoder alone; with a test-time fit
        # (`fit_code`) eval.json scores the encoder and the fit, eval_encoder.json the
        # encoder alone, and the curves end with both ("eval_fitted/..."). Contact sheets
        # of the first test faces show either.
        def final_evaluation(fit_steps: int, name: str) -> dict:
            predict = predictor(local_copy(state), local_copy(decoder), weights,
                                refine_steps, fit_steps)
            first = []

            def keep_first(batch):
                out = predict(batch)
                if not first:
                    first.append(visualize.contact_sheet(batch, jax.device_get(out[1])))
                return out

            summary = evaluation.evaluate_predictions(config, keep_first, local_copy(decoder))
            images.save_png(os.path.join(workdir, "images", f"test_{name}.png"), first[0])
            return summary

        fit_steps = config_fit_steps(config)
        encoder_only = final_evaluation(0, "encoder")
        writer.write_scalars(config.num_steps, {f"eval/{k}": v for k, v in encoder_only.items()})
        results = encoder_only
        if fit_steps:
            evaluation.write_json(os.path.join(workdir, "eval_encoder.json"), encoder_only)
            results = final_evaluation(fit_steps, "fitted")
            writer.write_scalars(config.num_steps,
                                 {f"eval_fitted/{k}": v for k, v in results.items()})
        evaluation.write_json(os.path.join(workdir, "eval.json"), results)
    writer.close()
    return results
