"""The static check of submitted source: every way of reaching a forbidden function that Python resolves statically
is caught, code that cannot be followed is refused when anything is forbidden, and clean code passes."""

from pathlib import Path

import pytest

from graders.static_check import (
    MAX_LISTED_VIOLATIONS,
    StaticCheckSpec,
    Violation,
    check_package_sources,
    check_sources,
    static_check_report,
    violations_reason,
)
from tests.graders import students

FORBIDDEN = "not allowed for this assignment"


@pytest.fixture(scope="module")
def spec(warmup_package) -> StaticCheckSpec:
    return warmup_package.static_check


def messages(source: str, spec: StaticCheckSpec, path: str = "warmup.py") -> list[str]:
    return [str(violation) for violation in check_sources({path: source.encode()}, spec)]


EVASIONS = {
    "plain": ("import torch\ntorch.softmax(x, -1)", "line 2: uses torch.softmax"),
    "module-alias": ("import torch.nn.functional as F\nF.softmax(x, -1)", "uses torch.nn.functional.softmax"),
    "from-import-alias": (
        "from torch.nn.functional import softmax as s\ns(x)",
        "line 1: uses torch.nn.functional.softmax",
    ),
    "from-import-module": (
        "from torch.nn import functional as F\nF.softmax(x)",
        "uses torch.nn.functional.softmax",
    ),
    "attribute-chain": ("import torch\ntorch.nn.functional.softmax(x)", "uses torch.nn.functional.softmax"),
    "function-reference": ("import torch\nf = torch.softmax\nf(x)", "line 2: uses torch.softmax"),
    "assigned-module": (
        "import torch\nF = torch.nn.functional\nF.softmax(x)",
        "line 3: uses torch.nn.functional.softmax",
    ),
    "tuple-assignment": (
        "import torch\nF, y = torch.nn.functional, 1\nF.softmax(x)",
        "uses torch.nn.functional.softmax",
    ),
    "walrus": (
        "import torch\nif (F := torch.nn.functional):\n    F.softmax(x)",
        "uses torch.nn.functional.softmax",
    ),
    "attribute-of-self": (
        "import torch\nclass A:\n    def __init__(self):\n        self.F = torch.nn.functional\n"
        "    def norm(self, x):\n        return self.F.rms_norm(x, (3,))",
        "line 6: uses torch.nn.functional.rms_norm",
    ),
    "parameter-default": (
        "import torch\ndef f(x, F=torch.nn.functional):\n    return F.rms_norm(x, (3,))",
        "line 3: uses torch.nn.functional.rms_norm",
    ),
    "getattr-constant": ("import torch\ngetattr(torch, 'softmax')(x)", "uses torch.softmax"),
    "getattr-concatenated": ("import torch\ngetattr(torch, 'soft' + 'max')(x)", "uses torch.softmax"),
    "getattr-f-string": ("import torch\ngetattr(torch, f\"{'soft'}max\")(x)", "uses torch.softmax"),
    "dunder-import": ("__import__('torch').softmax(x)", "uses torch.softmax"),
    "dunder-import-fromlist": (
        "__import__('torch.nn.functional', fromlist=['softmax']).softmax(x)",
        "uses torch.nn.functional.softmax",
    ),
    "importlib-constant": (
        "import importlib\nimportlib.import_module('torch.nn.functional').softmax(x)",
        "uses torch.nn.functional.softmax",
    ),
    "vars": ("import torch\nvars(torch)['softmax'](x)", "uses torch.softmax"),
    "module-dict": ("import torch\ntorch.__dict__['softmax'](x)", "uses torch.softmax"),
    "sys-modules": ("import sys\nsys.modules['torch'].softmax(x)", "uses torch.softmax"),
    "globals": ("import torch\nglobals()['torch'].softmax(x)", "uses torch.softmax"),
    "star-import": ("from torch import *\nsoftmax(x, -1)", "line 2: uses torch.softmax"),
    "re-export": (
        "import torch\ntorch.nn.modules.activation.F.softmax(x)",
        "uses torch.nn.functional.softmax",
    ),
    "same-object-elsewhere": (
        "import torch\ntorch._C._VariableFunctions.softmax(x, -1)",
        "uses torch.softmax",
    ),
    "other-namespace": ("import torch\ntorch.special.softmax(x, -1)", "uses torch.special.softmax"),
    "module-class": ("import torch\ntorch.nn.Softmax(dim=-1)(x)", "uses torch.nn.Softmax"),
    "rms-norm-class": ("from torch import nn\nnn.RMSNorm(3)", "uses torch.nn.RMSNorm"),
    "tensor-method": ("def f(x):\n    return x.softmax(-1)", "line 2: calls a method named softmax"),
    "method-on-expression": (
        "import torch\ntorch.randn(3).log_softmax(-1)",
        "calls a method named log_softmax",
    ),
    "getattr-method": ("def f(x):\n    return getattr(x, 'softmax')(-1)", "calls a method named softmax"),
    "methodcaller": (
        "import operator\noperator.methodcaller('softmax', -1)(x)",
        "calls a method named softmax",
    ),
    "unbound-method": ("import torch\ntorch.Tensor.softmax(x, -1)", "uses torch.Tensor.softmax"),
}


