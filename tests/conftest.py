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
#
# Two more flags cut compile time without slowing the programs, measured on the
# self-supervised learning test alone (idle 2-core machine): 144 s (76 compiling) at -O1,
# 126 s (54) without XLA's fusion emitters (LLVM IR per fusion kernel from the classic
# elemental emitter), 116 s (50) with LLVM's expensive passes off as well; its run time
# (68, 72, 66 s) is unchanged. XLA aborts on a flag it does not know, so the flags are
# tried in a subprocess first (a later jaxlib may drop them).
_FAST_COMPILE = ["--xla_backend_optimization_level=1", "--xla_cpu_use_fusion_emitters=false",
                 "--xla_llvm_disable_expensive_passes=true"]


def _xla_accepts(flags: list) -> bool:
    import subprocess
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
    probe = [sys.executable, "-c",
             "import jax.numpy as jnp; jnp.ones(2).sum().block_until_ready()"]
    return subprocess.run(probe, env=env, capture_output=True, timeout=300).returncode == 0


if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    _flags = _FAST_COMPILE if _xla_accepts(_FAST_COMPILE) else _FAST_COMPILE[:1]
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + _flags).strip()

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


@pytest.fixture(autouse=True)
def _no_kept_programs():
    """`mofa.enable_compilation_cache` turns `mofa.programs` on for the process (the CLI's
    tests call `cli.main` in it): off again after each test, so the other tests' fits
    share their jitted programs as before."""
    yield
    from mofa import programs

    programs.disable()


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


def pytest_collection_modifyitems(config, items):
    """The modules with slow end-to-end tests first, alternating between the two halves of
    the list. pytest-xdist's worksteal scheduler starts each worker on one half and lets an
    idle worker steal from the end of the other's queue; with the long tests at the front
    of both queues, what is left to steal at the end is short, and neither worker finishes
    long before the other. Modules stay whole (their module-scoped fixtures are built once)."""
    modules: dict = {}
    for item in items:
        modules.setdefault(item.module.__name__ if item.module else item.nodeid, []).append(item)
    heavy = [m for m in modules.values() if any(i.get_closest_marker("slow") for i in m)]
    light = [m for m in modules.values() if not any(i.get_closest_marker("slow") for i in m)]
    halves: list[list] = [[], []]
    for n, module in enumerate(heavy):
        halves[n % 2].extend(module)
    rest = [item for module in light for item in module]
    fill = max(0, len(items) // 2 - len(halves[0]))
    items[:] = halves[0] + rest[:fill] + halves[1] + rest[fill:]


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


# Where the suite's time goes (issue 13): each test's JAX tracing, lowering and XLA
# compilation in its own process (not in the subprocesses it starts), and each worker's
# busy time and finish, to see whether a worker idles at the end.
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_SPANS: list = []  # (start, end) wall times of those events in this phase; traces nest
_PROGRAMS: dict = {}  # jitted function -> [XLA compile seconds, compilations], this phase


def _record_span(event: str, start: float, end: float, **_) -> None:
    if event in _COMPILE_EVENTS:
        _SPANS.append((start, end))


def _count_program(event: str, seconds: float, fun_name: str = "", **_) -> None:
    if event == _COMPILE_EVENTS[-1]:
        tally = _PROGRAMS.setdefault(fun_name, [0.0, 0])
        tally[0] += seconds
        tally[1] += 1


jax.monitoring.register_event_time_span_listener(_record_span)
jax.monitoring.register_event_duration_secs_listener(_count_program)


def _covered_seconds(spans: list) -> float:
    """The length of the union of the spans (a trace includes the traces it nests)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _SPANS.clear()  # the count starts before the test's fixtures compile
    _PROGRAMS.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report carries the JAX compile seconds spent in that phase and the
    programs it compiled."""
    item.user_properties[:] = [p for p in item.user_properties
                               if p[0] not in ("compile_seconds", "programs")]
    item.user_properties.append(("compile_seconds", _covered_seconds(_SPANS)))
    item.user_properties.append(("programs", dict(_PROGRAMS)))
    _SPANS.clear()
    _PROGRAMS.clear()
    yield


_PHASES: list = []  # (worker, nodeid, start, stop, compile seconds), on the controller
_ALL_PROGRAMS: dict = {}  # jitted function -> [XLA compile seconds, compilations, tests]


def pytest_runtest_logreport(report):
    node = getattr(report, "node", None)  # the xdist worker that ran it
    worker = node.gateway.id if node is not None else "main"
    properties = dict(report.user_properties)
    _PHASES.append((worker, report.nodeid, report.start, report.stop,
                    properties.get("compile_seconds", 0.0)))
    for name, (seconds, count) in properties.get("programs", {}).items():
        tally = _ALL_PROGRAMS.setdefault(name, [0.0, 0, set()])
        tally[0] += seconds
        tally[1] += count
        tally[2].add(report.nodeid)


def _time_summary(write) -> None:
    if not _PHASES:
        return
    first = min(p[2] for p in _PHASES)
    end = max(p[3] for p in _PHASES)
    for worker in sorted({p[0] for p in _PHASES}):
        mine = [p for p in _PHASES if p[0] == worker]
        busy = sum(p[3] - p[2] for p in mine)
        write(f"worker {worker}: busy {busy:.0f} s, finished at {max(p[3] for p in mine) - first:.0f}"
              f" s of {end - first:.0f} s, {sum(p[4] for p in mine):.0f} s compiling "
              f"({len({p[1] for p in mine})} tests)")
    per_test: dict = {}
    for _, nodeid, start, stop, compiled in _PHASES:
        total = per_test.setdefault(nodeid, [0.0, 0.0])
        total[0] += stop - start
        total[1] += compiled
    heaviest = sorted(per_test.items(), key=lambda kv: -kv[1][1])[:10]
    write("most compile time (test: compile / total seconds): " + "; ".join(
        f"{nodeid.split('::', 1)[-1]} {c:.0f}/{t:.0f}" for nodeid, (t, c) in heaviest))
    # The same function compiled in many tests is where shared shapes or fixtures save most.
    programs = sorted(_ALL_PROGRAMS.items(), key=lambda kv: -kv[1][0])[:12]
    write("most XLA compile time (program: seconds, compilations, tests): " + "; ".join(
        f"{name} {s:.0f} s, {n}x, {len(tests)}" for name, (s, n, tests) in programs))


def pytest_terminal_summary(terminalreporter):
    if _SPEED:
        terminalreporter.write_line(
            f"machine speed: numpy SVD of a 400x400 matrix {_SPEED['svd_ms']:.1f} ms "
            "(measured before the tests)")
    _time_summary(terminalreporter.write_line)


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
