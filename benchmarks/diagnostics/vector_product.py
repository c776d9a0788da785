"""What one matrix-vector product over a table's vectors costs in wall and CPU time, with NumPy's BLAS
(``@``) and with ``np.einsum``, and the CPU the process burns in the half second after (BLAS threads spinning
for more work): the basis of ``syncd/vector_cache.py`` computing its distances with einsum.
``python benchmarks/diagnostics/vector_product.py [--rows 70000] [--dim 384] [--repeat 50]``"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=70_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    query = rng.standard_normal(args.dim).astype(np.float32)
    out = {}
    for name, product in (("blas @", lambda: matrix @ query), ("einsum", lambda: np.einsum("ij,j->i", matrix, query))):
        product()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(args.repeat):
            product()
        cpu1, wall1 = time.process_time(), time.perf_counter()
        time.sleep(0.5)
        out[name] = {"wall_ms": round((wall1 - wall0) / args.repeat * 1000, 2),
                     "cpu_ms": round((cpu1 - cpu0) / args.repeat * 1000, 2),
                     "cpu_ms_in_the_idle_half_second_after": round((time.process_time() - cpu1) * 1000, 1)}
    print(json.dumps({"rows": args.rows, "dim": args.dim, **out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
