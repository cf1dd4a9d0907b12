"""Training and inference throughput of the face autoencoder (run by hand, not in CI).

python benchmarks/train_bench.py [--backbones alexnet,resnet18] [--image-size 128]

Prints, per encoder: train-step images/s at batch 32, the input pipeline's
images/s (synthetic faces rendered on the fly) and the training loop's images/s
with its prefetch (below the train-step rate: the step waits for input),
inference (encoder + decoder render) Hz at batch 1 and 64, encoder-only Hz at
batch 64, compile times and the process's peak resident memory; with `--photos DIR`, also
the input images/s of that photo folder's training batches (decoding and cropping). The multi-level face model paper
(Tewari et al. 2018) reports > 250 Hz on a GPU; the script prints the ratio of
our inference rate to that.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.configs import default  # noqa: E402
from mofa import losses, networks, render, train  # noqa: E402
from mofa.data import common, sources  # noqa: E402

PAPER_HZ = 250.0


def _time(fn, *args, repeats=5):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    times.sort()
    return compile_s, times[len(times) // 2]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def input_rates(source, step, state, decoder, train_batch: int, repeats: int) -> dict:
    """Input images/s (the source alone) and the training loop's images/s with the
    loop's one-thread prefetch; the loop waits for input where it is below the step's."""
    start = time.perf_counter()
    for i in range(1, repeats + 1):
        source.batch(i, train_batch)
    input_s = (time.perf_counter() - start) / repeats
    batches = common.ordered_map(lambda i: source.batch(i, train_batch),
                                 range(repeats + 1, 2 * repeats + 3), num_workers=1, prefetch=2)
    first = next(batches)  # the pipeline is full from here on
    state, metrics = step(state, jax.tree.map(jnp.asarray, first), jax.random.key(0), decoder)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        state, metrics = step(state, jax.tree.map(jnp.asarray, batch), jax.random.key(i), decoder)
        jax.device_get(metrics)  # as the training loop does (finite check)
    loop_s = (time.perf_counter() - start) / (repeats + 1)
    return {"input_img_s": train_batch / input_s, "loop_img_s": train_batch / loop_s}


def bench(backbone: str, image_size: int, train_batch: int, repeats: int) -> dict:
    config = default.get_config()
    config.image_size = image_size
    config.encoder.backbone = backbone
    config.batch_size = train_batch
    decoder = train.make_decoder(config)
    weights = losses.LossWeights.from_config(config.loss)
    state = train.create_state(config, decoder.face_model, jax.random.key(0))
    source = sources.make_source(config, decoder.face_model)
    batch = jax.tree.map(jnp.asarray, source.batch(0, train_batch))
    step = jax.jit(functools.partial(train.train_step, weights=weights))
    train_compile, train_s = _time(step, state, batch, jax.random.key(1), decoder,
                                   repeats=repeats)

    def infer(state, images):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        code = networks.decode_head(state.apply_fn(variables, images, train=False),
                                    decoder.face_model)
        return render.render_face(decoder.face_model, code, decoder.camera).image

    def encode(state, images):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return state.apply_fn(variables, images, train=False)

    row = {"backbone": backbone, "train_img_s": train_batch / train_s,
           "train_compile_s": train_compile}
    row.update(input_rates(source, step, state, decoder, train_batch, repeats))
    for b in (1, 64):
        images = jnp.tile(batch["image"][:1], (b, 1, 1, 1))
        compile_s, seconds = _time(jax.jit(infer), state, images, repeats=repeats)
        row[f"infer_hz_b{b}"] = b / seconds
        row[f"infer_compile_s_b{b}"] = compile_s
    _, seconds = _time(jax.jit(encode), state, jnp.tile(batch["image"][:1], (64, 1, 1, 1)),
                       repeats=repeats)
    row["encoder_hz_b64"] = 64 / seconds
    row["peak_rss_mb"] = _peak_rss_mb()
    return row


def photo_input_rate(folder: str, image_size: int, train_batch: int, repeats: int) -> float:
    """Images/s of a photo folder's training batches (`config.data.source="folder"`:
    decoding and cropping in the loader's threads), its detection pass done first."""
    config = default.get_config()
    config.image_size = image_size
    config.data.source, config.data.path = "folder", folder
    source = sources.make_source(config, None)
    source.batch(0, train_batch)
    start = time.perf_counter()
    for i in range(1, repeats + 1):
        source.batch(i, train_batch)
    return train_batch * repeats / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="alexnet,resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photos", default=None,
                        help="a photo folder: also its batches' input images/s")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"{os.cpu_count()} cores, {args.image_size}px, builtin face model")
    rows = [bench(b, args.image_size, args.train_batch, args.repeats)
            for b in args.backbones.split(",")]
    print(f"\n| encoder | train img/s (b{args.train_batch}) | input img/s | loop img/s "
          "| infer Hz b1 | infer Hz b64 "
          "| encoder-only Hz b64 | vs 250 Hz (b64) | compile train / infer b64 (s) "
          "| peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['train_img_s']:.1f} | {r['input_img_s']:.1f} "
              f"| {r['loop_img_s']:.1f} | {r['infer_hz_b1']:.1f} "
              f"| {r['infer_hz_b64']:.1f} | {r['encoder_hz_b64']:.1f} "
              f"| {r['infer_hz_b64'] / PAPER_HZ:.2f}x | {r['train_compile_s']:.1f} / "
              f"{r['infer_compile_s_b64']:.1f} | {r['peak_rss_mb']:.0f} |")
    if args.photos:
        rate = photo_input_rate(args.photos, args.image_size, args.train_batch, args.repeats)
        print(f"\nphoto input ({args.photos}): {rate:.1f} images/s at batch "
              f"{args.train_batch}; the train step above consumes "
              + ", ".join(f"{r['backbone']} {r['train_img_s']:.1f}" for r in rows))


if __name__ == "__main__":
    main()
