"""The CPU decoding step as compiled C (``decoding_kernels.c``), with PyTorch as the fallback.

On the CPU, :meth:`course_lib.decoding.Decoder.step` spent about half its time in attention:
per layer, B x H products of one query against a few dozen keys, each a separate operation with
its own dispatch and its own trip through memory. ``decoding_kernels.c`` does one layer's
attention for the whole batch in one call, one task per (prompt, key head): the prompt's keys are
read once for all its rows, the softmax and the weighted values follow while the scores are
still in cache, and this step's key and value are written into the rows' own caches on the way.
It is the same arithmetic as :meth:`~course_lib.decoding.Decoder._attention`; only the order of
the additions differs (tested: the same tokens, logits within float32 rounding). ``rms_norm`` does
a row's RMSNorm in one pass, where PyTorch's fused call still runs about eight operations, and
``silu_mul`` the gated MLP's silu(gate) * up in one pass instead of three.

With those, the step was still about 60 calls from Python (products, norms, rotary, views), each
paid for in dispatch: about 0.4 ms a step at batch 64, half as much as the attention. :class:`Step`
runs the whole step in one call: the same operations in the same order, the matrix products
through the BLAS ``sgemm_`` that ``torch.mm`` itself calls (found in PyTorch's own library,
:func:`blas_sgemm`), so the products are PyTorch's and only the Python between them is gone.
``python -m course_lib.bench step`` measures the floor both through ``torch.mm`` and through that
BLAS from C (:func:`gemm_floor_ms`) and divides by the faster.

The kernel is compiled on first use with the system's C compiler (``$CC``, else ``cc``) and kept
under :func:`cache_dir`; where no compiler works, or ``COURSE_KERNELS=0``, the decoder runs its
PyTorch operations and says so once in the log; where PyTorch's library has no ``sgemm_`` (builds
without MKL or a reference BLAS), the step stays in Python with the kernels.
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
import time
from dataclasses import dataclass
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
# x, weight, eps, out, rows, dim, threads
_RMS_NORM_ARGS = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p] + [ctypes.c_int] * 3
_SILU_MUL_ARGS = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 3  # rows, inner, threads


class _Linear(ctypes.Structure):
    """``struct linear`` of decoding_kernels.c: y = x W^T + b."""

    _fields_ = [("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("out", ctypes.c_int), ("in_", ctypes.c_int)]


class _Layer(ctypes.Structure):
    """``struct layer``: one decoder layer's weights and caches."""

    _fields_ = [("attn_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p)]
    _fields_ += [(name, _Linear) for name in ("qkv", "o", "gate_up", "down")]
    _fields_ += [(name, ctypes.c_void_p) for name in ("prompt_kt", "prompt_v", "own_kt", "own_v")]


class _Model(ctypes.Structure):
    """``struct model``: what a step reads that does not change from step to step."""

    _fields_ = [("gemm", ctypes.c_void_p)]
    _fields_ += [
        (name, ctypes.c_int) for name in ("layers", "dim", "heads", "kv_heads", "head_dim", "vocab", "positions")
    ]
    _fields_ += [("eps", ctypes.c_float), ("q_scale", ctypes.c_float)]
    _fields_ += [(name, ctypes.c_void_p) for name in ("embed", "rotation", "final_norm")]
    _fields_ += [("lm_head", _Linear), ("layer", ctypes.POINTER(_Layer))]


class _Batch(ctypes.Structure):
    """``struct batch``: this step's rows, tokens and scratch buffers."""

    _fields_ = [(name, ctypes.c_int) for name in ("rows", "prompts", "prompt_len", "own_cap", "own_len")]
    _fields_ += [(name, ctypes.c_void_p) for name in ("tokens", "positions", "prompt_rows", "prompt_pad")]
    _fields_ += [(name, ctypes.c_void_p) for name in ("hidden", "x", "qkv", "attn", "gate_up", "inner", "logits")]


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
    """The compiled library (compiling it the first time), its functions ``attend``, ``rms_norm``
    and ``silu_mul`` ready to call, or None where no compiler builds it; the reason is logged once."""
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
        library.silu_mul.argtypes, library.silu_mul.restype = _SILU_MUL_ARGS, None
        library.decode_step.argtypes = [ctypes.POINTER(_Model), ctypes.POINTER(_Batch), ctypes.c_int]
        library.decode_step.restype = ctypes.c_int
        library.gemm_floor.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Linear), ctypes.c_int]
        library.gemm_floor.argtypes += [ctypes.POINTER(ctypes.c_void_p)] * 2 + [ctypes.c_int]  # x, y per product; rows
        library.gemm_floor.restype = None
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
    check: bool = True,
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
        check: check the layouts first (about 10 microseconds; a caller that calls with the same
            buffers step after step may check once, as the decoder does).
    Returns:
        (B, H * D) attention outputs, heads side by side.
    """
    rows, kv_heads, prompt_len, head_dim = qk.shape[0], prompt_v.shape[1], prompt_v.shape[2], qk.shape[-1]
    if check and not (
        qk.dtype == torch.float32 and qk.is_contiguous() and qk.device.type == "cpu"
        and new_v.dtype == torch.float32 and new_v.stride(-1) == 1 and new_v.shape == (rows, kv_heads * head_dim)
        and qk.shape[1] == heads + kv_heads and 1 <= own_len <= own_v.shape[2]
        and _caches_fit(rows, heads, head_dim, prompt_kt, prompt_v, prompt_pad, own_kt, own_v, prompt_rows)
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


def _caches_fit(
    rows: int, heads: int, head_dim: int, prompt_kt, prompt_v, prompt_pad, own_kt, own_v, prompt_rows
) -> bool:
    """Whether the caches are laid out as :func:`attend` documents, for ``rows`` rows of ``heads``
    query heads of dimension ``head_dim``."""
    prompts, kv_heads, prompt_len = prompt_v.shape[:3]
    caches = (prompt_kt, prompt_v, own_kt, own_v)
    return (
        all(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu" for t in caches)
        and prompt_pad.dtype == torch.uint8 and prompt_pad.is_contiguous() and prompt_pad.shape == (prompts, prompt_len)
        and prompt_kt.shape == (prompts, kv_heads, prompt_len // VECTOR, head_dim, VECTOR)
        and prompt_v.shape[3] == head_dim and own_v.shape[:2] == (rows, kv_heads) and own_v.shape[3] == head_dim
        and own_kt.shape == (rows, kv_heads, own_v.shape[2] // VECTOR, head_dim, VECTOR)
        and prompt_rows.dtype == torch.int64 and prompt_rows.shape == (prompts + 1,) and int(prompt_rows[-1]) == rows
        and heads % kv_heads == 0 and head_dim % VECTOR == 0
        and prompt_len % VECTOR == 0 and prompt_len >= VECTOR and own_v.shape[2] % VECTOR == 0
    )  # fmt: skip


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight for each row of a contiguous float32 (B, d) ``x``."""
    out = torch.empty_like(x)  # (B, d)
    load().rms_norm(
        x.data_ptr(), weight.data_ptr(), eps, out.data_ptr(), x.shape[0], x.shape[1], torch.get_num_threads()
    )
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for a contiguous float32 (B, 2 I) ``gate_up`` holding gate then up in each
    row (the gated MLP's fused product): (B, 2 I) -> (B, I), in one pass instead of three operations."""
    rows, inner = gate_up.shape[0], gate_up.shape[1] // 2
    out = gate_up.new_empty(rows, inner)  # (B, I)
    load().silu_mul(gate_up.data_ptr(), out.data_ptr(), rows, inner, torch.get_num_threads())
    return out


@functools.cache
def blas_sgemm() -> int | None:
    """The address of the BLAS ``sgemm_`` that PyTorch's own float32 matrix products call (MKL in
    the x86-64 Linux wheels, found through ``libtorch_cpu``), checked on one small product against
    ``torch.mm``; None where there is none (then :class:`Step` is not used)."""
    library = (
        Path(torch.__file__).parent
        / "lib"
        / ("libtorch_cpu.dylib" if platform.system() == "Darwin" else "libtorch_cpu.so")
    )
    if load() is None:
        return None
    try:
        address = ctypes.cast(ctypes.CDLL(str(library))["sgemm_"], ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    generator = torch.Generator().manual_seed(0)  # its own: the global random state stays untouched
    x, weight, y = torch.randn(3, 5, generator=generator), torch.randn(4, 5, generator=generator), torch.empty(3, 4)
    load().gemm_floor(address, _linear((weight, None)), 1, _pointers([x]), _pointers([y]), 3)
    if not torch.allclose(y, x @ weight.T, atol=1e-5):
        logger.warning("sgemm_ in %s does not compute x W^T as expected: the decoding step stays in Python", library)
        return None
    return address


def _linear(weights: tuple[torch.Tensor, torch.Tensor | None]) -> _Linear:
    """A (weight (out, in), bias (out,) or None) pair, contiguous float32, as ``struct linear``."""
    weight, bias = weights
    return _Linear(weight.data_ptr(), None if bias is None else bias.data_ptr(), weight.shape[0], weight.shape[1])


def _pointers(tensors: list[torch.Tensor]):
    """A C array of the tensors' data pointers."""
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


@dataclass(frozen=True)
class StepWeights:
    """What :class:`Step` reads of the model, all contiguous float32 on the CPU.

    ``layers``: per layer (attention RMSNorm weight, MLP RMSNorm weight, qkv, o, gate_up, down),
    each product a (weight (out, in), bias or None) pair, q's and k's rows of qkv in pair order
    (:func:`course_lib.decoding.fused_layer`). ``rotation``: (positions, D / 2, 2) cos and sin.
    """

    embed: torch.Tensor  # (V, d)
    rotation: torch.Tensor  # (N, D / 2, 2)
    final_norm: torch.Tensor  # (d,)
    lm_head: tuple
    layers: list
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    q_scale: float


def _shapes_fit(w: StepWeights) -> bool:
    """Whether the weights' shapes make the layers :class:`Step` computes."""
    vocab, dim = w.embed.shape
    head_width, inner = w.heads * w.head_dim, w.layers[0][4][0].shape[0] // 2
    wanted = {  # per layer: (out, in) of qkv, o, gate_up and down
        "qkv": ((w.heads + 2 * w.kv_heads) * w.head_dim, dim), "o": (dim, head_width),
        "gate_up": (2 * inner, dim), "down": (dim, inner),
    }  # fmt: skip
    layers_fit = all(
        norm_a.shape == norm_b.shape == (dim,)
        and all(pair[0].shape == shape and (pair[1] is None or pair[1].shape == shape[:1])
                for pair, shape in zip(products, wanted.values()))
        for norm_a, norm_b, *products in w.layers
    )  # fmt: skip
    return (
        layers_fit and w.final_norm.shape == (dim,) and w.lm_head[0].shape == (vocab, dim)
        and (w.lm_head[1] is None or w.lm_head[1].shape == (vocab,))
        and w.rotation.shape[1:] == (w.head_dim // 2, 2) and w.heads % w.kv_heads == 0
    )  # fmt: skip


class Step:
    """A whole decoding step in one compiled call (``decode_step`` in decoding_kernels.c): the same
    operations as :meth:`course_lib.decoding.Decoder.step` with fused weights and the kernels, the
    products through :func:`blas_sgemm`.

    The decoder makes one per batch, hands it the caches with :meth:`set_caches` (again after each
    ``keep``) and calls :meth:`__call__` once per step.
    """

    def __init__(self, weights: StepWeights, rows: int):
        self.weights = weights  # kept alive: the C structures point into these tensors
        if blas_sgemm() is None:
            raise ValueError("Step needs PyTorch's BLAS sgemm_ (blas_sgemm() found none): decode with the Python step")
        contiguous = [
            weights.embed,
            weights.rotation,
            weights.final_norm,
            *[t for t in weights.lm_head if t is not None],
        ]
        for layer in weights.layers:
            contiguous += [layer[0], layer[1], *[w for pair in layer[2:] for w in pair if w is not None]]
        if not all(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu" for t in contiguous):
            raise ValueError("Step: every weight must be a contiguous float32 CPU tensor")
        if not _shapes_fit(weights):
            raise ValueError(
                "Step: the weights' shapes do not make a Llama-style layer (qkv (H + 2 H_kv) D x d, o d x H D, "
                "gate_up 2 I x d, down d x I, norms (d,), rotation (N, D / 2, 2)): build them with "
                "course_lib.decoding.fused_layer"
            )
        self.layers = (_Layer * len(weights.layers))()
        for struct, (attn_norm, mlp_norm, qkv, o, gate_up, down) in zip(self.layers, weights.layers):
            struct.attn_norm, struct.mlp_norm = attn_norm.data_ptr(), mlp_norm.data_ptr()
            struct.qkv, struct.o, struct.gate_up, struct.down = map(_linear, (qkv, o, gate_up, down))
        vocab, dim = weights.embed.shape
        self.model = _Model(
            blas_sgemm(), len(weights.layers), dim, weights.heads, weights.kv_heads, weights.head_dim, vocab,
            weights.rotation.shape[0], weights.eps, weights.q_scale, weights.embed.data_ptr(),
            weights.rotation.data_ptr(), weights.final_norm.data_ptr(), _linear(weights.lm_head), self.layers,
        )  # fmt: skip
        qkv_width, inner = weights.layers[0][2][0].shape[0], weights.layers[0][4][0].shape[0] // 2
        widths = {"hidden": dim, "x": dim, "qkv": qkv_width, "attn": weights.heads * weights.head_dim,
                  "gate_up": 2 * inner, "inner": inner}  # fmt: skip
        self.scratch = {name: weights.embed.new_empty(rows, width) for name, width in widths.items()}  # (B, ...) each
        self.batch = _Batch(**{name: t.data_ptr() for name, t in self.scratch.items()})
        self.vocab = vocab

    def set_caches(self, prompt_kt, prompt_v, own_kt, own_v, prompt_pad, prompt_rows) -> None:
        """The caches as :func:`attend` takes them, one tensor per layer for the first four; checked here."""
        rows, prompts, w = int(prompt_rows[-1]), prompt_pad.shape[0], self.weights
        if rows > len(self.scratch["x"]) or len(own_kt) != len(self.layers):
            raise ValueError(
                f"Step: at most {len(self.scratch['x'])} rows and one cache per layer ({len(self.layers)})"
            )
        for i in range(len(self.layers)):  # every layer checked before any pointer changes
            cache = (prompt_kt[i], prompt_v[i], prompt_pad, own_kt[i], own_v[i], prompt_rows)
            if prompt_v[i].shape[1] != w.kv_heads or not _caches_fit(rows, w.heads, w.head_dim, *cache):
                raise ValueError(f"Step: layer {i}'s caches are not laid out as decoding_kernels.attend documents")
        self.caches = (prompt_kt, prompt_v, own_kt, own_v, prompt_pad, prompt_rows)  # kept alive
        for i, struct in enumerate(self.layers):
            struct.prompt_kt, struct.prompt_v = prompt_kt[i].data_ptr(), prompt_v[i].data_ptr()
            struct.own_kt, struct.own_v = own_kt[i].data_ptr(), own_v[i].data_ptr()
        self.batch.rows, self.batch.prompts = rows, prompts
        self.batch.prompt_len, self.batch.own_cap = prompt_v[0].shape[2], own_v[0].shape[2]
        self.batch.prompt_rows, self.batch.prompt_pad = prompt_rows.data_ptr(), prompt_pad.data_ptr()

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, own_len: int) -> torch.Tensor:
        """(B,) tokens at (B,) positions, ``own_len`` own tokens per row after this one -> (B, V) logits."""
        tokens, positions = tokens.to(torch.int64).contiguous(), positions.to(torch.int64).contiguous()
        if len(tokens) != self.batch.rows or len(positions) != self.batch.rows:
            raise ValueError(
                f"Step: {self.batch.rows} rows expected, got {len(tokens)} tokens and {len(positions)} positions"
            )
        if not 1 <= own_len <= self.batch.own_cap:
            raise ValueError(f"Step: own_len must be within 1 .. {self.batch.own_cap} (the own caches' room)")
        logits = self.weights.embed.new_empty(self.batch.rows, self.vocab)  # (B, V)
        self.batch.tokens, self.batch.positions = tokens.data_ptr(), positions.data_ptr()
        self.batch.logits, self.batch.own_len = logits.data_ptr(), own_len
        status = load().decode_step(ctypes.byref(self.model), ctypes.byref(self.batch), torch.get_num_threads())
        if status == -1:
            raise IndexError(f"decoding step: a token id outside the vocabulary of {self.vocab} ({tokens.tolist()})")
        if status == -2:
            raise IndexError(
                f"decoding step: a position past the {self.model.positions} the rotary table holds: make the decoder "
                "with a larger max_new_tokens"
            )
        return logits


def gemm_floor_ms(weights: list[torch.Tensor], rows: int, repeats: int = 50) -> float | None:
    """Milliseconds for one product x W^T per weight (``rows`` rows each, separate calls) through
    :func:`blas_sgemm` from C, with no dispatch between them: the floor of a :class:`Step` (best of
    ``repeats``); None where :class:`Step` cannot run."""
    if load() is None or blas_sgemm() is None:
        return None
    weights = [w.float().contiguous() for w in weights]
    inputs = [torch.randn(rows, w.shape[1]) for w in weights]  # (B, in) each
    outputs = [torch.empty(rows, w.shape[0]) for w in weights]  # (B, out) each
    structs = (_Linear * len(weights))(*[_linear((w, None)) for w in weights])
    x, y = _pointers(inputs), _pointers(outputs)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        load().gemm_floor(blas_sgemm(), structs, len(weights), x, y, rows)
        best = min(best, time.perf_counter() - start)
    return 1000 * best
