"""Self-supervised MoFA on a folder of the user's photos (--config.data.path=DIR)."""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.data.source = "folder"
    config.data.path = ""  # required: set with --config.data.path=/path/to/photos
    config.image_size = 128
    config.batch_size = 32
    config.num_steps = 50_000
    return config
