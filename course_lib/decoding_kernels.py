"""Two pieces of the CPU decoding step as compiled C (``decoding_kernels.c``), with PyTorch as the fallback.

On the CPU, :meth:`course_lib.decoding.Decoder.step` spent about half its time in attention:
per layer, B x H products of one query against a few dozen keys, each a separate operation with
its own dispatch and its own trip through memory. ``decoding_kernels.c`` does one layer's
attention for the whole batch in one call, one task per (prompt, key head): the prompt's keys are
read once for all its rows, the softmax and the weighted values follow while the scores are
still in cache, and this step's key and value are written into the rows' own caches on the way.
It is the same arithmetic as :meth:`~course_lib.decoding.Decoder._attention`; only the order of
the additions differs (tested: the same tokens, logits within float32 rounding). ``rms_norm`` does
a row's RMSNorm in one pass, where PyTorch's fused call still runs about eight operations.

The kernel is compiled on first use with the system's C compiler (``$CC``, else ``cc``) and kept
under :func:`cache_dir`; where no compiler works, or ``COURSE_KERNELS=0``, the decoder runs its
PyTorch operations and says so once in the log.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decoding_kernels.c")
#: floats per vector in the kernel: the prompt length and each row's own cache are padded to a
#: multiple of it, and a head dimension must be one.
VECTOR = 16
#: compiler flags, best first: vectorised exp from glibc's libmvec and OpenMP threads; then without
#: libmvec (macOS, musl); then one thread (no OpenMP); then no tuning for this CPU.
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-DCOURSE_LIBMVEC", "-lmvec", "-lm"),
    ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-lm"),
    ("-O3", "-march=native", "-fno-math-errno", "-lm"),
    ("-O3", "-lm"),
)
_ATTEND_ARGS = (
    [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]  # qk, its row stride, new_v, its row stride
    + [ctypes.c_void_p] * 6  # prompt_kt, prompt_v, prompt_pad, own_kt, own_v, prompt_rows
    + [ctypes.c_int] * 7  # prompts, heads, kv_heads, head_dim, prompt_len, own_cap, own_len
    + [ctypes.c_void_p, ctypes.c_int]  # out, threads
)
_RMS_NORM_ARGS = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]


def cache_dir() -> Path:
    """Where the compiled kernel is kept: ``$COURSE_CACHE/kernels``, else ``~/.cache/course_lib/kernels``."""
    return Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "course_lib")).expanduser() / "kernels"


def enabled() -> bool:
    """Whether the kernels may be used (``COURSE_KERNELS=0`` turns them off)."""
    return os.environ.get("COURSE_KERNELS", "1") != "0"


def usable(dtype: torch.dtype, device: torch.device, head_dim: int) -> bool:
    """Whether a decoder with these settings can run the kernels (float32 on the CPU, the head
    dimension a multiple of :data:`VECTOR`), and they compile here."""
    return (
        enabled() and device.type == "cpu" and dtype == torch.float32 and head_dim % VECTOR == 0 and load() is not None
    )


@functools.cache
def load():
    """The compiled library (compiling it the first time), its functions ``attend`` and ``rms_norm``
    ready to call, or None where no compiler builds it; the reason is logged once."""
    found = [path for path in map(shutil.which, ("cc", "gcc", "clang")) if path]
    compiler = shlex.split(os.environ.get("CC", "")) or found[:1]  # $CC may carry arguments ("ccache gcc")
    if not compiler:
        logger.warning("no C compiler (cc, gcc or clang): the decoding step runs PyTorch operations")
        return None
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning(
            "the C compiler %s does not run (%s): the decoding step runs PyTorch operations", " ".join(compiler), error
        )
        return None
    # what a build depends on besides its flags: the source, the compiler's version, this CPU
    identity = b"\0".join([SOURCE.read_bytes(), version.encode(), _cpu().encode()])
    errors = []
    for flags in FLAG_SETS:
        try:
            library = ctypes.CDLL(str(_build(compiler, flags, identity)))
        except (OSError, subprocess.SubprocessError) as error:
            errors.append(f"{' '.join(flags)}: {getattr(error, 'stderr', '') or error}")
            continue
        library.attend.argtypes, library.attend.restype = _ATTEND_ARGS, None
        library.rms_norm.argtypes, library.rms_norm.restype = _RMS_NORM_ARGS, None
        return library
    logger.warning(
        "the decoding kernels did not build with %s, the decoding step runs PyTorch operations:\n%s",
        " ".join(compiler),
        "\n".join(errors)[-2000:],
    )
    return None


def _build(compiler: list[str], flags: tuple[str, ...], identity: bytes) -> Path:
    """Compile :data:`SOURCE` with ``flags`` into :func:`cache_dir` (once per ``identity``: source,
    compiler version and CPU, and flags) and return the shared library's path."""
    key = hashlib.sha256(b"\0".join([identity, " ".join(flags).encode()]))
    target = cache_dir() / f"decoding-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [*compiler, "-shared", "-fPIC", "-o", str(built), str(SOURCE), *flags]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
        os.replace(built, target)  # atomic: processes building at once each leave a whole file
    return target


