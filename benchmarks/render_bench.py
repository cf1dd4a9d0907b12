"""Speed and memory of mofa's pure-JAX renderer against two peers, on the same scenes.

Run by hand (not in CI), from the repository root:

    python benchmarks/render_bench.py                      # everything
    python benchmarks/render_bench.py --skip-jaxrenderer --repeats 10

For each mesh (the builtin model and the ICT-FaceKit face area), resolution and
batch size it measures, per image:
  * ours: full `render_face` forward (code -> image: the face model's bases, the rigid
    transform, then the renderer), the renderer alone (`render_mesh` on the camera-space
    mesh, what Open3D is given), the visibility pass (`rasterize`) alone,
    forward+backward (gradient of a photometric L2 loss w.r.t. the whole
    FaceCode), compile time, and peak memory;
  * Open3D `RaycastingScene.cast_rays` through our pixel centres on the same
    camera-space mesh (Embree BVH, C++), with the agreement of its triangle ids
    with ours;
  * jaxrenderer (pure JAX, per-pixel loop over all triangles), in a virtual
    environment of its own because it needs jax 0.4.13 and numpy < 2.

Timings are medians of --repeats calls after a warm-up call, each ended with
`jax.block_until_ready`. Both JAX and Open3D use every CPU core.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np

from mofa import code as code_lib
from mofa import facemodel
from mofa.render import camera as camera_lib
from mofa.render import rasterizer, render

GOALS = {"fwd_vs_open3d": 3.0, "fwdbwd_vs_open3d": 10.0, "jaxrenderer_speedup": 100.0}
JAXRENDERER_PINS = ["jaxrenderer==0.3.2", "jax==0.4.13", "jaxlib==0.4.13", "numpy<2"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="builtin,ict",
                   help="comma list of: builtin, ict")
    p.add_argument("--ict-path", default="/tmp/ict/ict-facekit",
                   help="unpacked ICT-FaceKit folder (contains FaceXModel/)")
    p.add_argument("--resolutions", default="128,224")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slots-per-pixel", type=float, default=None,
                   help="rasterizer candidate pool size (default: the library's)")
    p.add_argument("--skip-open3d", action="store_true")
    p.add_argument("--skip-jaxrenderer", action="store_true")
    p.add_argument("--jaxrenderer-venv",
                   default=os.path.expanduser("~/.cache/mofa-bench/jaxrenderer-venv"))
    p.add_argument("--jaxrenderer-timeout", type=float, default=900.0,
                   help="seconds per jaxrenderer scene (compile + one frame)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------
# Meshes.


def _ict_from_obj(folder: str) -> facemodel.FaceModel:
    """Fallback while `mofa.facemodel.load('ict:...')` is not available: the face
    area (vertices 0-9408) of the generic neutral mesh, quads split, as a
    FaceModel with one zero component per space (geometry is all we time)."""
    verts, faces = [], []
    with open(os.path.join(folder, "FaceXModel", "generic_neutral_mesh.obj")) as f:
        for line in f:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                faces.append([int(t.split("/")[0]) - 1 for t in line.split()[1:]])
    v = np.asarray(verts[:9409], np.float64) * 10.0  # cm -> mm
    tris = [(q[0], q[i], q[i + 1]) for q in faces if max(q) < 9409 for i in range(1, len(q) - 1)]
    v -= 0.5 * (v.min(0) + v.max(0))  # centre the bounding box on the origin
    n = len(v)
    zeros = np.zeros((1, n, 3), np.float32)
    return facemodel.from_numpy(
        mean_shape=v, identity_basis=zeros, identity_std=np.ones(1),
        expression_basis=zeros, expression_std=np.ones(1),
        albedo_mean=np.tile([[0.7, 0.5, 0.4]], (n, 1)), albedo_basis=zeros,
        albedo_std=np.ones(1), triangles=np.asarray(tris), landmark_indices=np.arange(68),
        face_mask=np.ones(n), name="ict-face-area (OBJ fallback)")


def load_models(names, ict_path):
    models = {}
    for name in names:
        try:
            models[name] = facemodel.load("builtin" if name == "builtin" else f"ict:{ict_path}")
        except Exception as err:  # noqa: BLE001 - loaders are still being written
            if name == "ict" and os.path.isdir(ict_path):
                print(f"[note] ict loader unavailable ({type(err).__name__}: {err}); "
                      "reading the OBJ face area directly")
                models[name] = _ict_from_obj(ict_path)
            else:
                print(f"[note] skipping {name}: {type(err).__name__}: {err}")
    return models


# ---------------------------------------------------------------------------
# Measurement helpers.


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_peak_delta_mb(call) -> float:
    """Peak resident memory above the level before `call`, in MB.

    CPU devices report no `memory_stats()`, so this resets the kernel's peak-RSS
    counter (writing 5 to /proc/self/clear_refs) and reads VmHWM afterwards.
    Pages the allocator kept from earlier calls make it a lower bound; NaN if
    the kernel does not support the reset.
    """
    gc.collect()
    try:
        before = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return math.nan
    jax.block_until_ready(call())
    return (_status_kb("VmHWM") - before) / 1024.0


def xla_memory_mb(compiled) -> float:
    """Buffers XLA assigned to the compiled program (temps + outputs), in MB."""
    try:
        m = compiled.memory_analysis()
        return (m.temp_size_in_bytes + m.output_size_in_bytes) / 2**20
    except Exception:  # noqa: BLE001 - not every backend implements it
        return math.nan


def cpu_seconds():
    """(CPU seconds the whole machine was busy, CPU seconds of this process and its children)."""
    with open("/proc/stat") as f:
        jiffies = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(jiffies) - jiffies[3] - jiffies[4]  # minus idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def median_time(call, repeats: int) -> float:
    jax.block_until_ready(call())  # warm-up: caches, allocator, thread pools
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compile_aot(fn, *args):
    """Ahead-of-time compile so compile time excludes the run; returns (compiled, s)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


