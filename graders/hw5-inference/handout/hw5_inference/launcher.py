"""Runs the tensor-parallel and ZeRO-1 code on 2 processes and hands the results back (given; no need to change).

The interface functions at the bottom (``tp_column_parallel_linear`` ...) are what the autograder calls. Each
sends one task to two rank processes, started on the first call (``fork`` on Linux, ``spawn`` elsewhere) and
joined into a gloo process group through a file store in a private temporary directory. Both ranks get the full
inputs; the task functions below take each rank's shards (with your ``shard``), call your per-rank code,
back-propagate the given output gradient, and send back the outputs and the gradients. The interface function
returns, for every key, a list with one entry per rank: ``result["out"][1]`` is rank 1's output.

Tensors travel between the processes as bytes written by ``torch.save`` and read with
``torch.load(weights_only=True)``. If a rank raises, dies, or the ranks do not answer within ``TASK_TIMEOUT_S``
(one may be waiting in a collective the other never joined; gloo gives up after ``COLLECTIVE_TIMEOUT``), the
call raises ``RuntimeError`` with the failing rank's traceback, and the processes are replaced by new ones for
the next call, since they may no longer be in step.

With ``spawn`` (macOS, Windows) a script that calls these functions needs the ``if __name__ == "__main__":``
guard; pytest needs nothing.
"""

import io
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import wait
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import tensor_parallel as tp
from . import zero

WORLD_SIZE = 2
TASK_TIMEOUT_S = 45.0  # one task, process start-up included (the autograder allows 60 s per call)
COLLECTIVE_TIMEOUT = timedelta(seconds=30)  # a rank stuck in a collective raises instead of hanging


def _leaf(t: Tensor) -> Tensor:
    return t.detach().clone().requires_grad_(True)


def _grad(t: Tensor | None) -> Tensor | None:
    return None if t is None or t.grad is None else t.grad.detach()


def _backward(out: Tensor, grad_output: Tensor) -> None:
    """``out.backward(grad_output)``, as the gradient of ``(out * grad_output).sum()`` (the same numbers):
    passing a gradient tensor to ``backward`` makes torch import sympy, seconds per process."""
    (out * grad_output).sum().backward()


# -- the tasks, run on every rank ------------------------------------------------------------------------------


def _column_parallel_linear(rank, world, x, weight, bias, grad_output, gather_output):
    x = _leaf(x)
    w = _leaf(tp.shard(weight, 0, rank, world))
    b = _leaf(tp.shard(bias, 0, rank, world)) if bias is not None else None
    out = tp.column_parallel_linear(x, w, b, gather_output)
    _backward(out, grad_output if gather_output else tp.shard(grad_output, -1, rank, world))
    return {"out": out.detach(), "grad_x": _grad(x), "grad_weight": _grad(w), "grad_bias": _grad(b)}


def _row_parallel_linear(rank, world, x, weight, bias, grad_output, input_is_parallel):
    x = _leaf(tp.shard(x, -1, rank, world) if input_is_parallel else x)
    w = _leaf(tp.shard(weight, 1, rank, world))
    b = _leaf(bias) if bias is not None else None
    out = tp.row_parallel_linear(x, w, b, input_is_parallel)
    _backward(out, grad_output)
    return {"out": out.detach(), "grad_x": _grad(x), "grad_weight": _grad(w), "grad_bias": _grad(b)}


def _feed_forward(rank, world, x, w1, w2, w3, grad_output):
    x = _leaf(x)
    w1, w3 = _leaf(tp.shard(w1, 0, rank, world)), _leaf(tp.shard(w3, 0, rank, world))
    w2 = _leaf(tp.shard(w2, 1, rank, world))
    out = tp.parallel_feed_forward(x, w1, w2, w3)
    _backward(out, grad_output)
    return {
        "out": out.detach(),
        "grad_x": _grad(x),
        "grad_w1": _grad(w1),
        "grad_w2": _grad(w2),
        "grad_w3": _grad(w3),
    }


