"""The reference Triton kernels beside PyTorch, then the tokenizer benchmark if there is one.

- FlashAttention (``reference_impl.kernels.flash_attention``), forward and forward+backward, beside
  ``torch.nn.functional.scaled_dot_product_attention`` (whatever backend PyTorch picks) and the naive
  ``attention_reference`` (the full score matrix in float32), with each one's time over ours: above 1 means ours
  is faster. A column checks our forward output against SDPA's on the same inputs.
- Fused RMSNorm (``reference_impl.kernels.rmsnorm``) beside ``torch.nn.functional.rms_norm`` and the eager
  ``reference_impl.functional.rms_norm``.
- ``bench/tokenizer_speed.py``'s documented entry ``run(report)`` with its defaults, when that file exists.

On a GPU: bfloat16, sequences of 1k to 16k, head dims 64 and 128, mostly causal. Each measurement is the median
of ``--reps`` runs timed with CUDA events after ``--warmup`` runs, with the L2 cache flushed before each run; the
first call (Triton compilation and autotuning) is reported on its own. The whole GPU run takes a few minutes.

Without a GPU the kernels run through Triton's interpreter (this script sets ``TRITON_INTERPRET=1`` itself) on
tiny float32 shapes, timed by wall clock. Those figures measure a NumPy emulation of the kernels, not the
kernels: they show that the bench runs end to end and nothing about performance.

    .venv/bin/python bench/reference_kernels.py [--reps 30] [--warmup 5] [--skip-tokenizer]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    # Must precede the first import of Triton (below, through the kernel modules).
    os.environ["TRITON_INTERPRET"] = "1"

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import triton  # noqa: E402

from reference_impl.functional import rms_norm as rms_norm_eager  # noqa: E402
from reference_impl.kernels.flash_attention import attention_reference, flash_attention  # noqa: E402
from reference_impl.kernels.rmsnorm import rms_norm  # noqa: E402

DEVICE = torch.device("cuda" if ON_GPU else "cpu")


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    heads: int
    kv_heads: int
    seq: int
    head_dim: int
    causal: bool

    def label(self) -> str:
        mask = "causal" if self.causal else "full"
        heads = f"H{self.heads}" if self.kv_heads == self.heads else f"H{self.heads}/{self.kv_heads}kv"
        return f"B{self.batch} {heads} T{self.seq} D{self.head_dim} {mask}"

    def forward_flops(self) -> float:
        # Two matmuls of 2*T*S*D flops per head; causal does about half of them.
        flops = 4.0 * self.batch * self.heads * self.seq * self.seq * self.head_dim
        return flops / 2 if self.causal else flops


GPU_ATTENTION = [
    AttentionShape(8, 16, 16, 1024, 64, True),
    AttentionShape(2, 16, 16, 4096, 64, True),
    AttentionShape(1, 16, 16, 16384, 64, True),
    AttentionShape(8, 16, 16, 1024, 128, True),
    AttentionShape(2, 16, 16, 4096, 128, True),
    AttentionShape(2, 16, 16, 4096, 128, False),
    AttentionShape(1, 16, 16, 8192, 128, True),
    AttentionShape(1, 16, 16, 16384, 128, True),
    AttentionShape(2, 32, 8, 4096, 128, True),
]
CPU_ATTENTION = [
    AttentionShape(1, 2, 2, 64, 32, False),
    AttentionShape(1, 2, 2, 64, 32, True),
    AttentionShape(1, 4, 2, 48, 16, True),
]
GPU_RMS_NORM = [(4096, 4096), (16384, 8192), (8192, 16384)]
CPU_RMS_NORM = [(64, 256)]


class Timer:
    """Median milliseconds of a callable, and the time of its first call (compilation, autotuning)."""

    def __init__(self, warmup: int, reps: int) -> None:
        self.warmup = warmup
        self.reps = reps
        # Larger than any GPU's L2 cache: zeroing it before each run evicts the previous run's data.
        self.flush = torch.empty(256 * 2**20, dtype=torch.int8, device=DEVICE) if ON_GPU else None

    def first_call(self, fn: Callable[[], object]) -> float:
        self._sync()
        started = time.perf_counter()
        fn()
        self._sync()
        return (time.perf_counter() - started) * 1e3

    def median(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        if not ON_GPU:
            times = []
            for _ in range(self.reps):
                started = time.perf_counter()
                fn()
                times.append((time.perf_counter() - started) * 1e3)
            return statistics.median(times)
        events = []
        for _ in range(self.reps):
            self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) for start, end in events)

    @staticmethod
    def _sync() -> None:
        if ON_GPU:
            torch.cuda.synchronize()


def naive_fits(shape: AttentionShape) -> bool:
    """Whether the naive forward+backward (about five float32 (B, H, T, T) tensors alive) fits in free memory."""
    if not ON_GPU:
        return True
    needed = 5 * 4 * shape.batch * shape.heads * shape.seq**2
    free, _ = torch.cuda.mem_get_info()
    return needed < 0.6 * free


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])


def ours(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    return flash_attention(q, k, v, causal=causal)


def forward_and_backward(attention: Callable, q, k, v, causal: bool, grad_out: torch.Tensor) -> Callable:
    def run() -> object:
        out = attention(q, k, v, causal)
        return torch.autograd.grad(out, (q, k, v), grad_out)

    return run


def format_ms(value: float | None) -> str:
    return f"{value:9.3f}" if value is not None else "  skipped"


def format_ratio(other: float | None, mine: float) -> str:
    return f"{other / mine:6.2f}x" if other is not None else "      -"


def bench_attention(timer: Timer, dtype: torch.dtype) -> None:
    shapes = GPU_ATTENTION if ON_GPU else CPU_ATTENTION
    print(f"FlashAttention, {str(dtype).removeprefix('torch.')}; times in ms; 'x' columns: their time / ours")
    header = (
        f"{'shape':<28} {'pass':<8} {'ours':>9} {'sdpa':>9} {'naive':>9} {'sdpa/ours':>9} {'naive/ours':>10}"
        f" {'TFLOP/s':>8} {'1st call':>9}"
    )
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:

        def randn(heads: int, shape: AttentionShape = shape) -> torch.Tensor:
            size = (shape.batch, heads, shape.seq, shape.head_dim)
            return torch.randn(size, generator=generator).to(device=DEVICE, dtype=dtype).requires_grad_()

        q, k, v = randn(shape.heads), randn(shape.kv_heads), randn(shape.kv_heads)
        grad_out = torch.randn(q.shape, generator=generator).to(device=DEVICE, dtype=dtype)
        with torch.no_grad():
            error = (
                (ours(q, k, v, shape.causal).float() - sdpa(q, k, v, shape.causal).float()).abs().max().item()
            )
        fits = naive_fits(shape)
        candidates = (("ours", ours), ("sdpa", sdpa), ("naive", attention_reference))
        passes = {
            "fwd": (1.0, {label: partial(_no_grad, fn, q, k, v, shape.causal) for label, fn in candidates}),
            "fwd+bwd": (
                3.5,  # the backward pass does 2.5 times the forward's matmul work
                {
                    label: forward_and_backward(fn, q, k, v, shape.causal, grad_out)
                    for label, fn in candidates
                },
            ),
        }
        for name, (flops_factor, runs) in passes.items():
            first = timer.first_call(runs["ours"])
            mine = timer.median(runs["ours"])
            theirs = timer.median(runs["sdpa"])
            naive = timer.median(runs["naive"]) if fits else None
            tflops = flops_factor * shape.forward_flops() / (mine * 1e-3) / 1e12
            print(
                f"{shape.label():<28} {name:<8} {mine:9.3f} {theirs:9.3f} {format_ms(naive)}"
                f" {format_ratio(theirs, mine):>9} {format_ratio(naive, mine):>10} {tflops:8.2f} {first:9.1f}"
            )
        print(f"{'':<28} max |ours - sdpa| of the forward output: {error:.2e}")
        del q, k, v, grad_out
        if ON_GPU:
            torch.cuda.empty_cache()


def _no_grad(fn: Callable, q, k, v, causal: bool) -> object:
    with torch.no_grad():
        return fn(q, k, v, causal)


def bench_rms_norm(timer: Timer, dtype: torch.dtype) -> None:
    shapes = GPU_RMS_NORM if ON_GPU else CPU_RMS_NORM
    print(f"RMSNorm, {str(dtype).removeprefix('torch.')}; times in ms; 'x' columns: their time / ours")
    header = (
        f"{'rows x features':<18} {'pass':<8} {'ours':>9} {'F.rms_norm':>10} {'eager':>9} {'F/ours':>7}"
        f" {'eager/ours':>10} {'GB/s':>7}"
    )
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    for rows, features in shapes:
        x = torch.randn(rows, features, generator=generator).to(device=DEVICE, dtype=dtype).requires_grad_()
        weight = torch.ones(features, device=DEVICE, dtype=dtype, requires_grad=True)
        grad_out = torch.randn(rows, features, generator=generator).to(device=DEVICE, dtype=dtype)
        candidates = {
            "ours": lambda x, w: rms_norm(x, w, 1e-6),
            "torch": lambda x, w: F.rms_norm(x, x.shape[-1:], w, 1e-6),
            "eager": lambda x, w: rms_norm_eager(x, w, 1e-6),
        }
        # Row-sized tensors read or written once each: x, y forward; then x, dy, dx backward.
        passes = {
            "fwd": (2, {label: partial(_no_grad_rms, fn, x, weight) for label, fn in candidates.items()}),
            "fwd+bwd": (
                5,
                {
                    label: partial(_rms_forward_and_backward, fn, x, weight, grad_out)
                    for label, fn in candidates.items()
                },
            ),
        }
        for name, (bytes_moved, runs) in passes.items():
            timer.first_call(runs["ours"])
            times = {label: timer.median(run) for label, run in runs.items()}
            bandwidth = bytes_moved * x.numel() * x.element_size() / (times["ours"] * 1e-3) / 1e9
            print(
                f"{f'{rows} x {features}':<18} {name:<8} {times['ours']:9.3f} {times['torch']:10.3f}"
                f" {times['eager']:9.3f} {format_ratio(times['torch'], times['ours']):>7}"
                f" {format_ratio(times['eager'], times['ours']):>10} {bandwidth:7.1f}"
            )


def _no_grad_rms(fn: Callable, x: torch.Tensor, weight: torch.Tensor) -> object:
    with torch.no_grad():
        return fn(x, weight)


def _rms_forward_and_backward(
    fn: Callable, x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor
) -> object:
    return torch.autograd.grad(fn(x, weight), (x, weight), grad_out)


def bench_tokenizer() -> None:
    path = REPO / "bench" / "tokenizer_speed.py"
    print("Tokenizer (bench/tokenizer_speed.py)")
    if not path.exists():
        print("bench/tokenizer_speed.py does not exist: tokenizer benchmark skipped")
        return
    spec = importlib.util.spec_from_file_location("tokenizer_speed", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        print(f"bench/tokenizer_speed.py cannot be imported ({error}): tokenizer benchmark skipped")
        return
    entry = getattr(module, "run", None)
    if entry is None:
        print("bench/tokenizer_speed.py has no run(report): tokenizer benchmark skipped")
        return
    entry(print)


def describe_device() -> str:
    if ON_GPU:
        name = torch.cuda.get_device_name()
        return f"{name}, torch {torch.__version__}"
    return (
        f"CPU only, torch {torch.__version__}: Triton kernels run in the interpreter (TRITON_INTERPRET=1). "
        "These timings are NOT meaningful performance figures, only a check that the bench runs."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=30 if ON_GPU else 3, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=5 if ON_GPU else 1, help="untimed runs before timing")
    parser.add_argument("--skip-tokenizer", action="store_true", help="do not run bench/tokenizer_speed.py")
    args = parser.parse_args()

    print(f"device: {describe_device()}")
    print(f"triton {triton.__version__}")
    timer = Timer(args.warmup, args.reps)
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    started = time.perf_counter()
    print()
    bench_attention(timer, dtype)
    print()
    bench_rms_norm(timer, dtype)
    print()
    if args.skip_tokenizer:
        print("Tokenizer benchmark skipped (--skip-tokenizer)")
    else:
        bench_tokenizer()
    print()
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