@pytest.mark.parametrize(("source", "expected"), EVASIONS.values(), ids=EVASIONS.keys())
def test_each_way_of_reaching_a_forbidden_function_is_caught(spec, source, expected):
    found = messages(source, spec)
    assert any(expected in message and FORBIDDEN in message for message in found), found


UNFOLLOWABLE = {
    "eval": ("eval('1')", "uses eval; not allowed for this assignment (code run that way cannot be checked)"),
    "exec": ("exec('y = 1')", "uses exec"),
    "compile": ("compile('1', 'f', 'eval')", "uses compile"),
    "builtins-eval": ("import builtins\nbuiltins.eval('1')", "uses eval"),
    "getattr-computed": (
        "import torch\nname = input()\ngetattr(torch, name)(x)",
        "getattr with a name computed at run time",
    ),
    "import-computed": (
        "import importlib\nimportlib.import_module(name)",
        "imports a module whose name is computed",
    ),
    "dunder-import-computed": ("__import__(name)", "imports a module whose name is computed"),
    "dict-computed": ("import torch\ntorch.__dict__[name]", "looks up a name computed at run time"),
    "getattr-as-value": (
        "import functools, torch\nfunctools.reduce(getattr, ['nn', 'functional', 'softmax'], torch)(x)",
        "passes getattr around as a value",
    ),
    "getattribute": ("import torch\nobject.__getattribute__(torch, 'softmax')", "uses __getattribute__"),
    "private-torch": ("import torch\ntorch._C._nn.gelu(x)", "uses torch._C, a private part of torch"),
    "torch-ops": ("import torch\ntorch.ops.aten._softmax(x, -1, False)", "uses torch.ops"),
    "code-loader": (
        "import importlib.util\nimportlib.util.spec_from_file_location('m', 'm.txt')",
        "importlib.util",
    ),
    "pickle": ("import pickle", "imports pickle"),
    "subprocess": ("import subprocess", "imports subprocess"),
    "os-system": ("import os\nos.system('python -c 1')", "uses os.system"),
}


@pytest.mark.parametrize(("source", "expected"), UNFOLLOWABLE.values(), ids=UNFOLLOWABLE.keys())
def test_code_that_cannot_be_followed_is_refused_when_something_is_forbidden(spec, source, expected):
    found = messages(source, spec)
    assert any(expected in message and FORBIDDEN in message for message in found), found
    # With nothing forbidden (only requirements), there is nothing to evade: dynamic code is fine.
    assert not any(
        FORBIDDEN in message for message in messages(source, StaticCheckSpec(require_calls=("x",)))
    )


