"""FineNet phase 2 on photos: unsupervised shape-from-shading on real images (`mofa.detail`).

Set data.path to a folder of face photos and detail.init_workdir to a phase-1
(`detail_supervised`) workdir. Each photo's coarse code is fitted once by
analysis-by-synthesis (detail.coarse_fit_steps; or set detail.coarse_workdir to a
trained MoFA encoder at the same image size) and kept in WORKDIR/coarse_codes.npz.
detail.eval_photos names a folder of held-out photos to report on.

A photo's high-frequency content is mostly albedo (pores, freckles, stubble, hair),
which no 3DMM albedo models, so the shading term here is `shading_detail` (the
high-frequency shading on the skin, blind to smooth albedo and light errors) and
fidelity to the coarse depth is 10x stronger than on synthetic faces. Measured on
16 + 7 photos (README): this keeps more of the synthetic accuracy per unit of
photo shading error than the absolute photometric term.
"""

from experiments.configs import detail_sfs


def get_config():
    config = detail_sfs.get_config()
    config.data.source = "folder"
    config.data.path = ""  # a folder of face photos (required)
    config.detail.coarse_fit_steps = 200
    config.loss.photometric = 0.0
    config.loss.shading_detail = 1000.0
    config.loss.fidelity = 10.0
    config.loss.smoothness = 0.1
    return config
