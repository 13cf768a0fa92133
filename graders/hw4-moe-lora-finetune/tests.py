"""Hidden tests of HW4: top-k MoE, LoRA, checkpoints and LoRA fine-tuning (trusted side; never in the sandbox).

Expected values come from reference_impl (moe.MoE, lora.LoRALinear and friends, model.Transformer, train's AdamW
and cross_entropy); inputs from the per-test generators, seeded by the secret run seed. Checkpoints are compared
bit for bit. The fine-tuning tests hand the student a freshly initialised base model and a training split of the
"increment" digit task; the held-out split never leaves this process, and the reference model with the returned
adapters is evaluated on it here.
"""

import math
from typing import Any

import torch
from torch import Tensor

from graders.harness import CallError, Context, Suite
from reference_impl.lora import LoRALinear, apply_lora, load_lora_state_dict, lora_state_dict
from reference_impl.model import ModelArgs, Transformer
from reference_impl.moe import MoE
from reference_impl.train import IGNORE_INDEX, SEPARATOR_TOKEN, AdamW, cross_entropy

suite = Suite()
suite.metric("heldout_loss", unit="nats")

# Float32 MoE: expert matmuls over different batch sizes and the weighted sum in another order round differently;
# a routing or weighting mistake is off by far more (tenths).
MOE_F32 = {"rtol": 1e-4, "atol": 1e-5}
MOE_GRAD_F32 = {"rtol": 1e-4, "atol": 1e-5}
LORA_F32 = {"rtol": 1e-5, "atol": 1e-5}
LORA_GRAD_F32 = {"rtol": 1e-4, "atol": 1e-5}
# Merging in half precision may round the update before or after adding it: a unit or two in the last place.
LORA_MERGE_HALF = {
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}

# The fine-tuning model: the debug preset's layout at half its width and with a vocabulary just big enough for
# the digit task (digits 0-9, the separator 10), so a LoRA step takes milliseconds on one CPU core.
FINETUNE_MODEL = ModelArgs(
    dim=32, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=16, hidden_dim=64, max_seq_len=32
)
N_DIGITS = 5  # 10**5 prompts: the training and held-out splits are disjoint draws from them
N_TRAIN = 4096
N_HELDOUT = 1024
ALL_LINEARS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"]
# The reference solution gets under 1e-3 in about 100 steps (1-3 s on one core); guessing a digit is ln 10 = 2.3.
HELDOUT_LOSS_THRESHOLD = 0.05
FINETUNE_BUDGET_S = 8.0
SHAPES_BUDGET_S = 0.5


def _budget_grace_s(budget_s: float) -> float:
    """Time allowed past the budget for moving the inputs in and the adapters out."""
    return 1.0 + 0.25 * budget_s