def _cpu() -> str:
    """This CPU's model and feature flags (``-march=native`` builds for them)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines)))


def padded(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`VECTOR`."""
    return -(-n // VECTOR) * VECTOR


def attend(
    qk: torch.Tensor,
    new_v: torch.Tensor,
    heads: int,
    prompt_kt: torch.Tensor,
    prompt_v: torch.Tensor,
    prompt_pad: torch.Tensor,
    own_kt: torch.Tensor,
    own_v: torch.Tensor,
    prompt_rows: torch.Tensor,
    own_len: int,
) -> torch.Tensor:
    """One layer's attention for every row, after writing this step's key and value into the rows' caches.

    Args:
        qk: (B, H + H_kv, D) rotated queries (scaled by 1/sqrt(D)) and keys of this step.
        new_v: (B, H_kv * D) this step's values (rows may be strided).
        heads: H.
        prompt_kt: (P, H_kv, L / VECTOR, D, VECTOR) the prompts' keys, L a multiple of :data:`VECTOR`.
        prompt_v: (P, H_kv, L, D).
        prompt_pad: (P, L) uint8, 1 where a prompt is padding.
        own_kt: (B, H_kv, T / VECTOR, D, VECTOR) each row's own keys, written here at ``own_len - 1``.
        own_v: (B, H_kv, T, D) each row's own values, written here at ``own_len - 1``.
        prompt_rows: (P + 1,) int64, the rows of prompt p are ``prompt_rows[p]`` up to ``prompt_rows[p + 1]``.
        own_len: the row's own tokens after this one joins (1 at the first step).
    Returns:
        (B, H * D) attention outputs, heads side by side.
    """
    rows, kv_heads, prompt_len, head_dim = qk.shape[0], prompt_v.shape[1], prompt_v.shape[2], qk.shape[-1]
    buffers = (qk, prompt_kt, prompt_v, own_kt, own_v)
    if not (
        all(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu" for t in buffers)
        and new_v.dtype == torch.float32 and new_v.stride(-1) == 1 and prompt_pad.is_contiguous()
        and prompt_rows.dtype == torch.int64 and int(prompt_rows[-1]) == rows
        and qk.shape[1] == heads + kv_heads and heads % kv_heads == 0
        and head_dim % VECTOR == 0 and prompt_len % VECTOR == 0 and 1 <= own_len <= own_v.shape[2]
    ):  # fmt: skip
        raise ValueError(
            "attend: float32 CPU tensors, qk and the caches contiguous in the layouts documented here, new_v's rows "
            "contiguous, prompt_rows int64 ending at the batch size, D and L multiples of VECTOR, 1 <= own_len <= T"
        )
    out = qk.new_empty(rows, heads * head_dim)  # (B, H * D)
    load().attend(
        qk.data_ptr(), qk.stride(0), new_v.data_ptr(), new_v.stride(0),
        prompt_kt.data_ptr(), prompt_v.data_ptr(), prompt_pad.data_ptr(),
        own_kt.data_ptr(), own_v.data_ptr(), prompt_rows.data_ptr(),
        prompt_kt.shape[0], heads, kv_heads, head_dim, prompt_len, own_v.shape[2], own_len,
        out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight for each row of a contiguous float32 (B, d) ``x``."""
    out = torch.empty_like(x)  # (B, d)
    load().rms_norm(x.data_ptr(), weight.data_ptr(), eps, out.data_ptr(), x.shape[0], x.shape[1])
    return out
