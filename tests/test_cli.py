"""The `mofa` command line."""

import numpy as np
from PIL import Image

from mofa import cli


def test_sample_writes_a_grid_of_faces(tmp_path):
    out = tmp_path / "grid.png"
    assert cli.main(["sample", "--n", "4", "--size", "48", "--columns", "2", "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 48 + 3 * 2, 2 * 48 + 3 * 2, 3)
    tile = grid[2:50, 2:50].astype(float)
    assert tile.std() > 5.0  # a rendered face, not a flat background


def test_bad_face_model_spec_is_reported(tmp_path, capsys):
    assert cli.main(["sample", "--face-model", "bfm2009:/no/such/file.mat",
                     "--out", str(tmp_path / "x.png")]) == 1
    assert "/no/such/file.mat" in capsys.readouterr().err
    assert cli.main(["sample", "--face-model", "nonsense", "--out", str(tmp_path / "x.png")]) == 1
    assert "unknown face model spec" in capsys.readouterr().err
