"""Test setup: 8 fake CPU devices for sharding tests, shared fixtures."""

import os
import pathlib
import tarfile

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _mofa_cache(tmp_path_factory):
    """Keeps model caches out of the user's home during tests (built once per session)."""
    cache = os.environ.get("MOFA_TEST_CACHE_DIR") or str(tmp_path_factory.mktemp("mofa_cache"))
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