# ---------------------------------------------------------------------------
# Ours.


def bench_ours(model, batch, res, repeats, seed, slots_per_pixel=None):
    camera = camera_lib.Camera.from_fov(code_lib.DEFAULT_FOV_DEGREES, res, res)
    pool = {} if slots_per_pixel is None else {"slots_per_pixel": slots_per_pixel}
    k_code, k_target = jax.random.split(jax.random.PRNGKey(seed))
    code = code_lib.random_code(model, k_code, (batch,))
    target = render.render_face(model, code_lib.random_code(model, k_target, (batch,)),
                                camera, **pool).image

    def forward(c):
        return render.render_face(model, c, camera, **pool)  # the whole RenderOutput

    def loss(c):
        return jnp.mean((render.render_face(model, c, camera, **pool).image - target) ** 2)

    def forward_backward(c):
        return jax.value_and_grad(loss)(c)

    vertices, albedo = render.face_geometry(model, code)
    screen = camera_lib.project(vertices, camera)
    tris = model.triangles

    def visibility(s):
        return rasterizer.rasterize(s, tris, height=res, width=res, **pool)

    def mesh_forward(v, a, illumination):  # the renderer alone, on Open3D's input
        return render.render_mesh(v, a, tris, camera, illumination,
                                  landmark_indices=model.landmark_indices,
                                  vertex_weight=model.face_mask, **pool)

    fwd, compile_fwd = compile_aot(forward, code)
    fb, compile_fb = compile_aot(forward_backward, code)
    # Peak RSS on the first forward+backward execution, before its buffers are cached.
    rss_mb_fwdbwd = rss_peak_delta_mb(lambda: fb(code))
    vis, _ = compile_aot(visibility, screen)
    mesh_fwd, _ = compile_aot(mesh_forward, vertices, albedo, code.illumination)
    out = fwd(code)
    r = dict(
        fwd=median_time(lambda: fwd(code), repeats) / batch,
        mesh_fwd=median_time(lambda: mesh_fwd(vertices, albedo, code.illumination),
                             repeats) / batch,
        vis=median_time(lambda: vis(screen), repeats) / batch,
        fwdbwd=median_time(lambda: fb(code), repeats) / batch,
        compile_fwd=compile_fwd, compile_fwdbwd=compile_fb,
        xla_mb_fwd=xla_memory_mb(fwd), xla_mb_fwdbwd=xla_memory_mb(fb),
        rss_mb_fwdbwd=rss_mb_fwdbwd,
        coverage=float(jnp.mean(out.mask)),
    )
    scene = dict(vertices=np.asarray(vertices), triangles=np.asarray(tris),
                 triangle_id=np.asarray(out.triangle_id), focal=float(camera.focal),
                 principal_point=np.asarray(camera.principal_point),
                 albedo=np.asarray(albedo),
                 normals=np.asarray(facemodel.vertex_normals(vertices, tris)))
    return r, scene


