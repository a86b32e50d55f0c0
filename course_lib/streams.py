"""One random stream per completion: draws that do not depend on the batch they were made in.

A sampler that draws its tokens from one shared generator hands row ``r`` the ``r``-th number
of each step. Which completion sits in row ``r`` depends on the other prompts in the call, the
batch size and the rows that have already finished, so the same seed gives a different
completion as soon as any of those change: evaluating a subset of a test set does not
reproduce the full run, and two runs that differ only in ``batch_size`` disagree.

Here every completion owns a stream instead, named by what identifies it:

    key = hash(seed, prompt text, which copy of that text in the call, sample index j)
    u_t = mix(key, t)        (one uniform number in (0, 1) at decoding step t)

``mix`` is a counter-based generator (as Philox and Threefry are, in the style of JAX's
keys): a pure function of the key and the step, computed for a whole batch at once, so a row's
numbers never depend on its neighbours. The mixing function is Chris Wellons' 32-bit
"lowbias32" hash, computed in int64 with the multiplications split so nothing overflows.

The same seed gives completion ``j`` of a prompt the same draws whatever else is in the call;
a different seed, prompt, copy or ``j`` gives an independent stream.
"""

from __future__ import annotations

import hashlib

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # 2**32 / golden ratio: a fixed odd constant that separates the two words


def row_keys(seed: int, prompts: list[str], n: int) -> torch.Tensor:
    """The key of each of the ``len(prompts) * n`` completions (group-major): (N, 2) int64 words.

    A prompt text that appears twice in ``prompts`` gets different keys for its second copy
    (its occurrence number is part of the key), so repeated prompts are not sampled identically.
    """
    seen: dict[str, int] = {}
    keys = []
    for prompt in prompts:
        copy = seen.get(prompt, 0)
        seen[prompt] = copy + 1
        for j in range(n):
            digest = hashlib.blake2b(f"{seed}\x00{copy}\x00{j}\x00{prompt}".encode(), digest_size=8).digest()
            keys.append((int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")))
    return torch.tensor(keys, dtype=torch.int64).reshape(-1, 2)  # (N, 2), each word in [0, 2**32)


def uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform number in (0, 1) per key at decoding step ``step``: (B, 2) int64 -> (B,) float64."""
    return _mix(keys[:, 0], keys[:, 1], torch.full_like(keys[:, 0], step & _MASK32))


def uniform_table(keys: torch.Tensor, steps: int) -> torch.Tensor:
    """Every decoding step's uniforms at once: (B, 2) int64 -> (B, steps) float64, column t equal to
    ``uniforms(keys, t)`` (one pass over the table instead of some fifty small operations a step)."""
    counter = torch.arange(steps, device=keys.device)[None, :] & _MASK32  # (1, S)
    return _mix(keys[:, :1], keys[:, 1:], counter)  # (B, S)


def _mix(word0: torch.Tensor, word1: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """The uniform of each (key words, counter), broadcast together: int64 tensors -> float64 in (0, 1)."""
    high = _mix32(word0 ^ _mix32(word1 ^ _mix32(counter)))  # 32 random bits
    low = _mix32(high ^ word1 ^ _GOLDEN32)  # 32 more
    bits53 = (high << 21) + (low >> 11)  # the 53 bits a float64 mantissa holds
    return (bits53.double() + 0.5) / 2.0**53  # strictly inside (0, 1)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 ``x`` in [0, 2**32): c is split in 16-bit halves, so no product overflows."""
    low = x * (c & 0xFFFF)  # < 2**48
    high = ((x * (c >> 16)) & 0xFFFF) << 16  # the part of x * c_high * 2**16 that survives mod 2**32
    return (low + high) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijective 32-bit hash in which every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)
