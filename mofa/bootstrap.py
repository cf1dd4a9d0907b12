"""InverseFaceNet's self-supervised bootstrapping (Kim et al. 2018).

A network trained on synthetic faces drawn from the model prior sees a corpus
unlike real images. Bootstrapping closes the gap in rounds: train on the
synthetic corpus, predict codes on unlabeled images (`config.data`), fit a
per-dimension Gaussian to the predicted identity / expression / reflectance
codes, re-draw the synthetic corpus from it (pose, light and background as
before) and retrain. Round r trains in `workdir/round_r`.
"""

from __future__ import annotations

import json
import os
import zlib

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mofa import networks, train
from mofa.code import FaceCode
from mofa.data import sources, synthetic
from mofa.facemodel import FaceModel

FIELDS = ("identity", "expression", "reflectance")


@flax.struct.dataclass
class CodeDistribution:
    """Per-dimension Gaussian of the standardized codes: {field: (K,)} means and stds."""

    mean: dict
    std: dict

    @classmethod
    def prior(cls, model: FaceModel, expression_scale: float) -> "CodeDistribution":
        """The model prior as the synthetic renderer draws it."""
        sizes = {"identity": model.num_identity, "expression": model.num_expression,
                 "reflectance": model.num_albedo}
        scales = {"identity": 1.0, "expression": expression_scale, "reflectance": 1.0}
        return cls(mean={f: jnp.zeros(sizes[f]) for f in FIELDS},
                   std={f: jnp.full(sizes[f], scales[f]) for f in FIELDS})


def fit(codes: FaceCode, min_std: float = 0.05) -> CodeDistribution:
    """The per-dimension Gaussian of a batch of codes (B, K); `min_std` keeps every
    direction explored even where the encoder collapsed it."""
    values = {f: np.asarray(getattr(codes, f)) for f in FIELDS}
    if len(values["identity"]) < 2:
        raise ValueError("fitting a code distribution needs at least 2 codes")
    return CodeDistribution(mean={f: jnp.asarray(v.mean(0)) for f, v in values.items()},
                            std={f: jnp.asarray(np.maximum(v.std(0), min_std))
                                 for f, v in values.items()})


def redraw(code: FaceCode, prior: CodeDistribution, target: CodeDistribution) -> FaceCode:
    """Maps codes drawn from `prior` to `target` (same standard-normal draw, new Gaussian)."""
    return code.replace(**{f: target.mean[f] + target.std[f] * (getattr(code, f) - prior.mean[f])
                           / prior.std[f] for f in FIELDS})


class BootstrapSource:
    """Synthetic faces whose shape / expression / reflectance follow `distribution`.

    Everything else (pose, light, framing, background, quantization) is the
    `SyntheticSource`'s; batch i uses the same key stream as it does.
    """

    def __init__(self, model: FaceModel, image_size: int, seed: int, split: str,
                 distribution: CodeDistribution):
        self._model, self._size, self._distribution = model, image_size, distribution
        self._framing = synthetic.Framing()
        self._prior = CodeDistribution.prior(model, self._framing.expression_scale)
        self._key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(split.encode()))

    def batch(self, step: int, batch_size: int) -> dict:
        code, background = synthetic.random_inputs(
            self._model, jax.random.fold_in(self._key, step), batch_size, self._size,
            self._framing)
        code = redraw(code, self._prior, self._distribution)
        batch = jax.device_get(synthetic.render_codes(self._model, code, background, self._size))
        batch = {k: np.asarray(v, np.float32) for k, v in batch.items()}
        batch["image"] = synthetic.decode_srgb8(synthetic.encode_srgb8(batch["image"]))
        return batch


def predict_codes(config, state, decoder: train.Decoder, num_images: int) -> FaceCode:
    """The encoder's codes on `num_images` unlabeled training images of `config.data`."""
    data_model = decoder.face_model
    if config.data.get("face_model"):
        from mofa import facemodel

        data_model = facemodel.load(config.data.face_model)
    source = sources.make_source(config, data_model, split="train")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    space = state.params.get("corrective")

    @jax.jit
    def encode(images):
        raw = state.apply_fn(variables, images, train=False)
        return networks.decode_outputs(raw, decoder.face_model, space)[0]

    batch_size = config.eval_batch_size
    codes = [encode(jnp.asarray(source.batch(i, batch_size)["image"]))
             for i in range(-(-num_images // batch_size))]
    return jax.tree.map(lambda *x: np.concatenate(x)[:num_images], *codes)


def run(config, workdir: str) -> list[dict]:
    """`config.bootstrap.num_rounds` rounds of train -> predict -> refit; returns each
    round's evaluation (the fitted distributions go to `round_r/code_distribution.json`)."""
    rounds = config.bootstrap.num_rounds
    if rounds < 1:
        raise ValueError(f"config.bootstrap.num_rounds must be at least 1, got {rounds}")
    decoder = train.make_decoder(config)
    # Round 0 draws from the model prior, i.e. it is the plain synthetic corpus.
    distribution = CodeDistribution.prior(decoder.face_model, synthetic.Framing().expression_scale)
    results = []
    for r in range(rounds):
        round_dir = os.path.join(os.path.abspath(workdir), f"round_{r}")
        corpus = BootstrapSource(decoder.face_model, config.image_size, config.seed + r, "train",
                                 distribution)
        results.append(train.train_and_evaluate(config, round_dir, source=corpus))
        if r + 1 == rounds:
            break
        _, state, _, _ = train.load_trained(round_dir)
        codes = predict_codes(config, state, decoder, config.bootstrap.num_images)
        distribution = fit(codes, config.bootstrap.min_std)
        with open(os.path.join(round_dir, "code_distribution.json"), "w", encoding="utf-8") as f:
            json.dump(jax.tree.map(lambda x: np.asarray(x).tolist(),
                                   {"mean": distribution.mean, "std": distribution.std}), f)
    return results