# ---------------------------------------------------------------------------
# Open3D: ray casting through our pixel centres.


def camera_rays(res, focal, principal_point):
    """(H, W, 6) rays from the origin through pixel centres, our pinhole convention.

    Directions have unit -z component, so t_hit equals our depth.
    """
    j, i = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5)
    d = np.stack([(j - principal_point[0]) / focal, -(i - principal_point[1]) / focal,
                  -np.ones_like(j)], -1)
    return np.concatenate([np.zeros_like(d), d], -1).astype(np.float32)


def bench_open3d(scene, res, repeats):
    import open3d as o3d

    rays = o3d.core.Tensor(camera_rays(res, scene["focal"], scene["principal_point"]))
    tris = o3d.core.Tensor(scene["triangles"].astype(np.uint32))
    meshes = [o3d.core.Tensor(v.astype(np.float32)) for v in scene["vertices"]]

    def build(v):
        s = o3d.t.geometry.RaycastingScene()
        s.add_triangles(v, tris)
        return s

    def build_and_cast():  # the BVH is built lazily by the first query
        return [build(v).cast_rays(rays) for v in meshes]

    scenes = [build(v) for v in meshes]

    def cast():
        return [s.cast_rays(rays) for s in scenes]

    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) / len(meshes)

    hits = cast()
    ids = np.stack([h["primitive_ids"].numpy().astype(np.int64) for h in hits])
    ids[ids == o3d.t.geometry.RaycastingScene.INVALID_ID] = -1
    # Open3D does not cull back faces and we do: also compare where its hit faces us.
    front = np.ones(ids.shape, bool)
    d = camera_rays(res, scene["focal"], scene["principal_point"])[..., 3:]
    for b, (v, i) in enumerate(zip(scene["vertices"], ids)):
        c = v[scene["triangles"][np.maximum(i, 0)]]  # (H, W, 3 corners, 3)
        n = np.cross(c[..., 1, :] - c[..., 0, :], c[..., 2, :] - c[..., 0, :])
        front[b] = (i < 0) | (np.sum(n * d, -1) < 0)
    same = ids == scene["triangle_id"]
    return dict(cast=timed(cast), build_cast=timed(build_and_cast),
                agree=float(np.mean(same)), agree_front=float(np.mean(same[front])))


# ---------------------------------------------------------------------------
# jaxrenderer: a worker in its own virtual environment.

_WORKER = textwrap.dedent('''
    """Renders one scene with jaxrenderer; prints timings as JSON on the last line."""
    import json, math, sys, time, warnings
    warnings.filterwarnings("ignore")  # jaxtyping's decorator-style warnings
    import numpy as np
    import jax, jax.numpy as jnp
    from renderer import Buffers, Camera, LightSource, render
    from renderer.shaders.gouraud import GouraudExtraInput, GouraudShader

    d = np.load(sys.argv[1])
    h, w, f = int(d["height"]), int(d["width"]), float(d["focal"])
    # Vertices are already in camera space (OpenGL: looking down -z, y up), so the
    # view is the identity. gluPerspective with our focal; the viewport is shifted
    # by half a pixel so integer fragment coordinates sample our pixel centres.
    fovy = math.degrees(2.0 * math.atan(0.5 * h / f))
    camera = Camera.create(
        view=jnp.eye(4), view_inv=jnp.eye(4),
        projection=Camera.perspective_projection_matrix(fovy, w / h, 1.0, 1e4),
        viewport=Camera.viewport_matrix(jnp.array([-0.5, -0.5]), jnp.array([w, h]), 1.0))
    extra = GouraudExtraInput(
        position=jnp.asarray(d["vertices"]), colour=jnp.asarray(d["albedo"]),
        normal=jnp.asarray(d["normals"]),
        light=LightSource(direction=jnp.array([0.0, 0.0, 1.0]), colour=jnp.ones(3)))
    faces = jnp.asarray(d["triangles"])

    def frame():
        # Buffers are (width, height); colour -1 marks background (Gouraud keeps >= 0).
        buffers = Buffers(zbuffer=jnp.ones((w, h)), targets=(jnp.full((w, h, 3), -1.0),))
        return render(camera, GouraudShader, buffers, faces, extra)

    t0 = time.perf_counter(); out = jax.block_until_ready(frame()); first = time.perf_counter() - t0
    t0 = time.perf_counter(); out = jax.block_until_ready(frame()); run = time.perf_counter() - t0
    mask = np.asarray(out.targets[0][..., 0] >= 0).T[::-1]  # (x, y up) -> (row down, col)
    np.save(sys.argv[2], mask)
    print(json.dumps({"first_call_s": first, "frame_s": run, "jax": jax.__version__}))
''')


