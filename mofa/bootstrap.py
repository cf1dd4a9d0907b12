"""InverseFaceNet's self-supervised bootstrapping (Kim et al. 2018).

A network trained on synthetic faces drawn from the model prior sees a corpus
unlike real images. Bootstrapping closes the gap in rounds: train on the
synthetic corpus, predict codes on unlabeled images (`config.data`), fit
per-dimension Gaussian moments to every predicted code field (pose,
translation, identity, expression, reflectance, light), redraw the synthetic
corpus to them (`synthetic.redraw`; backgrounds and framing noise as before)
and retrain from scratch. Round r trains in `workdir/round_r`; round 0 is the
plain prior corpus, so each round has the same training budget.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mofa import train
from mofa.decoder import Decoder
from mofa.code import FaceCode
from mofa.data import sources
from mofa.data.synthetic import CodeDistribution, Framing


def predict_codes(state, decoder: Decoder, source, num_images: int, batch_size: int,
                  refine_steps: int = 0) -> tuple[FaceCode, FaceCode | None]:
    """(the encoder's codes, the true codes or None) on the first `num_images` images of
    `source` (batch i of `batch_size`); the truth is there for synthetic sources.
    refine_steps: the encoder's own refinement (`train.encode`)."""
    encode = train.code_encoder(state, decoder, refine_steps)
    predicted, truth = [], []
    for i in range(-(-num_images // batch_size)):
        batch = source.batch(i, batch_size)
        predicted.append(encode(jnp.asarray(batch["image"])))
        if "code/rotation" in batch:
            truth.append(FaceCode.from_batch(batch))
    stack = lambda codes: jax.tree.map(lambda *x: np.concatenate(x)[:num_images], *codes)  # noqa: E731
    return stack(predicted), (stack(truth) if truth else None)


def train_rounds(config, workdir: str) -> list[dict]:
    """`config.bootstrap.num_rounds` rounds of train -> predict -> refit; returns each
    round's evaluation (the fitted moments go to `round_r/code_distribution.json`).

    An encoder's predictions are less spread than the truth where it is unsure
    (for the posterior mean, Var(prediction) = Var(truth) - E[error variance]), so
    fitting them alone would shrink the corpus round by round towards the mean
    face. The fitted variance therefore adds back the encoder's error variance,
    measured on its own synthetic corpus where the truth is known.
    """
    rounds = config.bootstrap.num_rounds
    if rounds < 1:
        raise ValueError(f"config.bootstrap.num_rounds must be at least 1, got {rounds}")
    if config.bootstrap.get("oracle"):
        # The upper bound: train on the "unlabeled" images themselves, with their truth.
        if config.data.source != "synthetic":
            raise ValueError("config.bootstrap.oracle needs config.data.source='synthetic' "
                             f"(ground truth), not {config.data.source!r}")
        return [train.train_and_evaluate(config, os.path.join(os.path.abspath(workdir),
                                                              "oracle"))]
    decoder = train.make_decoder(config)
    data_model = decoder.face_model
    if config.data.get("face_model"):
        from mofa import facemodel

        data_model = facemodel.load(config.data.face_model)
    unlabeled = sources.make_source(config, data_model, split="train")
    prior = CodeDistribution.of_framing(decoder.face_model, Framing())
    distribution = None  # round 0: the plain prior corpus
    num, batch_size = config.bootstrap.num_images, config.eval_batch_size
    results = []
    for r in range(rounds):
        round_dir = os.path.join(os.path.abspath(workdir), f"round_{r}")
        corpus = sources.SyntheticSource(decoder.face_model, config.image_size, config.seed + r,
                                         "train", distribution=distribution)
        results.append(train.train_and_evaluate(config, round_dir, source=corpus))
        if r + 1 == rounds:
            break
        _, state, _, _ = train.load_trained(round_dir)
        steps = train.config_refine_steps(config)
        codes, _ = predict_codes(state, decoder, unlabeled, num, batch_size, steps)
        corpus_codes, corpus_truth = predict_codes(state, decoder, corpus, num, batch_size,
                                                   steps)
        error_std = jax.tree.map(lambda p, t: np.std(p - t, axis=0), corpus_codes, corpus_truth)
        distribution = CodeDistribution.fit(codes, prior, config.bootstrap.min_relative_std,
                                            error_std=error_std)
        write_distribution(os.path.join(round_dir, "code_distribution.json"), distribution)
    return results


def write_distribution(path: str, distribution: CodeDistribution) -> None:
    """The fitted moments as JSON: {"mean"|"std": {field: nested lists}}."""
    as_lists = lambda code: {f.name: np.asarray(getattr(code, f.name)).tolist()  # noqa: E731
                             for f in dataclasses.fields(code)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"mean": as_lists(distribution.mean), "std": as_lists(distribution.std)}, f)
