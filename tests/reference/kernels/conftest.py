"""Run the kernels under test: compiled on a GPU when there is one, through Triton's interpreter otherwise.

Triton's interpreter is a per-process switch: ``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a
function, and that includes Triton's own library functions (``tl.sum``, ``tl.max``), decorated when
``triton.language`` is first imported. So without a GPU this conftest sets ``TRITON_INTERPRET=1`` before
anything under it imports Triton, and leaves it set for the rest of the process (putting it back would break
the lazy imports Triton does at the first launch). On a machine without a GPU that is the only way Triton
kernels can run at all, so later tests lose nothing; on a GPU machine nothing is changed.

If Triton was already imported in compiled mode by an earlier test module, interpreted and compiled functions
would mix and fail obscurely; the kernel tests then skip, saying how to run them.
"""

import importlib.util
import os
import sys

import pytest
import torch

_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_NEEDS_INTERPRETER = _TRITON_INSTALLED and not torch.cuda.is_available()
_IMPORTED_TOO_EARLY = (
    _NEEDS_INTERPRETER and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") != "1"
)

if _NEEDS_INTERPRETER:
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _interpreter_is_usable() -> None:
    if _IMPORTED_TOO_EARLY:
        pytest.skip(
            "Triton was imported in compiled mode before these tests could switch on its interpreter; "
            "run them as `TRITON_INTERPRET=1 pytest tests/reference/kernels`"
        )
