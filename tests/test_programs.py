"""mofa.programs: a traced program kept on disk gives the function's results in a later
process without tracing the function again."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mofa import programs, render
from mofa.code import FaceCode


@pytest.fixture
def kept(tmp_path):
    programs.enable(str(tmp_path))
    yield tmp_path
    programs.disable()


def _scene(batch: int):
    rng = np.random.default_rng(batch)
    code = FaceCode(**{f: jnp.asarray(rng.normal(size=(batch, n)), jnp.float32) for f, n in
                       (("rotation", 3), ("translation", 3), ("identity", 4),
                        ("expression", 2), ("reflectance", 3))},
                    illumination=jnp.asarray(rng.normal(size=(batch, 9, 3)), jnp.float32))
    camera = render.Camera.from_fov(30.0, 32, 48)
    return code, camera


def _counting():
    traced = []

    def function(code, camera, scale):
        traced.append(1)  # runs only while JAX traces
        return code.replace(identity=code.identity * scale + camera.focal,
                            translation=jnp.sin(code.translation))
    return function, traced


def test_a_kept_program_runs_untraced_in_a_new_process_with_the_same_results(kept):
    code, camera = _scene(3)
    function, traced = _counting()
    expected = function(code, camera, 2.0)
    traced.clear()
    first = programs.call("scaled", function, (code, camera, 2.0), static=("v1",))
    assert len(traced) == 1 and len(os.listdir(kept)) == 1
    # A new process: nothing in memory, the file on disk.
    programs.disable()
    programs.enable(str(kept))
    function_again, traced_again = _counting()
    second = programs.call("scaled", function_again, (code, camera, 2.0), static=("v1",))
    assert not traced_again
    for result in (first, second):
        assert isinstance(result, FaceCode)
        for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # Another shape or another static key is another program.
    programs.call("scaled", function_again, _scene(5) + (2.0,), static=("v1",))
    programs.call("scaled", function_again, (code, camera, 2.0), static=("v2",))
    assert len(traced_again) == 2 and len(os.listdir(kept)) == 3


def test_an_unreadable_program_is_traced_again_with_a_warning(kept, caplog):
    code, camera = _scene(2)
    function, traced = _counting()
    programs.call("scaled", function, (code, camera, 3.0))
    (name,) = os.listdir(kept)
    with open(kept / name, "wb") as f:
        f.write(b"not a program")
    programs.disable()
    programs.enable(str(kept))
    with caplog.at_level(logging.WARNING, logger="mofa.programs"):
        result = programs.call("scaled", function, (code, camera, 3.0))
    assert name.split("-")[0] in caplog.text and "not kept on disk" in caplog.text
    np.testing.assert_allclose(np.asarray(result.identity),
                               np.asarray(code.identity * 3.0 + camera.focal), rtol=1e-6)


def test_without_enable_the_function_runs_as_it_is():
    code, camera = _scene(2)
    function, traced = _counting()
    result = programs.call("scaled", function, (code, camera, 3.0))
    assert traced == [1]  # called directly, eagerly: once, no jit
    np.testing.assert_allclose(np.asarray(result.translation), np.sin(np.asarray(code.translation)),
                               rtol=1e-6)
