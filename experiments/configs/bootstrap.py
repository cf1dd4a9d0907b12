"""InverseFaceNet bootstrapping: supervised synthetic training, redrawn from predicted codes.

Each round trains with the model-space loss on a synthetic corpus of the
builtin model, then fits per-dimension Gaussian moments to the codes the
encoder predicts on the unlabeled images of `config.data` and redraws the
next round's corpus to them (`mofa.bootstrap`). Here the "real" images are a
population unlike the prior the first corpus is drawn from: wider head poses
(yaw +-60 degrees, pitch +-25), stronger expressions and light
(`config.data.framing`); their ground truth is only used for evaluation. For
photos set `data.source` to "folder" and `data.path`.
"""

import ml_collections

from experiments.configs import synthetic_supervised


def get_config():
    config = synthetic_supervised.get_config()
    config.task = "bootstrap"
    config.data.source = "synthetic"
    config.data.framing = ml_collections.ConfigDict({
        "max_yaw_degrees": 60.0, "max_pitch_degrees": 25.0, "max_roll_degrees": 15.0,
        "expression_scale": 1.2, "light_strength": 1.1})
    config.image_size = 64
    config.encoder.width = 32
    # The rounds compare encoders: their evaluations score the encoder alone.
    config.encoder.fit_steps = 0
    config.batch_size = 16
    config.num_steps = 800  # per round, each from scratch
    config.learning_rate = 1e-3
    config.warmup_steps = 50
    config.eval_batches = 4
    config.eval_batch_size = 32

    config.bootstrap = ml_collections.ConfigDict()
    config.bootstrap.num_rounds = 3
    config.bootstrap.num_images = 512  # unlabeled images the moments are fitted to
    # Each fitted std is at least this fraction of the prior's (no direction collapses).
    config.bootstrap.min_relative_std = 0.25
    # True: instead, train once on the population itself with its ground truth
    # (workdir/oracle), the upper bound the rounds approach.
    config.bootstrap.oracle = False
    return config
