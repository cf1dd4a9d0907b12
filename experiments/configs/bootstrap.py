"""InverseFaceNet bootstrapping: supervised synthetic training, re-drawn from predicted codes.

Each round trains with the model-space loss on faces rendered from the builtin
model, then fits a per-dimension Gaussian to the codes the encoder predicts on
the unlabeled images of `config.data` (here faces rendered from another model,
ICT-FaceKit, whose ground truth is used for evaluation only) and re-draws the
corpus of the next round from it (`mofa.bootstrap`).
"""

import os

import ml_collections

from experiments.configs import synthetic_supervised

ICT_DIR = os.environ.get("MOFA_ICT_DIR", "/tmp/ict/ict-facekit")


def get_config():
    config = synthetic_supervised.get_config()
    config.data.source = "synthetic"
    config.data.face_model = f"ict:{ICT_DIR}"
    config.image_size = 64
    config.encoder.width = 32
    config.batch_size = 16
    config.num_steps = 1000  # per round
    config.learning_rate = 1e-3
    config.warmup_steps = 50

    config.bootstrap = ml_collections.ConfigDict()
    config.bootstrap.num_rounds = 3
    config.bootstrap.num_images = 512  # unlabeled images the distribution is fitted to
    config.bootstrap.min_std = 0.05
    return config
