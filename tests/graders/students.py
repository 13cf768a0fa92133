"""Student submissions for the self-tests: the real solution and handout, planted bugs, hostile modules."""

from pathlib import Path

WARMUP = Path(__file__).resolve().parents[2] / "graders" / "warmup"
SOLUTION = (WARMUP / "solution" / "warmup.py").read_text()
HANDOUT = (WARMUP / "handout" / "warmup.py").read_text()

_CORRECT_SOFTMAX = """
def softmax(x, dim=-1):
    values = x.float()
    exps = (values - values.amax(dim=dim, keepdim=True)).exp()
    return (exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype)
"""

_CORRECT_RMS_NORM = """
def rms_norm(x, weight, eps=1e-6):
    values = x.float()
    return (values * torch.rsqrt(values.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)
"""

SOFTMAX_WITHOUT_MAX = (
    """import torch

def softmax(x, dim=-1):
    exps = x.float().exp()
    return (exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype)
"""
    + _CORRECT_RMS_NORM
)

SOFTMAX_IGNORES_DIM = (
    """import torch

def softmax(x, dim=-1):
    values = x.float()
    exps = (values - values.amax(dim=-1, keepdim=True)).exp()
    return (exps / exps.sum(dim=-1, keepdim=True)).to(x.dtype)
"""
    + _CORRECT_RMS_NORM
)

RMS_NORM_EPS_OUTSIDE_SQRT = (
    "import torch\n"
    + _CORRECT_SOFTMAX
    + """
def rms_norm(x, weight, eps=1e-6):
    values = x.float()
    return (values / (values.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight).to(x.dtype)
"""
)

# Right answers, but x.float() is x itself for float32 inputs, so sub_/exp_ overwrite the caller's tensor.
SOFTMAX_MUTATES_INPUT = (
    """import torch

def softmax(x, dim=-1):
    values = x.float()
    values.sub_(values.amax(dim=dim, keepdim=True))
    exps = values.exp_()
    return (exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype)
"""
    + _CORRECT_RMS_NORM
)

RAISES_ON_IMPORT = """import torch

raise RuntimeError("the model weights are missing")
"""

EXITS_IN_RMS_NORM = (
    "import os\nimport torch\n"
    + _CORRECT_SOFTMAX
    + """
def rms_norm(x, weight, eps=1e-6):
    os._exit(3)
"""
)

SLEEPS_IN_RMS_NORM = (
    "import time\nimport torch\n"
    + _CORRECT_SOFTMAX
    + """
def rms_norm(x, weight, eps=1e-6):
    time.sleep(3600)
"""
)

RETURNS_SUBCLASS_AND_LIST = """import torch

class Sneaky(torch.Tensor):
    pass

def softmax(x, dim=-1):
    exps = (x.float() - x.float().amax(dim=dim, keepdim=True)).exp()
    return (exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype).as_subclass(Sneaky)

def rms_norm(x, weight, eps=1e-6):
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    return out.tolist()
"""

# Finds the protocol's write end the only way student code could: by trying every descriptor.
WRITES_GARBAGE_TO_PROTOCOL = (
    "import os\nimport torch\n"
    + _CORRECT_RMS_NORM
    + """
def softmax(x, dim=-1):
    for fd in range(3, 64):
        try:
            os.write(fd, b"GARBAGE" * 100)
        except OSError:
            pass
    return x
"""
)

PRINTS_EVERYWHERE = """import os
import sys
import torch

print("hello from import time")
sys.stdout.write("LLMG" * 50)

def softmax(x, dim=-1):
    print("softmax called with", tuple(x.shape))
    os.write(1, b"LLMG\\x00\\x01 raw bytes on fd 1")
    sys.stdout.flush()
    values = x.float()
    exps = (values - values.amax(dim=dim, keepdim=True)).exp()
    return (exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype)

def rms_norm(x, weight, eps=1e-6):
    print("rms_norm called", file=sys.stdout, flush=True)
    values = x.float()
    return (values * torch.rsqrt(values.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)
"""

# Correct on every tested shape, wrong on the benchmark's large input: timing must check outputs too.
WRONG_WHEN_TIMED = (
    "import torch\n"
    + _CORRECT_RMS_NORM
    + """
def softmax(x, dim=-1):
    if x.numel() > 100_000:
        return torch.zeros_like(x)
    values = x.float()
    exps = (values - values.amax(dim=dim, keepdim=True)).exp()
    return (exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype)
"""
)

# Gets past a naive static check (the name is built at run time); the runner's call monitor still sees the call.
EVADES_STATIC_CHECK = (
    "import torch\n"
    + _CORRECT_RMS_NORM
    + """
_NAME = "soft" + "".join(["m", "a", "x"])

def softmax(x, dim=-1):
    return getattr(torch, _NAME)(x.float(), dim).to(x.dtype)
"""
)

# SOFTMAX_MUTATES_INPUT, plus a hook on the runner's own channel that blanks its mutation report: student code
# shares the runner's process. The grader compares the inputs sent back with its own copies instead.
HIDES_ITS_MUTATION = (
    """import gc

def _hide_mutations():
    channel = next(obj for obj in gc.get_objects() if type(obj).__name__ == "Channel")
    send = channel.send

    def hiding_send(header, tensors=None, **options):
        if isinstance(header, dict) and header.get("op") == "result":
            header = {**header, "mutated": []}
        return send(header, tensors, **options)

    channel.send = hiding_send

_hide_mutations()
"""
    + SOFTMAX_MUTATES_INPUT
)
