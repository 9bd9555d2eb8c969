"""Catalog-scale vector sets made from real embeddings (for benchmarks and tests).

No public million-vector fashion set can be downloaded here, so a large set is grown from the
real embeddings of ../shared/data photos: each synthetic vector is a real one, pulled a random
part of the way towards another real one, plus isotropic noise, re-normalised. It keeps the
real vectors' anisotropy and class clusters (which IVF and PQ exploit) without making
near-duplicates that only noise tells apart.
"""

from __future__ import annotations

import numpy as np


def grow_embeddings(real: np.ndarray, n: int, *, seed: int = 0, mix: float = 0.5, noise: float = 0.3,
                    chunk: int = 262_144) -> np.ndarray:
    """``n`` unit vectors (n, d) float32 from ``real`` (m, d) unit vectors.

    Args:
        mix: the pull towards the second real vector is uniform in [0, mix].
        noise: expected norm of the added Gaussian noise (a real vector has norm 1).
    """
    rng = np.random.default_rng(seed)
    m, d = real.shape
    real = np.asarray(real, np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        k = min(chunk, n - s)
        a, b = real[rng.integers(0, m, k)], real[rng.integers(0, m, k)]
        t = rng.uniform(0, mix, (k, 1)).astype(np.float32)
        v = a + t * (b - a) + rng.standard_normal((k, d), dtype=np.float32) * (noise / np.sqrt(d))
        out[s:s + k] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out