def ensure_jaxrenderer_venv(path: str) -> str:
    python = os.path.join(path, "bin", "python")
    probe = [python, "-W", "ignore", "-c", "import renderer, jax; assert jax.__version__ == '0.4.13'"]
    if os.path.exists(python) and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"[note] creating {path} for jaxrenderer (one-off, a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *JAXRENDERER_PINS], check=True)
    return python


def bench_jaxrenderer(python, scene, res, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        scene_path, mask_path = os.path.join(tmp, "scene.npz"), os.path.join(tmp, "mask.npy")
        worker = os.path.join(tmp, "worker.py")
        with open(worker, "w") as f:
            f.write(_WORKER)
        np.savez(scene_path, vertices=scene["vertices"][0], albedo=scene["albedo"][0],
                 normals=scene["normals"][0], triangles=scene["triangles"],
                 focal=scene["focal"], height=res, width=res)
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run([python, worker, scene_path, mask_path], capture_output=True,
                              text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        mask = np.load(mask_path)
    ours = scene["triangle_id"][0] >= 0
    r["mask_agree"] = float(np.mean(mask == ours))
    return r


# ---------------------------------------------------------------------------
# Report.


def fmt(x, spec=".2f"):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def print_results(rows):
    ms = lambda s: None if s is None else 1e3 * s  # noqa: E731
    print("\n## Ours (per image; medians)\n")
    head = (f"{'mesh':<8}{'tris':>7}{'px':>5}{'B':>4}{'fwd ms':>9}{'mesh ms':>9}{'vis ms':>9}"
            f"{'f+b ms':>9}"
            f"{'cmp fwd s':>10}{'cmp f+b s':>10}{'XLA fwd MB':>11}{'XLA f+b MB':>11}"
            f"{'RSS f+b MB':>11}{'cover':>7}")
    print(head)
    for r in rows:
        o = r["ours"]
        print(f"{r['mesh']:<8}{r['tris']:>7}{r['res']:>5}{r['batch']:>4}{fmt(ms(o['fwd'])):>9}"
              f"{fmt(ms(o['mesh_fwd'])):>9}{fmt(ms(o['vis'])):>9}{fmt(ms(o['fwdbwd'])):>9}{fmt(o['compile_fwd'], '.1f'):>10}"
              f"{fmt(o['compile_fwdbwd'], '.1f'):>10}{fmt(o['xla_mb_fwd'], '.0f'):>11}"
              f"{fmt(o['xla_mb_fwdbwd'], '.0f'):>11}{fmt(o['rss_mb_fwdbwd'], '.0f'):>11}"
              f"{o['coverage']:>7.2f}")
    print("  fwd: code -> image (render_face); mesh: the renderer alone on the camera-space "
          "mesh (render_mesh), Open3D's input.\n"
          "  XLA MB: temp + output buffers of the compiled program (memory_analysis); "
          "RSS MB: peak-RSS rise during the first forward+backward execution\n"
          "  (CPU devices report no memory_stats(); reset via /proc/self/clear_refs, "
          "a lower bound because freed pages stay cached). cover: mask fraction.")

    print("\n## Peers on the same scenes (ratios: < 1 means ours is faster)\n")
    print(f"{'mesh':<8}{'px':>5}{'B':>4}{'O3D cast ms':>12}{'O3D +BVH ms':>12}"
          f"{'fwd/O3D':>9}{'mesh/O3D':>9}{'f+b/O3D':>9}{'vis/O3D':>9}{'id agree':>9}{'front':>8}"
          f"{'jaxr s/frame':>13}{'jaxr/ours':>10}{'mask agree':>11}")
    for r in rows:
        o, p, j = r["ours"], r.get("open3d"), r.get("jaxrenderer")
        cast = p and p["cast"]
        print(f"{r['mesh']:<8}{r['res']:>5}{r['batch']:>4}{fmt(ms(cast)):>12}"
              f"{fmt(ms(p and p['build_cast'])):>12}{fmt(ratio(o['fwd'], cast)):>9}"
              f"{fmt(ratio(o['mesh_fwd'], cast)):>9}"
              f"{fmt(ratio(o['fwdbwd'], cast)):>9}{fmt(ratio(o['vis'], cast)):>9}"
              f"{fmt(p and 100 * p['agree'], '.2f'):>8}%{fmt(p and 100 * p['agree_front'], '.2f'):>7}%"
              f"{fmt(j and j['frame_s'], '.1f'):>13}{fmt(ratio(j and j['frame_s'], o['fwd']), '.0f'):>10}"
              f"{fmt(j and 100 * j['mask_agree'], '.2f'):>10}%")
    print("  O3D cast: RaycastingScene.cast_rays per image on a prebuilt BVH (= our visibility "
          "pass: triangle id, barycentrics, depth); +BVH: building the scene each time too,\n"
          "  as a mesh that changes every step needs. id agree: pixels where Open3D's primitive "
          "id equals our triangle_id; front: the same, leaving out pixels where Open3D hit a\n"
          "  back face (it does not cull them, we do).\n"
          "  jaxrenderer: ONE frame at batch 1 per resolution (after one compile call), "
          "Gouraud shader, same camera-space mesh; it is too slow to repeat.\n"
          "  mask agree: pixels where its coverage equals ours. jaxr/ours: its frame time over "
          "our batch-1 forward time per image.")

    def find(mesh, res, batch):
        return next((r for r in rows if (r["mesh"], r["res"], r["batch"]) == (mesh, res, batch)),
                    None)

    print("\n## Scaling\n")
    meshes = sorted({r["mesh"] for r in rows})
    res_list = sorted({r["res"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    if len(res_list) >= 2:
        lo, hi = res_list[0], res_list[-1]
        px = (hi / lo) ** 2
        print(f"pixels {lo}->{hi}: x{px:.2f}; time ratio (linear in pixels would be x{px:.2f}):")
        for m in meshes:
            for b in batches:
                a, c = find(m, lo, b), find(m, hi, b)
                if a and c:
                    print(f"  {m:<8} B={b:<3} fwd x{c['ours']['fwd'] / a['ours']['fwd']:.2f}  "
                          f"vis x{c['ours']['vis'] / a['ours']['vis']:.2f}  "
                          f"f+b x{c['ours']['fwdbwd'] / a['ours']['fwdbwd']:.2f}")
    if len(meshes) >= 2:
        (m0, m1) = sorted(meshes, key=lambda m: next(r["tris"] for r in rows if r["mesh"] == m))[:2]
        t0 = next(r["tris"] for r in rows if r["mesh"] == m0)
        t1 = next(r["tris"] for r in rows if r["mesh"] == m1)
        print(f"triangles {m0} {t0} -> {m1} {t1}: x{t1 / t0:.2f}; time ratio "
              f"(also depends on screen coverage, shown in 'cover'):")
        for res in res_list:
            for b in batches:
                a, c = find(m0, res, b), find(m1, res, b)
                if a and c:
                    print(f"  {res}px B={b:<3} fwd x{c['ours']['fwd'] / a['ours']['fwd']:.2f}  "
                          f"vis x{c['ours']['vis'] / a['ours']['vis']:.2f}  "
                          f"f+b x{c['ours']['fwdbwd'] / a['ours']['fwdbwd']:.2f}")

    print("\n## Goals\n")
    for r in rows:
        o, p, j = r["ours"], r.get("open3d"), r.get("jaxrenderer")
        tag = f"{r['mesh']} {r['res']}px B={r['batch']}:"
        parts = []
        if p:
            f1, f2 = o["fwd"] / p["cast"], o["fwdbwd"] / p["cast"]
            f0 = o["mesh_fwd"] / p["cast"]
            for what, f in (("renderer fwd", f0), ("code->image fwd", f1)):
                parts.append(f"{what} {f:.2f}x O3D (goal <= {GOALS['fwd_vs_open3d']:.0f}x: "
                             f"{'MET' if f <= GOALS['fwd_vs_open3d'] else 'MISSED'})")
            parts.append(f"f+b {f2:.2f}x O3D (goal <= {GOALS['fwdbwd_vs_open3d']:.0f}x: "
                         f"{'MET' if f2 <= GOALS['fwdbwd_vs_open3d'] else 'MISSED'})")
        if j:
            s1, s2 = j["frame_s"] / o["fwd"], j["frame_s"] / o["fwdbwd"]
            ok = min(s1, s2) > GOALS["jaxrenderer_speedup"]
            parts.append(f"jaxrenderer/ours fwd {s1:.0f}x, f+b {s2:.0f}x (goal > "
                         f"{GOALS['jaxrenderer_speedup']:.0f}x: {'MET' if ok else 'MISSED'})")
        if parts:
            print(f"{tag:<22}" + "; ".join(parts))

    print("\n## Markdown (for README)\n")
    print("| mesh | triangles | px | batch | fwd ms/img | renderer ms/img | visibility ms/img "
          "| fwd+bwd ms/img | compile fwd / fwd+bwd s | XLA MB fwd / fwd+bwd "
          "| Open3D cast ms/img | fwd / Open3D | renderer / Open3D | fwd+bwd / Open3D "
          "| id agreement | jaxrenderer s/frame | jaxrenderer / ours |")
    print("|" + "---|" * 17)
    for r in rows:
        o, p, j = r["ours"], r.get("open3d"), r.get("jaxrenderer")
        cast = p and p["cast"]
        print(f"| {r['mesh']} | {r['tris']} | {r['res']} | {r['batch']} | {fmt(ms(o['fwd']))} "
              f"| {fmt(ms(o['mesh_fwd']))} | {fmt(ms(o['vis']))} | {fmt(ms(o['fwdbwd']))} "
              f"| {fmt(o['compile_fwd'], '.1f')} / {fmt(o['compile_fwdbwd'], '.1f')} "
              f"| {fmt(o['xla_mb_fwd'], '.0f')} / {fmt(o['xla_mb_fwdbwd'], '.0f')} "
              f"| {fmt(ms(cast))} | {fmt(ratio(o['fwd'], cast))} "
              f"| {fmt(ratio(o['mesh_fwd'], cast))} | {fmt(ratio(o['fwdbwd'], cast))} | {fmt(p and 100 * p['agree'], '.2f')}% "
              f"| {fmt(j and j['frame_s'], '.1f')} "
              f"| {fmt(ratio(j and j['frame_s'], o['fwd']), '.0f')} |")


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    resolutions = [int(x) for x in args.resolutions.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
          f"repeats={args.repeats}, slots_per_pixel={args.slots_per_pixel or 'library default'}")
    cpu_at_start = cpu_seconds()
    models = load_models([m.strip() for m in args.models.split(",")], args.ict_path)
    jr_python = None
    if not args.skip_jaxrenderer:
        try:
            jr_python = ensure_jaxrenderer_venv(args.jaxrenderer_venv)
        except (OSError, subprocess.CalledProcessError) as err:
            print(f"[note] jaxrenderer unavailable: {err}")

    rows = []
    for name, model in models.items():
        for res in resolutions:
            for batch in batches:
                print(f"[run] {name} ({model.num_triangles} triangles) {res}px B={batch}",
                      flush=True)
                ours, scene = bench_ours(model, batch, res, args.repeats, args.seed,
                                         args.slots_per_pixel)
                row = dict(mesh=name, tris=model.num_triangles, res=res, batch=batch, ours=ours)
                if not args.skip_open3d:
                    row["open3d"] = bench_open3d(scene, res, args.repeats)
                if jr_python and batch == min(batches):
                    try:
                        row["jaxrenderer"] = bench_jaxrenderer(jr_python, scene, res,
                                                               args.jaxrenderer_timeout)
                    except (RuntimeError, subprocess.TimeoutExpired) as err:
                        print(f"[note] jaxrenderer failed: {str(err)[-500:]}")
                rows.append(row)
    print_results(rows)
    print(f"\ntotal benchmark time: {time.perf_counter() - start:.0f} s")
    # Timings are only meaningful on an otherwise idle machine: say if it was not.
    wall = time.perf_counter() - start
    machine, own = (b - a for a, b in zip(cpu_at_start, cpu_seconds()))
    others = max(machine - own, 0.0) / (wall * (os.cpu_count() or 1))
    print(f"other processes used {100 * others:.0f}% of the machine's CPU during the run"
          + ("  WARNING: they competed with the timings; rerun on an idle machine."
             if others > 0.1 else ""))


if __name__ == "__main__":
    main()
