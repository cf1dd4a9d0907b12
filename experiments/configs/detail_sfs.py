"""FineNet phase 2: unsupervised shape-from-shading (`mofa.detail`).

The image is compared with the coarse code's albedo shaded under its SH light with
FineNet's normals, plus fidelity to the coarse depth and a smooth residual. Set
detail.init_workdir to a phase-1 workdir. For photos set data.source="folder", data.path
and the coarse estimate: detail.coarse_workdir (a trained MoFA workdir at the same
image size) and/or detail.coarse_fit_steps (analysis-by-synthesis per photo);
detail.eval_photos names a folder of held-out photos to report on.
"""

from experiments.configs import detail_supervised


def get_config():
    config = detail_supervised.get_config()
    config.loss.depth = 0.0
    config.loss.normal = 0.0
    # The detail's shading residual is ~1e-3 per pixel: with weights 1 / 1e-3 / 1e-2
    # the gradients sit near Adam's epsilon and FineNet barely moves (measured), so
    # the terms are scaled by 1000, with the smoothness 1e-4 of the photometric term.
    config.loss.photometric = 1000.0
    config.loss.fidelity = 1.0
    config.loss.smoothness = 0.1
    config.learning_rate = 5e-4
    config.num_steps = 300
    return config
