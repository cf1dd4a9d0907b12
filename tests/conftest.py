"""Test setup: 8 fake CPU devices for sharding tests, shared fixtures."""

import atexit
import os
import pathlib
import shutil
import tarfile
import sys
import tempfile

# LLVM's -O1 for every program the tests compile, here and in the processes they start
# (which inherit the environment): most tests run a few small steps and are compile-bound.
# Measured alone on a slow 2-core machine against the default level: the multilevel
# test 143 -> 121 s, the self-supervised learning test (150 training steps) 260 -> 197 s
# (-O0 compiled as fast but ran the training at half the speed: 546 s). XLA reads the
# flags when the CPU backend starts, after this.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                        "--xla_backend_optimization_level=1"]).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

# Most end-to-end tests compile the same few programs (tiny train, eval and render
# steps on the builtin model); JAX's persistent compilation cache lets every
# repeat, in this process and in the subprocesses the tests start (the killed-run
# test, notebooks, the CLI), load the executable instead of compiling it again.
# Set before the first compilation: JAX decides once whether the cache is used.
# Under pytest-xdist (`-n 2`) the controller makes the folders and its workers inherit
# them through the environment, so every worker loads what another compiled.
_JAX_CACHE = os.environ.get("MOFA_TEST_JAX_CACHE_DIR")
if not _JAX_CACHE:
    _JAX_CACHE = tempfile.mkdtemp(prefix="mofa-jax-cache-")
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
    os.environ["MOFA_TEST_JAX_CACHE_DIR"] = _JAX_CACHE
if not os.environ.get("MOFA_TEST_CACHE_DIR"):
    os.environ["MOFA_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="mofa-cache-")
    atexit.register(shutil.rmtree, os.environ["MOFA_TEST_CACHE_DIR"], ignore_errors=True)
for _name, _value in (("jax_compilation_cache_dir", _JAX_CACHE),
                      ("jax_persistent_cache_min_compile_time_secs", 0.2)):
    jax.config.update(_name, _value)
    os.environ[_name.upper()] = str(_value)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))  # experiments.configs for the end-to-end tests


def random_rotation(rng):
    """A uniformly random proper rotation (3, 3)."""
    import numpy as np

    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.fixture(scope="session", autouse=True)
def _mofa_cache():
    """Keeps model caches out of the user's home during tests (built once per session)."""
    cache = os.environ["MOFA_TEST_CACHE_DIR"]
    os.environ["MOFA_CACHE_DIR"] = cache
    yield cache


@pytest.fixture(scope="session")
def ict_dir(tmp_path_factory):
    """The ICT-FaceKit folder unpacked from ../shared/data (skips where absent)."""
    archive = SHARED_DATA / "ict-facekit.tar.xz"
    if not archive.exists():
        pytest.skip(f"ICT-FaceKit archive not found at {archive} "
                    "(it sits in ../shared/data beside the CI checkout)")
    target = tmp_path_factory.mktemp("ict")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "ict-facekit"


@pytest.fixture(scope="session")
def builtin_model():
    from mofa import facemodel
    return facemodel.load("builtin")


_SPEED: dict = {}


def pytest_sessionstart(session):
    """A fixed CPU workload timed before the tests: the machine's speed, printed beside
    the suite's time (machines of one kind differ about 3x)."""
    import time

    import numpy as np

    matrix = np.random.default_rng(0).normal(size=(400, 400))
    start = time.perf_counter()
    for _ in range(10):
        np.linalg.svd(matrix)
    _SPEED["svd_ms"] = (time.perf_counter() - start) * 100.0


def pytest_terminal_summary(terminalreporter):
    if _SPEED:
        terminalreporter.write_line(
            f"machine speed: numpy SVD of a 400x400 matrix {_SPEED['svd_ms']:.1f} ms "
            "(measured before the tests)")


def tiny_config(**overrides):
    """The quickstart config cut down to a few steps at 32 px (end-to-end tests)."""
    from experiments.configs import quickstart

    config = quickstart.get_config()
    config.image_size = 32
    config.encoder.width = 8
    config.batch_size = 8
    config.num_steps = 4
    config.log_every = 1
    config.image_every = 1000
    config.checkpoint_every = 2
    config.eval_batches = 1
    config.eval_batch_size = 8
    config.eval_before_training = False  # the learning tests score the untrained encoder
    config.progress = False
    config.encoder.fit_steps = 0  # the test-time fit: where a test asks for it
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config
