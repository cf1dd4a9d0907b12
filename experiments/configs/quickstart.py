"""Quickstart: builtin face model, synthetic faces rendered on the fly, small images.

Finishes in a few minutes on 2 CPU cores and visibly learns: landmark and
photometric errors fall, and a contact sheet is written to WORKDIR/images.
"""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.image_size = 64
    config.encoder.width = 32
    config.encoder.refine_steps = 30  # README, "Quickstart results"
    config.encoder.fit_steps = 150  # at evaluation; README, "Quickstart results"
    config.batch_size = 16
    config.num_steps = 1400
    config.learning_rate = 1e-3
    config.warmup_steps = 50
    config.log_every = 25
    config.image_every = 350
    config.checkpoint_every = 350
    config.eval_every = 350
    config.eval_batches = 4
    config.eval_batch_size = 32
    return config
