"""InverseFaceNet-style supervised pretraining on synthetic faces (model-space loss)."""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.data.source = "synthetic_tfds"
    config.image_size = 128
    config.batch_size = 32
    config.num_steps = 50_000
    config.learning_rate = 3e-4
    config.loss.photometric = 0.0
    config.loss.landmark = 0.0
    config.loss.model_space = 1.0
    return config
