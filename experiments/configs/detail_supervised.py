"""FineNet phase 1: supervised on synthetic faces with wrinkle detail (`mofa.detail`).

The coarse depth is the render of the true code, so FineNet learns only the detail.
Run with `python -m experiments.main --config=experiments/configs/detail_supervised.py`.
"""

import ml_collections

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.task = "detail"
    # At 64 px (3.5 mm pixels) 1 mm wrinkles barely shade the image; 128 px shows them.
    config.image_size = 128
    config.data.source = "synthetic_detail"
    config.detail = ml_collections.ConfigDict()
    config.detail.coarse_workdir = ""  # trained MoFA workdir; "" = the true code (synthetic)
    # Photos: analysis-by-synthesis steps (`mofa.fitting`) for each photo's coarse code,
    # after the encoder's estimate if coarse_workdir is set; fitted once per face.
    config.detail.coarse_fit_steps = 0
    config.detail.eval_photos = ""  # a folder of held-out photos: also report SfS on them
    config.detail.init_workdir = ""  # FineNet to start from
    config.fine = ml_collections.ConfigDict()
    config.fine.width = 16
    config.fine.depth = 2
    config.loss = ml_collections.ConfigDict()
    config.loss.depth = 1.0
    config.loss.normal = 100.0
    config.loss.photometric = 0.0
    config.loss.fidelity = 0.0
    config.loss.smoothness = 0.0
    config.loss.shading_detail = 0.0
    config.batch_size = 8
    config.num_steps = 400
    config.learning_rate = 2e-3
    config.warmup_steps = 20
    config.log_every = 25
    config.checkpoint_every = 100
    config.eval_batches = 4
    config.eval_batch_size = 8
    return config
