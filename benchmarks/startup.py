"""What a `mofa reconstruct` process spends before its first face: loading the default
reconstructor (the builtin model, its landmark table, the shipped encoder) and tracing
and lowering the encoder for a batch, in this fresh process. Run by hand from the
repository root, alternating checkouts in separate processes:

    python benchmarks/startup.py
    PYTHONPATH=OTHER_CHECKOUT python benchmarks/startup.py

Eager JAX operations compile one small program each per process (not kept by the
persistent compilation cache, which keeps programs that took over a second), so the
count of compilations is printed beside the seconds.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp


class _CompileCounter(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        if record.getMessage().startswith("Finished XLA compilation"):
            self.count += 1


def main() -> None:
    jnp.zeros(3).block_until_ready()  # the backend up before the clock starts
    import mofa
    from mofa import inference

    mofa.enable_compilation_cache()
    counter = _CompileCounter()
    dispatch = logging.getLogger("jax._src.dispatch")
    dispatch.setLevel(logging.WARNING)  # where jax_log_compiles reports
    dispatch.addHandler(counter)
    dispatch.propagate = False
    jax.config.update("jax_log_compiles", True)
    start = time.perf_counter()
    rec = inference.load_reconstructor()
    loaded = time.perf_counter()
    rec.encoder.lower(jnp.zeros((rec.batch_size, rec.image_size, rec.image_size, 3)))
    done = time.perf_counter()
    print(f"{mofa.__file__}: load_reconstructor {loaded - start:.2f} s, encoder traced and "
          f"lowered {done - loaded:.2f} s, {counter.count} XLA compilations")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    main()
