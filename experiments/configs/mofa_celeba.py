"""MoFA on CelebA (tfds `celeb_a`, which users download themselves) for GPU/TPU."""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.data.source = "tfds"
    config.data.name = "celeb_a"
    config.image_size = 240 - 16  # MoFA's 240 px input, rounded to an encoder-friendly 224
    config.batch_size = 64
    config.num_steps = 200_000
    config.learning_rate = 1e-4
    config.loss.vertex_photometric = 1.92
    config.loss.photometric = 0.0  # the paper samples the image at vertices
    return config