FORBIDS_SOFTMAX = StaticCheckSpec(forbid_calls=("torch.softmax",))
ALLOWS_MULTIPROCESSING = StaticCheckSpec(forbid_calls=("torch.softmax",), allow_imports=("multiprocessing",))
STARTS_PROCESSES = {
    "module": "import multiprocessing\nmultiprocessing.get_context('fork').Process(target=print).start()\n",
    "alias": "import multiprocessing as mp\nparent, child = mp.Pipe()\n",
    "submodule": "from multiprocessing.connection import wait\n",
}


@pytest.mark.parametrize("source", STARTS_PROCESSES.values(), ids=STARTS_PROCESSES.keys())
def test_an_allowed_module_the_check_cannot_follow_is_not_refused(source):
    assert messages(source, ALLOWS_MULTIPROCESSING) == []
    refused = messages(source, FORBIDS_SOFTMAX)
    assert refused and all(
        f"multiprocessing; {FORBIDDEN} (code run that way" in message for message in refused
    )


def test_an_allowance_covers_its_modules_only():
    source = "import multiprocessing\nimport subprocess\nimport torch\ntorch.softmax(x)\n"
    assert messages(source, ALLOWS_MULTIPROCESSING) == [
        f"warmup.py, line 2: imports subprocess; {FORBIDDEN} (code run that way cannot be checked)",
        f"warmup.py, line 4: uses torch.softmax; {FORBIDDEN}",
    ]
    connection_only = StaticCheckSpec(
        forbid_calls=("torch.softmax",), allow_imports=("multiprocessing.connection",)
    )
    assert messages("from multiprocessing.connection import wait\n", connection_only) == []
    assert messages("import multiprocessing\n", connection_only) == [
        f"warmup.py, line 1: imports multiprocessing; {FORBIDDEN} (code run that way cannot be checked)"
    ]


def test_a_forbidden_module_stays_forbidden_under_an_allowed_one():
    spec = StaticCheckSpec(
        forbid_imports=("multiprocessing.shared_memory",), allow_imports=("multiprocessing",)
    )
    assert messages("import multiprocessing.shared_memory\n", spec) == [
        f"warmup.py, line 1: imports multiprocessing.shared_memory; {FORBIDDEN}"
    ]


CLEAN = {
    "solution": students.SOLUTION,
    "own-function-named-softmax": "def softmax(x, dim=-1):\n    return x\n\ndef g(x):\n    return softmax(x)\n",
    "annotations-and-docstrings": (
        'import torch\n\ndef f(x: torch.Tensor) -> torch.Tensor:\n    """Not torch.softmax."""\n    return x.exp()\n'
    ),
    "other-torch-functions": "import torch\nimport torch.nn.functional as F\nF.relu(torch.rsqrt(x)).amax(-1)\n",
    "own-module-attribute": "import helpers\nhelpers.softmax(x)\n",
    "getattr-on-own-object": "class A:\n    def f(self):\n        return getattr(self, 'f')\n",
}


@pytest.mark.parametrize("source", CLEAN.values(), ids=CLEAN.keys())
def test_clean_code_passes(spec, source):
    files = {"warmup.py": source.encode(), "helpers.py": b"def softmax(x):\n    return x\n"}
    assert check_sources(files, spec) == []


def test_the_warmup_solution_passes_and_a_planted_softmax_fails_with_a_clear_reason(warmup_package, tmp_path):
    solution_dir = students.WARMUP / "solution"
    assert check_package_sources(warmup_package, solution_dir) == []
    planted = students.SOLUTION.replace(
        "    values = x.to(_compute_dtype(x))\n    # exp", "    return torch.softmax(x, dim)\n    # exp", 1
    )
    assert planted != students.SOLUTION
    (tmp_path / "warmup.py").write_text(planted)
    violations = check_package_sources(warmup_package, tmp_path)
    line = planted.splitlines().index("    return torch.softmax(x, dim)") + 1
    assert violations == [Violation("warmup.py", line, "uses torch.softmax; not allowed for this assignment")]
    report = static_check_report(warmup_package, violations)
    assert report.status == "failed" and report.score == 0 and report.max_score == 10
    assert report.failure_reason == (
        "Your submission was not run: it uses code this assignment does not allow.\n"
        f"- warmup.py, line {line}: uses torch.softmax; not allowed for this assignment"
    )
    assert all(
        test.message == "Not run: your submission did not pass the static check." for test in report.tests
    )
    assert report.flags and "flags" not in report.student_json()


