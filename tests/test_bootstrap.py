"""InverseFaceNet's self-supervised bootstrapping rounds."""

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from conftest import tiny_config  # noqa: E402


@pytest.mark.slow
def test_bootstrap_config_runs_two_rounds(tmp_path):
    from experiments.configs import bootstrap as bootstrap_config
    from mofa import bootstrap

    config = bootstrap_config.get_config()
    for key, value in tiny_config(num_steps=1).items():
        if key not in ("loss", "data"):
            config[key] = value
    config.bootstrap.num_rounds = 2
    config.bootstrap.num_images = 8
    results = bootstrap.train_rounds(config, str(tmp_path))
    assert len(results) == 2 and all(np.isfinite(r["vertex_error_mm_mean"]) for r in results)
    fitted = json.loads((tmp_path / "round_0" / "code_distribution.json").read_text())
    assert len(fitted["std"]["identity"]) == 100 and len(fitted["mean"]["rotation"]) == 3
    assert (tmp_path / "round_1" / "eval.json").exists()
    config.bootstrap.oracle = True  # the upper bound trains on the population itself
    (oracle,) = bootstrap.train_rounds(config, str(tmp_path))
    assert np.isfinite(oracle["pose_error_deg"]) and (tmp_path / "oracle" / "eval.json").exists()
