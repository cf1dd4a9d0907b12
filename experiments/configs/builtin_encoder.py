"""The encoder shipped inside mofa (`mofa/assets/builtin_encoder.msgpack`): the
quickstart's recipe on the builtin model, trained longer, with AlexNet's fully
connected layers at 512 so the packaged file stays a few MB (float16).

    python -m experiments.main --config=experiments/configs/builtin_encoder.py \
        --workdir=WORKDIR
    mofa export-encoder --checkpoint WORKDIR --out mofa/assets/builtin_encoder.msgpack

README, "The shipped encoder", has its numbers.
"""

from experiments.configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.encoder.hidden = 512
    config.num_steps = 3000
    config.checkpoint_every = 500
    config.image_every = 1000
    config.eval_every = 1000
    return config