def _student_key(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_pair(ctx: Context, value: Any, fn: str) -> tuple[Any, Any]:
    """A function result that must be a pair (a tuple arrives as a list)."""
    if type(value) is not list or len(value) != 2:
        ctx.fail(f"{fn} must return a tuple of two values (y, aux_loss); got a {type(value).__name__}")
    return value[0], value[1]


def _check_keys(ctx: Context, actual: Any, expected: set[str], what: str) -> dict:
    """``actual`` must be a dict with exactly the keys ``expected``; hidden tests report counts, not names."""
    if type(actual) is not dict:
        ctx.fail(f"{what} is a {type(actual).__name__}, expected a dict")
    missing = sorted(expected - actual.keys())
    unexpected = sorted((_student_key(key) for key in actual.keys() - expected), key=str)
    if missing or unexpected:
        if ctx.visible:
            parts = []
            if missing:
                parts.append(f"missing keys {', '.join(repr(key) for key in missing[:6])}")
            if unexpected:
                parts.append(f"unexpected keys {', '.join(unexpected[:6])}")
            ctx.fail(f"{what} has the wrong keys: {'; '.join(parts)}")
        ctx.fail(
            f"{what} has the wrong keys: {len(missing)} expected key(s) missing, "
            f"{len(unexpected)} key(s) that should not be there"
        )
    return actual


def _check_bits(ctx: Context, actual: Any, expected: Tensor, what: str) -> None:
    """Bit-for-bit equality: NaN payloads, -0.0 and every dtype included."""
    ctx.check_tensor(actual, shape=expected.shape, dtype=expected.dtype, device=expected.device, what=what)
    item = expected.element_size()
    want = expected.detach().cpu().contiguous().reshape(-1).view(torch.uint8).reshape(-1, item)
    got = actual.detach().cpu().contiguous().reshape(-1).view(torch.uint8).reshape(-1, item)
    differing = int((want != got).any(dim=1).sum())
    if differing:
        ctx.fail(
            f"{what} is not bit-for-bit what was saved: {differing} of {expected.numel()} elements differ"
        )


def _as_sent(value: Any) -> Any:
    """What the student receives for ``value``: tuples cross the boundary as lists."""
    if isinstance(value, tuple | list):
        return [_as_sent(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_sent(item) for key, item in value.items()}
    return value


def _check_same(ctx: Context, actual: Any, expected: Any, what: str) -> None:
    """``actual`` has exactly the nested structure and values of ``expected`` (tensors bit for bit)."""
    if isinstance(expected, Tensor):
        _check_bits(ctx, actual, expected, what)
    elif isinstance(expected, dict):
        _check_keys(ctx, actual, set(expected), what)
        for key, item in expected.items():
            _check_same(ctx, actual[key], item, f"{what}[{key!r}]")
    elif isinstance(expected, list):
        if type(actual) is not list:
            ctx.fail(f"{what} is a {type(actual).__name__}, expected a list (or tuple)")
        if len(actual) != len(expected):
            ctx.fail(f"{what} has {len(actual)} items, expected {len(expected)}")
        for index, item in enumerate(expected):
            _check_same(ctx, actual[index], item, f"{what}[{index}]")
    else:
        ctx.check_equal(actual, expected, what=what)


def _generator(ctx: Context) -> torch.Generator:
    """A generator of its own for integer inputs: the values sent never expose ctx.generator's state."""
    return torch.Generator().manual_seed(ctx.rng.randrange(2**62))


def _check_finite(ctx: Context, tensor: Tensor, what: str) -> None:
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        ctx.fail(f"{what} holds {bad} NaN or infinite values of {tensor.numel()}; every value must be finite")


def _check_grads(
    ctx: Context,
    fn: str,
    grads: tuple[Tensor | None, ...],
    expected: tuple[Tensor | None, ...],
    names: list[str],
    tolerance: dict,
) -> None:
    """Compare gradients (None: none reached that input) with the reference's (None: the output ignores it)."""
    for grad, want, name in zip(grads, expected, names, strict=True):
        if grad is None:
            if want is None or not bool(want.any()):
                continue  # the output does not depend on this input (an expert no token was routed to)
            ctx.fail(f"{fn}: no gradient reached {name}; the output must depend on it through autograd")
        if want is None:
            want = torch.zeros(grad.shape)
        ctx.check_close(grad, want, what=f"the gradient of {fn} with respect to {name}", **tolerance)


# -- mixture of experts --------------------------------------------------------------------------------------


def _moe_weights(
    ctx: Context, dim: int, hidden: int, n_experts: int
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    # Router logits of a few units: clear winners, never ties.
    router_weight = ctx.randn(n_experts, dim, scale=2.0 / math.sqrt(dim))
    experts = [
        {
            "w1": ctx.randn(hidden, dim, scale=1 / math.sqrt(dim)),
            "w2": ctx.randn(dim, hidden, scale=1 / math.sqrt(hidden)),
            "w3": ctx.randn(hidden, dim, scale=1 / math.sqrt(dim)),
        }
        for _ in range(n_experts)
    ]
    return router_weight, experts


def _reference_moe(router_weight: Tensor, experts: list[dict[str, Tensor]], top_k: int) -> MoE:
    n_experts, dim = router_weight.shape
    moe = MoE(dim, experts[0]["w1"].shape[0], n_experts, top_k)
    with torch.no_grad():
        moe.gate.weight.copy_(router_weight)
        for module, weights in zip(moe.experts, experts, strict=True):
            module.w1.weight.copy_(weights["w1"])
            module.w2.weight.copy_(weights["w2"])
            module.w3.weight.copy_(weights["w3"])
    return moe


def _check_moe(
    ctx: Context, x: Tensor, router_weight: Tensor, experts: list[dict[str, Tensor]], top_k: int
) -> None:
    with torch.no_grad():
        expected_y, expected_aux = _reference_moe(router_weight, experts, top_k)(x)
    value = ctx.call("moe_forward", x, router_weight, experts, top_k)
    y, aux_loss = _check_pair(ctx, value, "moe_forward")
    case = f"x of shape {tuple(x.shape)}, {len(experts)} experts, top_k={top_k}"
    ctx.check_close(y, expected_y, what=f"moe_forward's y for {case}", **MOE_F32)
    ctx.check_close(aux_loss, expected_aux, what=f"moe_forward's aux_loss for {case}", **MOE_F32)


@suite.test("moe_forward_basic")
def moe_forward_basic(ctx: Context) -> None:
    for shape, hidden, n_experts, top_k in [
        ((10, 16), 32, 4, 2),
        ((3, 7, 24), 40, 6, 2),
        ((33, 8), 16, 5, 3),
    ]:
        router_weight, experts = _moe_weights(ctx, shape[-1], hidden, n_experts)
        _check_moe(ctx, ctx.randn(*shape), router_weight, experts, top_k)


@suite.test("moe_top_k_extremes")
def moe_top_k_extremes(ctx: Context) -> None:
    # top_k = 1: the renormalised weight is exactly 1; top_k = n_experts: every token visits every expert.
    for shape, n_experts, top_k in [((20, 12), 4, 1), ((2, 5, 12), 3, 3), ((1, 16), 8, 8)]:
        router_weight, experts = _moe_weights(ctx, shape[-1], 24, n_experts)
        _check_moe(ctx, ctx.randn(*shape), router_weight, experts, top_k)


def _dyadic(ctx: Context, rows: int, cols: int, values: list[float]) -> Tensor:
    return torch.tensor([[ctx.rng.choice(values) for _ in range(cols)] for _ in range(rows)])


@suite.test("moe_routing_ties")
def moe_routing_ties(ctx: Context) -> None:
    # Small multiples of 1/8 make every router logit exact in float32 whatever the summation order, so experts
    # with equal router rows tie exactly, for every token; a zero token ties all experts.
    dim, n_experts, hidden = 8, 6, 16
    router_weight = _dyadic(ctx, n_experts, dim, [-1.0, -0.5, 0.0, 0.5, 1.0])
    router_weight[3] = router_weight[1]
    router_weight[5] = router_weight[2]
    x = _dyadic(ctx, 48, dim, [-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75])
    x[0] = 0.0
    _, experts = _moe_weights(ctx, dim, hidden, n_experts)
    for top_k in (1, 2, 3):
        _check_moe(ctx, x, router_weight, experts, top_k)


@suite.test("moe_gradients")
def moe_gradients(ctx: Context) -> None:
    for shape, n_experts, top_k in [((12, 16), 4, 2), ((2, 6, 8), 3, 1)]:
        x = ctx.randn(*shape)
        router_weight, experts = _moe_weights(ctx, shape[-1], 24, n_experts)
        grad_y = ctx.randn(*shape)
        grad_aux = ctx.randn(
            scale=3.0
        )  # (): scales the load-balancing loss, as its coefficient in a loss would
        moe = _reference_moe(router_weight, experts, top_k)
        x_leaf = x.clone().requires_grad_()
        expected_y, expected_aux = moe(x_leaf)
        parameters = [x_leaf, moe.gate.weight]
        wrt: list[int | tuple] = [0, 1]
        names = ["x", "router_weight"]
        for index, expert in enumerate(moe.experts):
            for name, linear in (("w1", expert.w1), ("w2", expert.w2), ("w3", expert.w3)):
                parameters.append(linear.weight)
                wrt.append((2, index, name))
                names.append(f"experts[{index}][{name!r}]")
        expected = torch.autograd.grad(
            [expected_y, expected_aux], parameters, [grad_y, grad_aux], allow_unused=True
        )
        value, grads = ctx.call_grad(
            "moe_forward", x, router_weight, experts, top_k, grad_output=[grad_y, grad_aux], wrt=wrt
        )
        y, _ = _check_pair(ctx, value, "moe_forward")
        ctx.check_close(y, expected_y.detach(), what=f"moe_forward's y for x of shape {shape}", **MOE_F32)
        case = f"x of shape {shape}, top_k={top_k}"
        _check_grads(ctx, f"moe_forward ({case})", grads, expected, names, MOE_GRAD_F32)


# -- LoRA ----------------------------------------------------------------------------------------------------

LORA_CASES = [((5, 16), 24, 4, 8.0), ((2, 3, 32), 8, 1, 1.0), ((7, 64), 64, 16, 32.0)]


def _lora_weights(
    ctx: Context, in_features: int, out_features: int, rank: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    weight = ctx.randn(out_features, in_features, scale=1 / math.sqrt(in_features), dtype=dtype)
    lora_a = ctx.randn(rank, in_features, scale=1 / math.sqrt(in_features), dtype=dtype)
    lora_b = ctx.randn(out_features, rank, scale=0.1, dtype=dtype)  # trained: no longer zero
    return weight, lora_a, lora_b


def _reference_lora(weight: Tensor, lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int) -> LoRALinear:
    out_features, in_features = weight.shape
    base = torch.nn.Linear(in_features, out_features, bias=False, dtype=weight.dtype)
    with torch.no_grad():
        base.weight.copy_(weight)
    layer = LoRALinear(base, r=rank, alpha=alpha)
    with torch.no_grad():
        layer.lora_A.copy_(lora_a)
        layer.lora_B.copy_(lora_b)
    return layer


@suite.test("lora_forward_basic")
def lora_forward_basic(ctx: Context) -> None:
    for shape, out_features, rank, alpha in LORA_CASES:
        x = ctx.randn(*shape)
        weight, lora_a, lora_b = _lora_weights(ctx, shape[-1], out_features, rank)
        with torch.no_grad():
            expected = _reference_lora(weight, lora_a, lora_b, alpha, rank)(x)
        out = ctx.call("lora_forward", x, weight, lora_a, lora_b, alpha, rank)
        what = f"lora_forward for x of shape {shape}, weight {out_features}x{shape[-1]}, rank {rank}, alpha {alpha}"
        ctx.check_close(out, expected, what=what, **LORA_F32)


@suite.test("lora_gradients")
def lora_gradients(ctx: Context) -> None:
    for shape, out_features, rank, alpha in LORA_CASES[:2]:
        x = ctx.randn(*shape)
        weight, lora_a, lora_b = _lora_weights(ctx, shape[-1], out_features, rank)
        grad_output = ctx.randn(*shape[:-1], out_features)
        layer = _reference_lora(weight, lora_a, lora_b, alpha, rank)
        layer.weight.requires_grad_(True)
        x_leaf = x.clone().requires_grad_()
        expected_out = layer(x_leaf)
        expected = torch.autograd.grad(
            expected_out, [x_leaf, layer.weight, layer.lora_A, layer.lora_B], grad_output
        )
        _, grads = ctx.call_grad(
            "lora_forward", x, weight, lora_a, lora_b, alpha, rank, grad_output=grad_output, wrt=[0, 1, 2, 3]
        )
        case = f"lora_forward (x of shape {shape}, rank {rank})"
        _check_grads(ctx, case, grads, expected, ["x", "weight", "lora_a", "lora_b"], LORA_GRAD_F32)


def _check_merge_round_trip(
    ctx: Context, weight: Tensor, lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int, tolerance: dict
) -> None:
    layer = _reference_lora(weight, lora_a, lora_b, alpha, rank)
    layer.merge()
    expected_merged = layer.weight.detach().clone()
    layer.unmerge()
    expected_unmerged = layer.weight.detach().clone()
    case = f"a {weight.dtype} weight of shape {tuple(weight.shape)}, rank {rank}, alpha {alpha}"

    merged = ctx.call("lora_merge", weight, lora_a, lora_b, alpha, rank)
    ctx.check_close(merged, expected_merged, what=f"lora_merge of {case}", **tolerance)
    unmerged = ctx.call("lora_unmerge", expected_merged, lora_a, lora_b, alpha, rank)
    ctx.check_close(unmerged, expected_unmerged, what=f"lora_unmerge of {case}", **tolerance)
    round_trip = ctx.call("lora_unmerge", merged, lora_a, lora_b, alpha, rank)
    ctx.check_close(round_trip, weight, what=f"lora_unmerge(lora_merge(weight)) for {case}", **tolerance)


@suite.test("lora_merge_unmerge")
def lora_merge_unmerge(ctx: Context) -> None:
    for shape, out_features, rank, alpha in LORA_CASES:
        weight, lora_a, lora_b = _lora_weights(ctx, shape[-1], out_features, rank)
        _check_merge_round_trip(ctx, weight, lora_a, lora_b, alpha, rank, LORA_F32)


@suite.test("lora_merge_half_precision")
def lora_merge_half_precision(ctx: Context) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        weight, lora_a, lora_b = _lora_weights(ctx, 48, 40, 8, dtype=dtype)
        _check_merge_round_trip(ctx, weight, lora_a, lora_b, 16.0, 8, LORA_MERGE_HALF[dtype])


def _lora_model_state(ctx: Context, targets: list[str], rank: int) -> dict[str, Tensor]:
    """A LoRA-wrapped model's state dict (base weights and adapters), filled from the test's generator."""
    model = apply_lora(Transformer(FINETUNE_MODEL), targets, r=rank, alpha=2.0 * rank)
    return {key: ctx.randn(*value.shape, scale=0.1) for key, value in model.state_dict().items()}


def _check_adapter_state_dict(ctx: Context, state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    out = ctx.call("adapter_state_dict", state)
    what = f"adapter_state_dict of a state dict with {len(state)} keys"
    _check_keys(ctx, out, set(expected), what)
    for key, tensor in expected.items():
        ctx.check_equal(out[key], tensor, what=f"{what}: the value of {key!r}")


@suite.test("adapter_state_dict_basic")
def adapter_state_dict_basic(ctx: Context) -> None:
    for targets, rank in [(["wq", "wv"], 4), (["w1", "w2", "w3", "output"], 2)]:
        state = _lora_model_state(ctx, targets, rank)
        expected = {key: value for key, value in state.items() if key.endswith((".lora_A", ".lora_B"))}
        _check_adapter_state_dict(ctx, state, expected)


@suite.test("adapter_state_dict_edge_keys")
def adapter_state_dict_edge_keys(ctx: Context) -> None:
    # An adapter key's last dotted component is exactly lora_A or lora_B; look-alikes (DoRA's magnitude vector,
    # PEFT's nested lora_A.default.weight, prefixes and suffixes) are not adapters.
    adapters = ["lora_A", "lora_B", "layers.1.feed_forward.w2.lora_B", "a.b.c.lora_A"]
    look_alikes = [
        "layers.0.attention.wq.lora_magnitude_vector",
        "layers.0.attention.wq.lora_A.default.weight",
        "layers.0.attention.wq.lora_Alpha",
        "layers.0.attention.wq.xlora_B",
        "flora_A",
        "lora_A_scale",
        "layers.0.attention.wq.weight",
    ]
    state = {key: ctx.randn(3, 2) for key in adapters + look_alikes}
    _check_adapter_state_dict(ctx, state, {key: state[key] for key in adapters})
    _check_adapter_state_dict(ctx, {}, {})
    only_base = {key: ctx.randn(4) for key in look_alikes[4:]}
    _check_adapter_state_dict(ctx, only_base, {})


# -- checkpoints ---------------------------------------------------------------------------------------------


def _checkpoint_dir(ctx: Context, stem: str) -> str:
    """A fresh directory name under the submission's working directory."""
    return f"{stem}-{ctx.rng.randrange(16**8):08x}"


def _trained_state(ctx: Context, steps: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A LoRA model's state dict and its AdamW state after ``steps`` steps (on random gradients)."""
    model = apply_lora(Transformer(FINETUNE_MODEL), ["wq", "wv"], r=2, alpha=4.0)
    model_state = {key: ctx.randn(*value.shape, scale=0.1) for key, value in model.state_dict().items()}
    model.load_state_dict(model_state)
    trainable = [parameter for name, parameter in model.named_parameters() if "lora_" in name]
    optimizer = AdamW(trainable, lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        for parameter in trainable:
            parameter.grad = ctx.randn(*parameter.shape)
        optimizer.step()
    model_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    # Only str keys cross the boundary: the optimizer's per-parameter state is keyed "0", "1", ...
    optimizer_state["state"] = {str(index): state for index, state in optimizer_state["state"].items()}
    return model_state, _as_sent(optimizer_state)


def _save(ctx: Context, dir_name: str, model_state: dict, optimizer_state: dict, step: int) -> None:
    ctx.call("save_checkpoint", dir_name, model_state, optimizer_state, step)


def _check_loaded(ctx: Context, dir_name: str, model_state: dict, optimizer_state: dict, step: int) -> None:
    loaded = ctx.call("load_checkpoint", dir_name)
    what = f"load_checkpoint({dir_name!r})"
    _check_keys(ctx, loaded, {"model_state", "optimizer_state", "step"}, what)
    _check_same(ctx, loaded["step"], step, f"{what}['step']")
    _check_same(ctx, loaded["model_state"], model_state, f"{what}['model_state']")
    _check_same(ctx, loaded["optimizer_state"], optimizer_state, f"{what}['optimizer_state']")


@suite.test("checkpoint_round_trip")
def checkpoint_round_trip(ctx: Context) -> None:
    # Saved in one call and loaded in another: the checkpoint has to be on disk in between.
    model_state, optimizer_state = _trained_state(ctx, steps=3)
    dir_name = _checkpoint_dir(ctx, "ckpt")
    _save(ctx, dir_name, model_state, optimizer_state, 3)
    _check_loaded(ctx, dir_name, model_state, optimizer_state, 3)


@suite.test("checkpoint_exotic_tensors")
def checkpoint_exotic_tensors(ctx: Context) -> None:
    integers = _generator(ctx)
    special = ctx.randn(4, 6)
    special[0, :4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0])
    tied = ctx.randn(16, 8)
    model_state = {
        "tok_embeddings.weight": tied,
        "output.weight": tied,  # tied weights: one tensor under two names
        "special": special,
        "half": ctx.randn(5, 3, dtype=torch.float16),
        "brain": ctx.randn(7, dtype=torch.bfloat16),
        "double": ctx.randn(2, 2, dtype=torch.float64),
        "counts": torch.randint(-(2**40), 2**40, (9,), generator=integers),
        "int32": torch.randint(-(2**31), 2**31 - 1, (3, 3), generator=integers, dtype=torch.int32),
        "int8": torch.randint(-128, 128, (6,), generator=integers, dtype=torch.int8),
        "bytes": torch.randint(0, 256, (4,), generator=integers, dtype=torch.uint8),
        "mask": torch.rand(3, 5, generator=integers) > 0.5,
        "scale": ctx.randn(),  # a 0-dim tensor
        "empty": torch.zeros(0, 3),
    }
    optimizer_state = {
        "state": {
            "0": {
                "step": torch.tensor(7.0),
                "exp_avg": ctx.randn(16, 8),
                "exp_avg_sq": ctx.randn(16, 8).abs(),
            },
            "1": {},
        },
        "param_groups": [
            {
                "lr": 3e-4,
                "betas": [0.9, 0.95],
                "eps": 1e-8,
                "weight_decay": 0.1,
                "amsgrad": False,
                "foreach": None,
                "maximize": False,
                "params": [0, 1],
                "name": "adapters (适配器)",
            },
            {"lr": 0.0, "params": [], "note": ""},
        ],
    }
    dir_name = _checkpoint_dir(ctx, "ckpt-exotic")
    step = 2**40 + 7  # more steps than an int32 holds
    _save(ctx, dir_name, model_state, optimizer_state, step)
    _check_loaded(ctx, dir_name, model_state, optimizer_state, step)


@suite.test("checkpoint_overwrite_and_nesting")
def checkpoint_overwrite_and_nesting(ctx: Context) -> None:
    first = _trained_state(ctx, steps=1)
    second = _trained_state(ctx, steps=2)
    third = _trained_state(ctx, steps=1)
    flat = _checkpoint_dir(ctx, "ckpt-latest")
    nested = f"{_checkpoint_dir(ctx, 'runs')}/exp-1/step-00020"  # parent directories do not exist yet
    _save(ctx, flat, *first, 10)
    _save(ctx, nested, *second, 20)
    _save(ctx, flat, *third, 30)  # saving again replaces the old checkpoint
    _check_loaded(ctx, flat, *third, 30)
    _check_loaded(ctx, nested, *second, 20)
    never_saved = _checkpoint_dir(ctx, "ckpt-never-saved")
    try:
        ctx.call("load_checkpoint", never_saved)
    except CallError:
        return
    ctx.fail("load_checkpoint of a directory that was never saved returned a value; it must raise an error")


# -- inputs --------------------------------------------------------------------------------------------------


@suite.test("inputs_not_mutated")
def inputs_not_mutated(ctx: Context) -> None:
    x = ctx.randn(9, 16)
    router_weight, experts = _moe_weights(ctx, 16, 24, 4)
    ctx.check_not_mutated(ctx.invoke("moe_forward", x, router_weight, experts, 2), "moe_forward")
    weight, lora_a, lora_b = _lora_weights(ctx, 16, 12, 4)
    ctx.check_not_mutated(ctx.invoke("lora_forward", x, weight, lora_a, lora_b, 8.0, 4), "lora_forward")
    ctx.check_not_mutated(ctx.invoke("lora_merge", weight, lora_a, lora_b, 8.0, 4), "lora_merge")
    ctx.check_not_mutated(ctx.invoke("lora_unmerge", weight, lora_a, lora_b, 8.0, 4), "lora_unmerge")
    state = _lora_model_state(ctx, ["wq"], 2)
    ctx.check_not_mutated(ctx.invoke("adapter_state_dict", state), "adapter_state_dict")
    model_state, optimizer_state = _trained_state(ctx, steps=1)
    dir_name = _checkpoint_dir(ctx, "ckpt-inputs")
    ctx.check_not_mutated(
        ctx.invoke("save_checkpoint", dir_name, model_state, optimizer_state, 1), "save_checkpoint"
    )


# -- LoRA fine-tuning ----------------------------------------------------------------------------------------


def _model_args() -> dict[str, Any]:
    return {
        "dim": FINETUNE_MODEL.dim,
        "n_layers": FINETUNE_MODEL.n_layers,
        "n_heads": FINETUNE_MODEL.n_heads,
        "n_kv_heads": FINETUNE_MODEL.n_kv_heads,
        "vocab_size": FINETUNE_MODEL.vocab_size,
        "hidden_dim": FINETUNE_MODEL.hidden_dim,
        "norm_eps": FINETUNE_MODEL.norm_eps,
        "rope_theta": FINETUNE_MODEL.rope_theta,
        "max_seq_len": FINETUNE_MODEL.max_seq_len,
    }


def _base_state(ctx: Context) -> dict[str, Tensor]:
    """A freshly initialised base model (as Transformer initialises itself), drawn from the test's generator."""
    shapes = {key: value.shape for key, value in Transformer(FINETUNE_MODEL).state_dict().items()}
    return {
        key: torch.ones(shape) if key.endswith("norm.weight") else ctx.randn(*shape, scale=0.02)
        for key, shape in shapes.items()
    }


def _digit_split(ctx: Context) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Disjoint training and held-out splits of the digit task, in reference_impl.train's sequence format.

    Each sequence is ``d_1 .. d_n SEP a_1 .. a_n`` with ``a_i = (d_i + 1) % 10``; inputs drop the last token,
    targets the first, and the prompt's targets are IGNORE_INDEX.
    """
    # Distinct prompts; the generator's state never shows, so the held-out part cannot be inferred from the rest.
    numbers = torch.randperm(10**N_DIGITS, generator=_generator(ctx))[: N_TRAIN + N_HELDOUT]
    places = 10 ** torch.arange(N_DIGITS - 1, -1, -1)  # (n,)
    digits = numbers[:, None] // places % 10  # (N, n)
    separator = torch.full((len(numbers), 1), SEPARATOR_TOKEN)
    sequences = torch.cat([digits, separator, (digits + 1) % 10], dim=1)  # (N, 2n + 1)
    inputs = sequences[:, :-1].contiguous()  # (N, 2n)
    targets = sequences[:, 1:].clone()  # (N, 2n)
    targets[:, :N_DIGITS] = IGNORE_INDEX
    return inputs[:N_TRAIN], targets[:N_TRAIN], inputs[N_TRAIN:], targets[N_TRAIN:]


def _finetune(
    ctx: Context, targets: list[str], rank: int, alpha: float, budget_s: float
) -> tuple[Transformer, Tensor, Tensor]:
    """Run the student's finetune_lora and check what comes back.

    Returns the reference model with the base weights and the student's adapters, and the held-out split.
    """
    base = _base_state(ctx)
    train_inputs, train_targets, heldout_inputs, heldout_targets = _digit_split(ctx)
    result = ctx.invoke(
        "finetune_lora",
        base,
        _model_args(),
        train_inputs,
        train_targets,
        target_modules=targets,
        rank=rank,
        alpha=alpha,
        time_budget_s=budget_s,
        seed=ctx.rng.randrange(2**31),
    )
    ctx.check_not_mutated(result, "finetune_lora")  # the base model stays frozen: train the adapters only
    allowed = budget_s + _budget_grace_s(budget_s)
    ctx.check(
        result.wall_s <= allowed,
        f"finetune_lora took {result.wall_s:.1f} s with time_budget_s={budget_s:g}; it must return within the "
        f"budget (the grader allows {allowed:.1f} s for moving the model in and the adapters out)",
    )
    reference = Transformer(FINETUNE_MODEL)
    reference.load_state_dict(base)
    apply_lora(reference, targets, r=rank, alpha=alpha)
    expected = lora_state_dict(reference)
    what = f"the adapters finetune_lora returned for target_modules={targets}, rank {rank}"
    adapters = _check_keys(ctx, result.value, set(expected), what)
    for key, tensor in expected.items():
        ctx.check_tensor(adapters[key], shape=tensor.shape, dtype=torch.float32, what=f"{what}: {key!r}")
        _check_finite(ctx, adapters[key], f"{what}: {key!r}")
    load_lora_state_dict(reference, adapters)
    return reference, heldout_inputs, heldout_targets


@suite.test("finetune_heldout_loss")
def finetune_heldout_loss(ctx: Context) -> None:
    model, inputs, targets = _finetune(ctx, ALL_LINEARS, rank=8, alpha=16.0, budget_s=FINETUNE_BUDGET_S)
    model.eval()
    with torch.no_grad():
        loss = float(cross_entropy(model(inputs), targets))
    if not math.isfinite(loss):
        ctx.fail("with the adapters finetune_lora returned, the held-out loss is not a finite number")
    ctx.metric("heldout_loss", loss)
    ctx.check(
        loss < HELDOUT_LOSS_THRESHOLD,
        f"held-out loss {loss:.4f} nats after fine-tuning; the test needs it below {HELDOUT_LOSS_THRESHOLD} "
        f"(guessing a digit scores ln 10 = 2.3)",
    )


@suite.test("finetune_adapters")
def finetune_adapters(ctx: Context) -> None:
    _finetune(ctx, ["wq", "feed_forward.w2"], rank=4, alpha=8.0, budget_s=SHAPES_BUDGET_S)
