"""Renderer tests against analytic answers, brute force and finite differences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from jax.test_util import check_grads

from mofa import facemodel, render
from mofa.code import FaceCode
from mofa.render import camera as cam
from mofa.render import sh

from reference import rasterize_brute_force


def _sphere(subdivisions=3, radius=80.0, distance=1000.0):
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    vertices = jnp.asarray(mesh.vertices, jnp.float32) + jnp.array([0.0, 0.0, -distance])
    return vertices[None], jnp.asarray(mesh.faces, jnp.int32)


# --- geometry ---------------------------------------------------------------


def test_vertex_normals_are_radial_on_a_sphere_per_mesh_and_differentiable():
    vertices, triangles = _sphere(subdivisions=2, radius=1.0, distance=0.0)
    vertices = vertices[0]
    normals = facemodel.vertex_normals(vertices, triangles)
    radial = vertices / jnp.linalg.norm(vertices, axis=-1, keepdims=True)
    assert float(jnp.min(jnp.sum(normals * radial, -1))) > 0.999  # outward, unit
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
    # Leading dims are independent meshes: each equals its own unbatched normals.
    key = jax.random.key(0)
    batch = vertices + 0.1 * jax.random.normal(key, (2, 3) + vertices.shape)
    batched = facemodel.vertex_normals(batch, triangles)
    assert batched.shape == batch.shape
    for i, j in ((0, 0), (1, 2)):
        np.testing.assert_allclose(batched[i, j], facemodel.vertex_normals(batch[i, j],
                                                                           triangles),
                                   atol=1e-6)
    check_grads(lambda v: facemodel.vertex_normals(v, triangles)[:40], (batch[0, 0],),
                order=1, modes=("rev",), atol=2e-2, rtol=2e-2, eps=1e-3)


def test_dot_last_and_the_face_normals_cross_product_match_numpy():
    a = jax.random.normal(jax.random.key(1), (4, 5, 3))
    b = jax.random.normal(jax.random.key(2), (4, 5, 3))
    np.testing.assert_allclose(facemodel.dot_last(a, b), np.sum(np.asarray(a) * np.asarray(b), -1),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(facemodel.safe_normalize(a),
                               a / np.linalg.norm(np.asarray(a), axis=-1, keepdims=True),
                               rtol=1e-5)
    # One triangle: its vertices' normals are the cross product's direction.
    triangle = jnp.asarray(a[0, :3])
    normal = np.cross(np.asarray(a[0, 1] - a[0, 0]), np.asarray(a[0, 2] - a[0, 0]))
    np.testing.assert_allclose(facemodel.vertex_normals(triangle, jnp.array([[0, 1, 2]])),
                               np.tile(normal / np.linalg.norm(normal), (3, 1)), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="vectors of 3"):
        facemodel.dot_last(a[..., :2], b[..., :2])


def test_linear_combination_both_paths_match_numpy_with_forward_and_reverse_gradients():
    """Batches in TRANSPOSED_TANGENT_BATCHES take the custom tangent, batch 1 the plain
    product: both are sum_k w_k basis_k, with gradients in both modes for both inputs."""
    basis = jax.random.normal(jax.random.key(0), (5, 7, 3))
    for batch_shape in ((), (1,), (3,), (2, 4)):
        weights = jax.random.normal(jax.random.key(1), batch_shape + (5,))
        np.testing.assert_allclose(
            facemodel.linear_combination(basis, weights),
            np.einsum("...k,kvc->...vc", np.asarray(weights), np.asarray(basis)),
            rtol=1e-5, atol=1e-5)
        check_grads(facemodel.linear_combination, (basis, weights), order=2,
                    modes=("fwd", "rev"), rtol=1e-2)
    assert 3 in facemodel.model.TRANSPOSED_TANGENT_BATCHES
    assert 1 not in facemodel.model.TRANSPOSED_TANGENT_BATCHES


# --- camera -----------------------------------------------------------------


def test_projection_of_known_points():
    camera = cam.Camera.from_fov(90.0, height=100, width=200)  # focal = 100 px
    points = jnp.array([[0.0, 0.0, -5.0], [1.0, 0.0, -1.0], [0.0, 2.0, -4.0], [-3.0, -3.0, -6.0]])
    projected = cam.project(points, camera)
    expected = np.array([[100.0, 50.0, 5.0], [200.0, 50.0, 1.0], [100.0, 0.0, 4.0],
                         [50.0, 100.0, 6.0]])
    np.testing.assert_allclose(projected, expected, rtol=1e-5)


def test_rotations_agree_and_are_orthonormal():
    key = jax.random.key(0)
    aa = jax.random.normal(key, (16, 3))
    rot = cam.axis_angle_to_matrix(aa)
    np.testing.assert_allclose(rot @ jnp.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.det(rot), 1.0, atol=1e-5)
    # Rotation about +y by 90 degrees maps +z to +x in both parametrizations.
    quarter = math.pi / 2
    for matrix in (cam.axis_angle_to_matrix(jnp.array([0.0, quarter, 0.0])),
                   cam.euler_to_matrix(jnp.array([0.0, quarter, 0.0]))):
        np.testing.assert_allclose(matrix @ jnp.array([0.0, 0.0, 1.0]), [1.0, 0.0, 0.0], atol=1e-6)
    # Euler pitch about x alone equals the axis-angle about x.
    np.testing.assert_allclose(cam.euler_to_matrix(jnp.array([0.3, 0.0, 0.0])),
                               cam.axis_angle_to_matrix(jnp.array([0.3, 0.0, 0.0])), atol=1e-6)
    # 6D representation reproduces a rotation from its first two columns.
    r6 = jnp.concatenate([rot[..., :, 0], rot[..., :, 1]], -1)
    np.testing.assert_allclose(cam.rotation_6d_to_matrix(r6), rot, atol=1e-5)
    # Gradient at zero rotation is finite (series branch).
    grad = jax.grad(lambda a: jnp.sum(cam.axis_angle_to_matrix(a) ** 2))(jnp.zeros(3))
    assert np.all(np.isfinite(grad))


def test_rigid_transform_matches_numpy_and_broadcasts():
    rotation = cam.euler_to_matrix(jax.random.normal(jax.random.key(0), (2, 3)))
    translation = jax.random.normal(jax.random.key(1), (2, 3))
    points = jax.random.normal(jax.random.key(2), (2, 6, 3))
    expected = (np.einsum("bij,bnj->bni", np.asarray(rotation), np.asarray(points))
                + np.asarray(translation)[:, None])
    np.testing.assert_allclose(cam.rigid_transform(points, rotation, translation), expected,
                               rtol=1e-5, atol=1e-5)
    # One pose for a batch of point sets, and a batch of poses for one point set.
    np.testing.assert_allclose(cam.rigid_transform(points, rotation[0], translation[0]),
                               np.einsum("ij,bnj->bni", np.asarray(rotation[0]),
                                         np.asarray(points)) + np.asarray(translation[0]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cam.rigid_transform(points[0], rotation, translation),
                               np.einsum("bij,nj->bni", np.asarray(rotation),
                                         np.asarray(points[0])) + np.asarray(translation)[:, None],
                               rtol=1e-5, atol=1e-5)
    check_grads(cam.rigid_transform, (points, rotation, translation), order=2,
                modes=("fwd", "rev"), rtol=1e-2)


def test_projection_and_rotation_gradients():
    camera = cam.Camera.from_fov(30.0, 64, 64)
    points = jnp.array([[0.1, -0.05, -3.0], [-0.2, 0.15, -2.5]])  # float32 FD needs unit scale
    check_grads(lambda p: cam.project(p, camera), (points,), order=2, modes=("rev", "fwd"),
                eps=1e-2, rtol=2e-2)
    check_grads(cam.euler_to_matrix, (jnp.array([0.1, -0.4, 0.2]),), order=2, rtol=2e-2)
    check_grads(cam.axis_angle_to_matrix, (jnp.array([0.3, 0.2, -0.5]),), order=2, rtol=2e-2)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="points"):
        cam.project(jnp.zeros((4, 2)), cam.Camera.from_fov(30.0, 8, 8))
    with pytest.raises(ValueError, match="SH coefficients"):
        sh.irradiance(jnp.zeros((4, 3)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="screen_vertices"):
        render.rasterize(jnp.zeros((5, 3)), jnp.zeros((2, 3), jnp.int32), height=4, width=4)
    with pytest.raises(ValueError, match="fov_degrees"):
        cam.Camera.from_fov(0.0, 8, 8)


# --- spherical harmonics ------------------------------------------------------


def test_sh_irradiance_matches_monte_carlo():
    """E(n) = integral of L(w) max(n.w, 0) dw over the sphere, L given by its SH9."""
    rng = np.random.default_rng(0)
    coeffs = jnp.asarray(rng.normal(size=(9, 3)) * np.array([[2.0]] + [[0.7]] * 8), jnp.float32)
    normals = rng.normal(size=(5, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    samples = rng.normal(size=(400_000, 3))
    samples /= np.linalg.norm(samples, axis=1, keepdims=True)
    radiance = np.asarray(sh.sh_basis(jnp.asarray(samples, jnp.float32)), np.float64) @ np.asarray(
        coeffs, np.float64)
    cosines = np.clip(normals @ samples.T, 0.0, None)
    monte_carlo = 4.0 * np.pi * (cosines @ radiance) / samples.shape[0]
    analytic = sh.irradiance(jnp.asarray(normals, jnp.float32), coeffs)
    np.testing.assert_allclose(analytic, monte_carlo, rtol=0.02, atol=0.02)


def test_ambient_light_renders_albedo_and_shading_gradients():
    normals = facemodel.safe_normalize(jax.random.normal(jax.random.key(1), (7, 3)))
    albedo = jax.random.uniform(jax.random.key(2), (7, 3))
    np.testing.assert_allclose(sh.shade_lambertian(albedo, normals, sh.ambient_light(1.0)), albedo,
                               rtol=1e-5)
    coeffs = jax.random.normal(jax.random.key(3), (9, 3))
    check_grads(sh.shade_lambertian, (albedo, normals, coeffs), order=2, modes=("rev", "fwd"),
                rtol=2e-2)


# --- rasterizer ---------------------------------------------------------------


def test_rasterizer_matches_brute_force_on_sphere():
    vertices, triangles = _sphere()
    camera = cam.Camera.from_fov(12.6, 40, 48)
    screen = cam.project(vertices, camera)
    fragments = render.rasterize(screen, triangles, height=40, width=48)
    expected, _ = rasterize_brute_force(screen[0], triangles, 40, 48)
    np.testing.assert_array_equal(fragments.triangle_id[0], expected)


def test_rasterized_area_of_a_triangle_matches_analytic_area():
    # A large triangle in screen space at constant depth: pixel count ~ area.
    screen = jnp.array([[[10.3, 12.1, 5.0], [180.7, 40.2, 5.0], [60.2, 170.9, 5.0]]])
    triangles = jnp.array([[0, 2, 1]], jnp.int32)  # clockwise on screen = front-facing
    ids = render.rasterize(screen, triangles, height=200, width=200).triangle_id
    (x0, y0, _), (x1, y1, _), (x2, y2, _) = np.asarray(screen[0])
    area = 0.5 * abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))
    perimeter = sum(math.dist(a, b) for a, b in [((x0, y0), (x1, y1)), ((x1, y1), (x2, y2)),
                                                   ((x2, y2), (x0, y0))])
    covered = int(jnp.sum(ids >= 0))
    assert abs(covered - area) < 0.5 * perimeter, (covered, area)
    assert abs(covered - area) / area < 0.01
    # The back face (counter-clockwise on screen) is culled, or kept without culling.
    back = jnp.array([[0, 1, 2]], jnp.int32)
    assert int(jnp.sum(render.rasterize(screen, back, height=200, width=200).triangle_id >= 0)) == 0
    kept = render.rasterize(screen, back, height=200, width=200, cull_backfaces=False).triangle_id
    assert int(jnp.sum(kept >= 0)) == covered


def test_depth_ordering_of_overlapping_triangles():
    # Two front-facing squares' worth of triangles overlapping; the nearer wins wherever both cover.
    far = [[0.0, 0.0, 20.0], [0.0, 30.0, 20.0], [30.0, 0.0, 20.0]]
    near = [[10.0, 10.0, 10.0], [10.0, 40.0, 10.0], [40.0, 10.0, 10.0]]
    tilted = [[5.0, 5.0, 5.0], [5.0, 35.0, 30.0], [35.0, 5.0, 30.0]]  # crosses both
    for order in ([0, 1], [1, 0]):
        blocks = [far, near]
        screen = jnp.asarray([blocks[order[0]] + blocks[order[1]]], jnp.float32)
        triangles = jnp.array([[0, 1, 2], [3, 4, 5]], jnp.int32)
        ids = np.asarray(render.rasterize(screen, triangles, height=48, width=48).triangle_id[0])
        near_id = order.index(1)
        assert ids[12, 12] == near_id and ids[2, 2] == 1 - near_id and ids[30, 12] == near_id
    screen = jnp.asarray([far + tilted], jnp.float32)
    triangles = jnp.array([[0, 1, 2], [3, 4, 5]], jnp.int32)
    ids, depth = rasterize_brute_force(screen[0], triangles, 48, 48)
    fast = render.rasterize(screen, triangles, height=48, width=48).triangle_id[0]
    np.testing.assert_array_equal(fast, ids)
    assert {0, 1} <= set(np.unique(ids[ids >= 0]))  # the interpenetration is resolved per pixel


def test_rasterizer_is_exact_with_any_chunk_size():
    vertices, triangles = _sphere()
    vertices = jnp.concatenate([vertices, vertices + jnp.array([30.0, -20.0, 150.0])])
    camera = cam.Camera.from_fov(12.6, 32, 32)
    screen = cam.project(vertices, camera)
    one_pass = render.rasterize(screen, triangles, height=32, width=32, slots_per_pixel=8.0)
    many_passes = render.rasterize(screen, triangles, height=32, width=32, slots_per_pixel=0.05)
    np.testing.assert_array_equal(one_pass.triangle_id, many_passes.triangle_id)
    for image in range(2):
        expected, _ = rasterize_brute_force(screen[image], triangles, 32, 32)
        np.testing.assert_array_equal(many_passes.triangle_id[image], expected)


def test_render_mesh_depth_mask_background_and_visibility():
    vertices, triangles = _sphere(subdivisions=4, radius=80.0, distance=1000.0)
    camera = cam.Camera.from_fov(12.6, 48, 48)
    albedo = jnp.full_like(vertices, 0.5)
    background = jnp.array([0.0, 1.0, 0.0])
    out = render.render_mesh(vertices, albedo, triangles, camera, render.ambient_light(1.0, (1,)),
                             background=background)
    assert out.image.shape == (1, 48, 48, 3) and out.depth.shape == (1, 48, 48)
    # Centre: the sphere's nearest point, 1000 - 80 mm, shaded at its albedo, normal facing +z.
    np.testing.assert_allclose(out.depth[0, 23:25, 23:25], 920.0, rtol=2e-3)
    np.testing.assert_allclose(out.image[0, 24, 24], [0.5, 0.5, 0.5], rtol=1e-4)
    np.testing.assert_allclose(out.normals[0, 24, 24], [0.0, 0.0, 1.0], atol=0.05)
    np.testing.assert_allclose(out.image[0, 0, 0], background)
    assert float(out.mask[0, 0, 0]) == 0.0 and float(out.depth[0, 0, 0]) == 0.0
    # Disc of radius r/sqrt(d^2-r^2) * f pixels.
    focal = float(camera.focal)
    radius_px = focal * 80.0 / math.sqrt(1000.0**2 - 80.0**2)
    assert abs(float(out.mask.sum()) - math.pi * radius_px**2) / (math.pi * radius_px**2) < 0.05
    # Front hemisphere visible, back hidden.
    z = np.asarray(vertices[0, :, 2]) + 1000.0
    visible = np.asarray(out.vertex_visibility[0])
    assert visible[z > 40.0].mean() > 0.95 and not visible[z < -5.0].any()


def test_large_batches_render_in_parts_as_each_image_alone():
    """A batch above `part_size` renders in parts (and a remainder) when evaluated, and as
    one batch when differentiated: both give every output of each image rendered alone,
    with its own background, vertex weights and focal length, and the same gradient."""
    vertices, triangles = _sphere(subdivisions=2)
    part = render.render.part_size(20, 20)
    assert part > 1 and render.render.part_size(224, 224) == 2
    batch = part + 3
    offsets = jax.random.uniform(jax.random.key(2), (batch, 1, 3), minval=-20.0, maxval=20.0)
    vertices = vertices + offsets
    albedo = jax.random.uniform(jax.random.key(3), vertices.shape)
    light = render.ambient_light(1.0, (batch,)) + 0.1 * jax.random.normal(
        jax.random.key(4), (batch, 9, 3))
    background = jax.random.uniform(jax.random.key(5), (batch, 20, 20, 3))
    weight = jax.random.uniform(jax.random.key(6), vertices.shape[:2])
    camera = cam.Camera.from_fov(12.6, 20, 20)
    camera = camera.replace(focal=camera.focal * jnp.linspace(0.9, 1.1, batch))
    landmarks = jnp.arange(5)

    def draw(v, a, l, bg, w, c):
        return render.render_mesh(v, a, triangles, c, l, background=bg,
                                  landmark_indices=landmarks, vertex_weight=w)

    draw = jax.jit(draw)
    whole = draw(vertices, albedo, light, background, weight, camera)
    for i in (0, part - 1, batch - 1):  # a first, last and remainder image
        one = draw(vertices[i:i + 1], albedo[i:i + 1], light[i:i + 1], background[i:i + 1],
                   weight[i:i + 1], camera.replace(focal=camera.focal[i:i + 1]))
        for name in ("image", "mask", "depth", "normals", "screen_vertices", "vertex_colors",
                     "vertex_visibility", "landmarks", "triangle_id", "region"):
            np.testing.assert_allclose(np.asarray(getattr(whole, name)[i]),
                                       np.asarray(getattr(one, name)[0]), atol=1e-4, err_msg=name)
    assert (np.asarray(whole.mask).sum(axis=(1, 2)) > 10).all()

    def loss(v, a, l, bg, w, c):
        return jnp.sum(draw(v, a, l, bg, w, c).image ** 2)

    gradient = jax.jit(jax.grad(loss))
    whole_gradient = gradient(vertices, albedo, light, background, weight, camera)
    for i in range(batch):
        np.testing.assert_allclose(whole_gradient[i], gradient(
            vertices[i:i + 1], albedo[i:i + 1], light[i:i + 1], background[i:i + 1],
            weight[i:i + 1], camera.replace(focal=camera.focal[i:i + 1]))[0],
            rtol=1e-4, atol=1e-4)


# --- gradients ----------------------------------------------------------------


def test_interpolation_matches_numpy_alone_and_when_differentiated():
    """`interpolate` evaluates per corner alone and by a contraction under differentiation
    (a custom JVP): both equal the barycentric sum done in numpy, batch by batch."""
    vertices, triangles = _sphere(subdivisions=2)
    vertices = jnp.concatenate([vertices, vertices + jnp.array([9.0, -4.0, 30.0])])
    camera = cam.Camera.from_fov(12.6, 24, 24)
    screen = cam.project(vertices, camera)
    ids = render.rasterize(screen, triangles, height=24, width=24).triangle_id
    bary = render.barycentrics(screen, triangles, ids)
    attributes = jax.random.normal(jax.random.key(1), vertices.shape[:2] + (5,))
    corners = np.asarray(triangles)[np.maximum(np.asarray(ids), 0)]  # (B, H, W, 3)
    values = np.take_along_axis(np.asarray(attributes)[:, None, None],
                                corners[..., None], axis=3)  # (B, H, W, 3, 5)
    expected = np.sum(np.asarray(bary)[..., None] * values, axis=3)
    expected[np.asarray(ids) < 0] = 0.0
    assert (np.asarray(ids) >= 0).any(axis=(1, 2)).all()
    alone = jax.jit(render.interpolate)(attributes, triangles, ids, bary)
    differentiated, _ = jax.jvp(lambda a, b: render.interpolate(a, triangles, ids, b),
                                (attributes, bary), (attributes, bary))
    np.testing.assert_allclose(alone, expected, atol=1e-5)
    np.testing.assert_allclose(differentiated, expected, atol=1e-5)


def test_interpolation_gradients():
    vertices, triangles = _sphere(subdivisions=2)
    camera = cam.Camera.from_fov(12.6, 24, 24)
    screen = cam.project(vertices, camera)
    ids = render.rasterize(screen, triangles, height=24, width=24).triangle_id
    attributes = jax.random.normal(jax.random.key(0), vertices.shape)

    def f(screen, attributes):
        bary = render.barycentrics(screen, triangles, ids)
        return render.interpolate(attributes, triangles, ids, bary)

    check_grads(f, (screen, attributes), order=1, modes=("rev", "fwd"), eps=1e-3, rtol=5e-2,
                atol=5e-2)


def test_image_loss_gradients_match_finite_differences(builtin_model):
    """Autodiff vs central differences of sum(W * image) over the pixels whose triangle
    does not change, along a direction in each field of the code (one compiled renderer
    and one compiled gradient serve every field)."""
    model = builtin_model
    camera = cam.Camera.from_fov(12.6, 48, 48)
    base = FaceCode.neutral(model, (1,))
    base = base.replace(rotation=jnp.array([[0.1, 0.3, 0.05]]),
                        illumination=sh.directional_light([0.3, 0.4, 1.0], 0.5, 0.8, (1,)))
    key = jax.random.key(3)
    cases = {
        # name: (field, direction, eps)
        "vertices(identity)": ("identity", jax.random.normal(key, base.identity.shape), 1e-2),
        "pose": ("rotation", jnp.array([[0.3, 1.0, -0.5]]), 2e-4),
        "translation": ("translation", jnp.array([[1.0, -0.5, 3.0]]), 2e-2),
        "light": ("illumination", jax.random.normal(key, base.illumination.shape), 1e-2),
        "albedo": ("reflectance", jax.random.normal(key, base.reflectance.shape), 1e-2),
    }
    render_fn = jax.jit(lambda code: render.render_face(model, code, camera))
    loss = lambda code, weights: jnp.sum(render_fn(code).image * weights)  # noqa: E731
    loss_and_grad = jax.jit(jax.value_and_grad(loss))
    for name, (field, direction, eps) in cases.items():
        step = jax.tree.map(jnp.zeros_like, base).replace(**{field: direction})
        plus = jax.tree.map(lambda p, d: p + eps * d, base, step)
        minus = jax.tree.map(lambda p, d: p - eps * d, base, step)
        ids = [render_fn(c).triangle_id for c in (base, plus, minus)]
        stable = (ids[0] == ids[1]) & (ids[0] == ids[2]) & (ids[0] >= 0)
        weights = jax.random.uniform(jax.random.key(7), (1, 48, 48, 3)) * stable[..., None]
        _, grad = loss_and_grad(base, weights)
        analytic = float(jnp.sum(getattr(grad, field) * direction))
        numeric = float((loss_and_grad(plus, weights)[0] - loss_and_grad(minus, weights)[0])
                        / (2 * eps))
        assert abs(analytic - numeric) <= 0.03 * abs(numeric) + 1e-3, (name, analytic, numeric)


def test_analysis_by_synthesis_recovers_pose_light_and_albedo(builtin_model):
    import optax

    model = builtin_model
    camera = cam.Camera.from_fov(12.6, 64, 64)
    target_code = FaceCode.neutral(model, (1,)).replace(
        rotation=jnp.array([[0.1, 0.35, -0.05]]),
        reflectance=0.8 * jax.random.normal(jax.random.key(1), (1, model.num_albedo)),
        illumination=sh.directional_light([0.5, 0.3, 1.0], 0.6, 0.7, (1,)))
    target = render.render_face(model, target_code, camera)
    start = target_code.replace(
        rotation=target_code.rotation + jnp.array([[0.08, -0.12, 0.05]]),
        reflectance=jnp.zeros_like(target_code.reflectance),
        illumination=sh.ambient_light(0.8, (1,)))
    params = {"rotation": start.rotation, "reflectance": start.reflectance,
              "illumination": start.illumination}

    def loss_fn(p):
        out = render.render_face(model, start.replace(**p), camera)
        overlap = out.mask * target.mask
        photometric = jnp.sum(overlap[..., None] * (out.image - target.image) ** 2) / jnp.sum(overlap)
        landmarks = jnp.mean(jnp.sum((out.landmarks - target.landmarks) ** 2, -1))
        return photometric + 1e-3 * landmarks

    optimizer = optax.adam(0.02)
    state = optimizer.init(params)

    @jax.jit
    def step(p, s):
        value, grad = jax.value_and_grad(loss_fn)(p)
        updates, s = optimizer.update(grad, s, p)
        return optax.apply_updates(p, updates), s, value

    initial = float(loss_fn(params))
    for _ in range(300):
        params, state, _ = step(params, state)
    final = float(loss_fn(params))
    assert final < initial / 100.0, (initial, final)
    np.testing.assert_allclose(params["rotation"], target_code.rotation, atol=0.02)