def _attention(rank, world, x, wq, wk, wv, wo, n_heads, n_kv_heads, rope_theta, grad_output):
    x = _leaf(x)
    wq, wk, wv = (_leaf(tp.shard(w, 0, rank, world)) for w in (wq, wk, wv))
    wo = _leaf(tp.shard(wo, 1, rank, world))
    out = tp.parallel_attention(x, wq, wk, wv, wo, n_heads, n_kv_heads, rope_theta)
    _backward(out, grad_output)
    grads = {f"grad_{name}": _grad(w) for name, w in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo))}
    return {"out": out.detach(), "grad_x": _grad(x), **grads}


def _zero1_adamw(rank, world, params, grads, lr, betas, eps, weight_decay):
    params = [p.detach().clone() for p in params]
    optimizer = zero.ShardedAdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    for step_grads in grads:  # grads[step][rank][i]: this rank's gradient of params[i] at that step
        for p, g in zip(params, step_grads[rank], strict=True):
            p.grad = g.clone()
        optimizer.step()
    exp_avg, exp_avg_sq = optimizer.state_shards()
    start, end = optimizer.bounds[rank]
    return {
        "params": params,
        "exp_avg": exp_avg.detach(),
        "exp_avg_sq": exp_avg_sq.detach(),
        "bounds": [start, end],
    }


TASKS = {
    "column_parallel_linear": _column_parallel_linear,
    "row_parallel_linear": _row_parallel_linear,
    "feed_forward": _feed_forward,
    "attention": _attention,
    "zero1_adamw": _zero1_adamw,
}


# -- the rank processes ----------------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


def _rank_main(rank: int, world: int, store_path: str, conn, inherited: list) -> None:
    """One rank: join the group, then run tasks until the launcher goes away (its end of the pipe closes)."""
    for (
        other
    ) in inherited:  # a forked rank holds copies of the launcher's ends: close them, or EOF never comes
        other.close()
    if "lo" in (name for _, name in socket.if_nameindex()):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the sandbox has a loopback interface only
    torch.set_num_threads(1)  # two ranks share the machine with the autograder
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        while True:
            try:
                name, payload = conn.recv()
            except EOFError:
                return
            try:
                conn.send(("ok", _dumps(TASKS[name](rank, world, **_loads(payload)))))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class _RankPool:
    """The rank processes, each with a pipe to this process."""

    def __init__(self) -> None:
        # fork starts a rank in milliseconds (spawn imports torch again, seconds); it is safe here because
        # the ranks set their own thread count before any parallel work. macOS and Windows need spawn.
        method = "fork" if sys.platform == "linux" else "spawn"
        context = multiprocessing.get_context(method)
        self._directory = tempfile.TemporaryDirectory(prefix="hw5-tp-")
        store_path = os.path.join(self._directory.name, "store")
        self.connections = []
        self.processes = []
        for rank in range(WORLD_SIZE):
            ours, theirs = context.Pipe()
            self.connections.append(ours)
            inherited = list(self.connections) if method == "fork" else []
            process = context.Process(
                target=_rank_main, args=(rank, WORLD_SIZE, store_path, theirs, inherited), daemon=True
            )
            process.start()
            theirs.close()
            self.processes.append(process)

    def run(self, name: str, kwargs: dict) -> list[dict]:
        """Results per rank; RuntimeError if a rank raised (with the first failing rank's traceback), died,
        or did not answer in time."""
        payload = _dumps(kwargs)
        for conn in self.connections:
            conn.send((name, payload))
        replies: dict[int, tuple[str, Any]] = {}
        deadline = time.monotonic() + TASK_TIMEOUT_S
        while len(replies) < WORLD_SIZE:
            pending = [conn for rank, conn in enumerate(self.connections) if rank not in replies]
            ready = wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError(f"{name}: the ranks did not finish within {TASK_TIMEOUT_S:g} s")
            for conn in ready:
                rank = self.connections.index(conn)
                try:
                    replies[rank] = conn.recv()
                except (EOFError, OSError):
                    raise RuntimeError(f"{name}: rank {rank} exited") from None
        failures = [(rank, data) for rank, (status, data) in sorted(replies.items()) if status != "ok"]
        if failures:
            rank, trace = failures[0]
            last_line = trace.strip().splitlines()[-1] if trace.strip() else "an error"
            raise RuntimeError(f"{name} failed on rank {rank}: {last_line}\n{trace}")
        return [_loads(replies[rank][1]) for rank in range(WORLD_SIZE)]

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        for process in self.processes:
            process.join(timeout=2)
            if process.is_alive():
                process.kill()
                process.join()
        self._directory.cleanup()