def test_required_calls_are_found_however_they_are_imported():
    spec = StaticCheckSpec(require_calls=("triton.jit",))
    decorated = "import triton\n\n@triton.jit\ndef kernel(x):\n    pass\n"
    imported = "from triton import jit\n\n@jit\ndef kernel(x):\n    pass\n"
    aliased = "import triton as tr\nkernel = tr.jit(lambda x: x)\n"
    for source in (decorated, imported, aliased):
        assert messages(source, spec) == []
    assert messages("import torch\n", spec) == [
        "your code never uses triton.jit; this assignment requires it"
    ]


@pytest.mark.parametrize(
    "source",
    [
        "import flash_attn",
        "import flash_attn.ops.fused as fused",
        "from flash_attn import flash_attn_func",
        "from xformers.ops import memory_efficient_attention",
        "__import__('flash_attn')",
        "import importlib\nimportlib.import_module('xformers.ops')",
    ],
)
def test_forbidden_imports_are_caught(source):
    spec = StaticCheckSpec(forbid_imports=("flash_attn", "xformers"))
    found = messages(source, spec)
    assert found and all(FORBIDDEN in message for message in found)
    assert messages("import flash_attention_mine\n", spec) == []


def test_files_that_are_not_source_cannot_be_checked(spec):
    files = {"warmup.py": students.SOLUTION.encode(), "fast.so": b"\x7fELF", "cache/warmup.pyc": b"\x00"}
    assert [str(violation) for violation in check_sources(files, spec)] == [
        f"cache/warmup.pyc: is not source code, so it cannot be checked; {FORBIDDEN}",
        f"fast.so: is not source code, so it cannot be checked; {FORBIDDEN}",
    ]


def test_invalid_or_unfollowable_source_is_refused_not_crashed_on(spec):
    assert messages("def broken(:\n", spec) == [
        "warmup.py, line 1: is not valid Python (invalid syntax), so it cannot be checked"
    ]
    assert messages("import torch\ny = torch" + ".a" * 500 + "\n", spec) == [
        "warmup.py: is nested too deeply to be checked"
    ]
    assert messages("x = " + "-" * 5000 + "1\n", spec) == [
        "warmup.py: cannot be read as Python source, so it cannot be checked"
    ]


def test_a_long_chain_of_aliases_is_followed(spec):
    aliases = "".join(f"a{i + 1} = a{i}\n" for i in range(5000))
    source = "import torch\na0 = torch\n" + aliases + "a5000.softmax(x)\n"
    assert messages(source, spec) == [f"warmup.py, line 5003: uses torch.softmax; {FORBIDDEN}"]


def test_no_configuration_means_no_check():
    assert check_sources({"warmup.py": b"eval('torch.softmax(x)')"}, StaticCheckSpec()) == []


def test_check_package_sources_reads_every_file_of_a_workdir(warmup_package, tmp_path: Path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "warmup.py").write_text(students.SOLUTION)
    (tmp_path / "pkg" / "helper.py").write_text("import torch\nsm = torch.softmax\n")
    assert [str(v) for v in check_package_sources(warmup_package, tmp_path)] == [
        f"pkg/helper.py, line 2: uses torch.softmax; {FORBIDDEN}"
    ]


def test_the_reason_lists_a_bounded_number_of_violations():
    violations = [Violation("warmup.py", line, "uses eval; not allowed") for line in range(1, 31)]
    reason = violations_reason(violations)
    assert reason.count("\n- warmup.py") == MAX_LISTED_VIOLATIONS
    assert reason.endswith(f"- and {30 - MAX_LISTED_VIOLATIONS} more")
