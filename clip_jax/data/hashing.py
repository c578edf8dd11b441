"""Pure integer hashes for the train stream's per-sample random decisions.

Every random choice of the input pipeline (which shard, which source, the shuffle priority, the
crop, a tfds record's place in its epoch, which of its captions) is a function of integers such
as ``(seed, consumer, index)``, so it can be recomputed after a restart: that is what makes
resume exact.
"""

from __future__ import annotations

M64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64 finaliser."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def hash_ints(*values: int) -> int:
    """A 64-bit hash of a sequence of integers."""
    h = 0x243F6A8885A308D3
    for v in values:
        h = mix64(h ^ (int(v) & M64))
    return h


def unit(*values: int) -> float:
    """A uniform float in [0, 1) from a hash of ``values``."""
    return (hash_ints(*values) >> 11) * (1.0 / (1 << 53))


def seed_seq(*values: int) -> list[int]:
    """``values`` as a NumPy ``default_rng`` seed sequence."""
    return [int(v) & M64 for v in values]


def permuted_index(i: int, n: int, key: int) -> int:
    """The ``i``-th element (``0 <= i < n``) of a pseudo-random permutation of ``range(n)``
    chosen by ``key``, computed without materialising it (O(1) memory for any ``n``).

    A 4-round Feistel network over the smallest even number of bits covering ``n`` (a bijection
    of ``[0, 2^bits)``), cycle-walked until the value falls in ``[0, n)`` (a bijection of
    ``[0, n)``; fewer than 4 rounds of walking on average, since ``2^bits < 4n``)."""
    if not 0 <= i < n:
        raise IndexError(f"index {i} outside [0, {n})")
    bits = max((n - 1).bit_length(), 2)
    half = (bits + 1) // 2
    mask = (1 << half) - 1
    x = i
    while True:
        left, right = x >> half, x & mask
        for r in range(4):
            left, right = right, left ^ (hash_ints(key, r, right) & mask)
        x = (left << half) | right
        if x < n:
            return x