_pool: _RankPool | None = None


def run_on_ranks(name: str, **kwargs: Any) -> dict[str, list]:
    """Run task ``name`` on every rank; ``{key: [rank 0's value, rank 1's value]}``."""
    global _pool
    if _pool is None:
        _pool = _RankPool()
    try:
        per_rank = _pool.run(name, kwargs)
    except Exception:
        # After a failure the ranks may be out of step in their collectives (or one may be stuck in one):
        # start afresh next time, which costs a fraction of a second with fork.
        _pool.close()
        _pool = None
        raise
    return {key: [result[key] for result in per_rank] for key in per_rank[0]}


# -- the interface the autograder calls ------------------------------------------------------------------------


def tp_column_parallel_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, grad_output: Tensor, gather_output: bool
) -> dict[str, list]:
    """Column-parallel ``x @ weight.T + bias`` on 2 ranks, then backward with ``grad_output`` (each rank takes
    its slice of it when the output is not gathered). Keys: out, grad_x, grad_weight, grad_bias."""
    return run_on_ranks(
        "column_parallel_linear",
        x=x,
        weight=weight,
        bias=bias,
        grad_output=grad_output,
        gather_output=gather_output,
    )


def tp_row_parallel_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, grad_output: Tensor, input_is_parallel: bool
) -> dict[str, list]:
    """Row-parallel ``x @ weight.T + bias`` on 2 ranks (with ``input_is_parallel`` each rank gets its slice of
    ``x``), then backward. Keys: out, grad_x, grad_weight, grad_bias."""
    return run_on_ranks(
        "row_parallel_linear",
        x=x,
        weight=weight,
        bias=bias,
        grad_output=grad_output,
        input_is_parallel=input_is_parallel,
    )


def tp_feed_forward(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor, grad_output: Tensor) -> dict[str, list]:
    """The parallel SwiGLU on 2 ranks, then backward. Keys: out, grad_x, grad_w1, grad_w2, grad_w3."""
    return run_on_ranks("feed_forward", x=x, w1=w1, w2=w2, w3=w3, grad_output=grad_output)


def tp_attention(
    x: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    n_heads: int,
    n_kv_heads: int,
    rope_theta: float,
    grad_output: Tensor,
) -> dict[str, list]:
    """The parallel attention on 2 ranks, then backward. Keys: out, grad_x, grad_wq, grad_wk, grad_wv,
    grad_wo."""
    return run_on_ranks(
        "attention",
        x=x,
        wq=wq,
        wk=wk,
        wv=wv,
        wo=wo,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        rope_theta=rope_theta,
        grad_output=grad_output,
    )


def zero1_adamw(
    params: list[Tensor],
    grads: list[list[list[Tensor]]],
    lr: float,
    betas: list[float],
    eps: float,
    weight_decay: float,
) -> dict[str, list]:
    """``len(grads)`` ZeRO-1 AdamW steps on 2 ranks; ``grads[step][rank][i]`` is rank ``rank``'s gradient of
    ``params[i]``. Keys: params (each rank's final parameters), exp_avg, exp_avg_sq, bounds."""
    return run_on_ranks(
        "zero1_adamw",
        params=params,
        grads=grads,
        lr=lr,
        betas=list(betas),
        eps=eps,
        weight_decay=weight_decay,
    )
