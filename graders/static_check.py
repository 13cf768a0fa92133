"""A static check of a submission's source, on the trusted side, before any of it runs.

An assignment can require and forbid things in ``assignment.toml``::

    [static_check]
    require_calls = ["triton.jit"]                    # each must be used somewhere in the submission
    forbid_calls = ["torch.softmax", "torch.Tensor.softmax"]
    forbid_imports = ["flash_attn", "xformers"]       # these modules and everything under them
    require_kernel_launch = true                      # checked at run time by the runner, see graders.runner
    allow_imports = ["multiprocessing"]               # modules the check cannot follow, allowed all the same

The check parses every uploaded ``.py`` file (nothing is imported or executed) and follows names the way Python
would bind them: ``import torch.nn.functional as F; F.softmax``, ``from torch.nn.functional import softmax as s``,
assignments (``f = torch.nn.functional``), parameter defaults, ``self.f = ...``, ``getattr(torch, "soft" +
"max")``, ``vars(torch)["softmax"]``, ``sys.modules["torch"]``, ``__import__`` and ``importlib.import_module``
with constant names, star imports, and re-exports (``torch.nn.modules.activation.F`` is ``torch.nn.functional``:
names are canonicalised against the live modules already loaded here). A ``torch.Tensor.<name>`` entry forbids
the method: any ``.<name>`` attribute of something that is not one of the student's own modules.

When anything is forbidden, code that cannot be followed is a violation too, reported plainly ("uses eval; not
allowed for this assignment"): eval/exec/compile, imports and ``getattr`` with names computed at run time,
private torch internals (``torch._C``, ``torch.ops``), code loaders (``importlib.util``, ``runpy``, ``marshal``,
``ctypes``, ``subprocess`` ...), and uploaded files that cannot be read as source (``.pyc``, ``.so``).
An assignment whose own code needs one of those modules (a handout that starts processes with
``multiprocessing``) lists it in ``allow_imports``: that module and its submodules are then neither followed
nor refused.

This is a deterrent, not a proof: the runner's call monitors cross-check at run time and raise staff flags.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import sys
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graders.harness import GradeReport
    from graders.package import AssignmentPackage

MAX_LISTED_VIOLATIONS = 20
TENSOR_METHOD_PREFIX = "torch.Tensor."
# Files Python can import or load but that are not source the check can read.
UNCHECKABLE_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".pth", ".dylib", ".dll")
# Modules that run code the check cannot see (loaders, process spawners), and what to call them in a message.
# An assignment may allow some of them (``allow_imports``).
UNCHECKABLE_MODULES = {
    "importlib.util": "importlib.util",
    "importlib.machinery": "importlib.machinery",
    "runpy": "runpy",
    "marshal": "marshal",
    "pickle": "pickle",
    "dill": "dill",
    "cloudpickle": "cloudpickle",
    "ctypes": "ctypes",
    "cffi": "cffi",
    "code": "the code module",
    "codeop": "codeop",
    "subprocess": "subprocess",
    "multiprocessing": "multiprocessing",
    "torch.utils.cpp_extension": "torch.utils.cpp_extension",
    "torch.library": "torch.library",
}
# Every way to run code the check cannot see: those modules, and functions that never may be allowed.
_UNCHECKABLE_CODE = {
    **UNCHECKABLE_MODULES,
    "builtins.eval": "eval",
    "builtins.exec": "exec",
    "builtins.compile": "compile",
    "builtins.breakpoint": "breakpoint",
    "importlib.reload": "importlib.reload",
    "importlib.__import__": "importlib.__import__",
    "types.CodeType": "types.CodeType",
    "types.FunctionType": "types.FunctionType",
    "types.ModuleType": "types.ModuleType",
    "os.system": "os.system",
    "os.popen": "os.popen",
    "os.execv": "os.execv",
    "os.execve": "os.execve",
    "os.execvp": "os.execvp",
    "os.execl": "os.execl",
    "os.execlp": "os.execlp",
    "os.spawnv": "os.spawnv",
    "os.posix_spawn": "os.posix_spawn",
    "torch.ops": "torch.ops",
}
# Calls whose first argument names something: resolved when it is a constant, a violation when it is not.
_NAME_LOOKUPS = {"builtins.getattr", "builtins.hasattr", "inspect.getattr_static"}
_MODULE_IMPORTS = {"builtins.__import__", "importlib.import_module"}
_ATTRIBUTE_HELPERS = {"operator.attrgetter", "operator.methodcaller"}
_NAMESPACES = {"builtins.vars", "builtins.globals", "builtins.locals"}
# Followed only where they are called directly: passed around as values (functools.reduce(getattr, ...)), their
# lookups cannot be followed.
_LOOKUP_FUNCTIONS = _NAME_LOOKUPS | _MODULE_IMPORTS | _ATTRIBUTE_HELPERS | _NAMESPACES


@dataclass(frozen=True)
class StaticCheckSpec:
    """The ``[static_check]`` table of an assignment (all empty: no check)."""

    require_calls: tuple[str, ...] = ()
    forbid_calls: tuple[str, ...] = ()
    forbid_imports: tuple[str, ...] = ()
    require_kernel_launch: tuple[str, ...] = ()  # interface functions that must launch a Triton kernel
    # Modules of UNCHECKABLE_MODULES (or submodules) the submission may use although the check cannot follow
    # them, e.g. multiprocessing where the handout starts processes.
    allow_imports: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.require_calls or self.forbid_calls or self.forbid_imports)

    @property
    def forbids(self) -> bool:
        return bool(self.forbid_calls or self.forbid_imports)


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int  # 0 when it concerns the submission as a whole
    message: str

    def __str__(self) -> str:
        if not self.path:
            return self.message
        return (
            f"{self.path}, line {self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"
        )


# -- live lookups: canonical names through re-exports ----------------------------------------------------------

_MISSING = object()


def _live_object(dotted: str) -> Any:
    """The object a dotted name denotes among modules already imported here, without running any code."""
    parts = dotted.split(".")
    current: Any = sys.modules.get(parts[0], _MISSING)
    for part in parts[1:]:
        if current is _MISSING:
            return _MISSING
        try:
            current = inspect.getattr_static(current, part)
        except AttributeError:
            return _MISSING
    if isinstance(current, staticmethod | classmethod):
        return current.__func__
    return current


def _canonical(dotted: str) -> str:
    """``dotted`` with every module re-export replaced by the module's own name."""
    parts = dotted.split(".")
    current: Any = sys.modules.get(parts[0], _MISSING)
    canonical = [parts[0]]
    for part in parts[1:]:
        if current is not _MISSING:
            try:
                current = inspect.getattr_static(current, part)
            except AttributeError:
                current = _MISSING
        if isinstance(current, types.ModuleType) and isinstance(current.__name__, str):
            canonical = current.__name__.split(".")
        else:
            canonical.append(part)
    return ".".join(canonical)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class _Rules:
    """The spec turned into matchers."""

    def __init__(self, spec: StaticCheckSpec) -> None:
        self.spec = spec
        self.forbidden = spec.forbid_calls
        self.methods = {
            name.removeprefix(TENSOR_METHOD_PREFIX): name
            for name in spec.forbid_calls
            if name.startswith(TENSOR_METHOD_PREFIX) and name.count(".") == 2
        }
        self.roots = {name.split(".")[0] for name in spec.forbid_calls}
        self.objects: list[tuple[Any, str]] = []
        for name in spec.forbid_calls:
            target = _live_object(name)
            if target is not _MISSING and not isinstance(target, types.ModuleType):
                self.objects.append((target, name))

    def forbidden_call(self, name: str) -> str | None:
        """The forbidden entry ``name`` denotes (by name, re-export or identity), or None."""
        for candidate in {name, _canonical(name)}:
            for entry in self.forbidden:
                if _under(candidate, entry):
                    return entry
        target = _live_object(name)
        if target is not _MISSING:
            for forbidden_object, entry in self.objects:
                if target is forbidden_object:
                    return entry
        return None

    def forbidden_import(self, module: str) -> str | None:
        return next((entry for entry in self.spec.forbid_imports if _under(module, entry)), None)

    def uncheckable(self, name: str, verb: str = "uses") -> str | None:
        """Why using ``name`` is a violation when something is forbidden: it runs code the check cannot see,
        or reaches private internals of a forbidden function's package. None if it is neither."""
        if not self.spec.forbids:
            return None
        allowed = any(_under(name, module) for module in self.spec.allow_imports)
        for prefix, label in _UNCHECKABLE_CODE.items():
            if _under(name, prefix) and not allowed:
                return (
                    f"{verb} {label}; not allowed for this assignment (code run that way cannot be checked)"
                )
        parts = name.split(".")
        if parts[0] in self.roots:
            for index, part in enumerate(parts[1:], start=1):
                if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
                    private = ".".join(parts[: index + 1])
                    return f"{verb} {private}, a private part of {parts[0]}; not allowed for this assignment"
        return None


# -- one file ------------------------------------------------------------------------------------------------


def _constant_string(node: ast.AST | None) -> str | None:
    """The value of a string expression made only of constants ("soft" + "max", f"{'soft'}max"), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _constant_string(node.left), _constant_string(node.right)
        return left + right if left is not None and right is not None else None
    if isinstance(node, ast.JoinedStr):
        pieces = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                if value.format_spec is not None or value.conversion != -1:
                    return None
                piece = _constant_string(value.value)
            else:
                piece = _constant_string(value)
            if piece is None:
                return None
            pieces.append(piece)
        return "".join(pieces)
    return None


def _dotted_text(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of plain attribute accesses on a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


@dataclass
class _FileCheck:
    path: str
    tree: ast.Module
    rules: _Rules
    local_modules: frozenset[str]
    bindings: dict[str, list[ast.AST]] = field(default_factory=dict)  # name or a.b target -> assigned values
    bound: set[str] = field(default_factory=set)  # every name the file binds in any scope
    star_modules: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)  # resolved names the file refers to
    violations: list[Violation] = field(default_factory=list)
    _memo: dict[int, frozenset[str]] = field(default_factory=dict)
    _resolving: set[int] = field(default_factory=set)
    _handled: set[int] = field(default_factory=set)  # nodes already judged as part of a larger one
    _called: set[int] = field(default_factory=set)  # the function expressions of calls

    # -- bindings --------------------------------------------------------------------------------------------
    def collect_bindings(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.asname or alias.name.split(".")[0]
                    target = alias.name if alias.asname else alias.name.split(".")[0]
                    self._bind(name, ast.Name(id=f"<module>{target}", ctx=ast.Load()))
            elif isinstance(node, ast.ImportFrom):
                if node.level or node.module is None:
                    for alias in node.names:
                        self.bound.add(alias.asname or alias.name)
                    continue
                for alias in node.names:
                    if alias.name == "*":
                        self.star_modules.append(node.module)
                        continue
                    imported = ast.Name(id=f"<module>{node.module}.{alias.name}", ctx=ast.Load())
                    self._bind(alias.asname or alias.name, imported)
            elif isinstance(node, ast.Assign):
                for assigned in node.targets:
                    self._bind_target(assigned, node.value)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
                self._bind_target(node.target, node.value)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                self._bind_parameters(node.args)
                if not isinstance(node, ast.Lambda):
                    self.bound.add(node.name)
            elif isinstance(node, ast.ClassDef):
                self.bound.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
                self.bound.add(node.id)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                self.bound.add(node.name)

    def _bind(self, name: str, value: ast.AST | None) -> None:
        self.bound.add(name.split(".")[0])
        if value is not None:
            self.bindings.setdefault(name, []).append(value)

    def _bind_target(self, target: ast.AST, value: ast.AST | None) -> None:
        if isinstance(target, ast.Tuple | ast.List):
            values = value.elts if isinstance(value, ast.Tuple | ast.List) else None
            for index, element in enumerate(target.elts):
                paired = values[index] if values is not None and len(values) == len(target.elts) else None
                self._bind_target(element, paired)
            return
        name = _dotted_text(target)
        if name is not None:
            self._bind(name, value)

    def _bind_parameters(self, arguments: ast.arguments) -> None:
        positional = [*arguments.posonlyargs, *arguments.args]
        defaults: list[ast.AST | None] = [None] * (len(positional) - len(arguments.defaults))
        defaults += list(arguments.defaults)
        for parameter, default in zip(positional, defaults, strict=True):
            self._bind(parameter.arg, default)
        for parameter, kw_default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
            self._bind(parameter.arg, kw_default)
        for collector in (arguments.vararg, arguments.kwarg):
            if collector is not None:
                self.bound.add(collector.arg)

    # -- resolution ------------------------------------------------------------------------------------------
    def resolve(self, node: ast.AST) -> frozenset[str]:
        """Every dotted name ``node`` may denote (empty when unknown, e.g. a tensor or the student's own code)."""
        key = id(node)
        if key in self._memo:
            return self._memo[key]
        if key in self._resolving:
            return frozenset()
        self._resolving.add(key)
        try:
            names = self._resolve(node)
        finally:
            self._resolving.discard(key)
        self._memo[key] = names
        return names

    def _resolve(self, node: ast.AST) -> frozenset[str]:
        if isinstance(node, ast.Name):
            if node.id.startswith("<module>"):
                return frozenset({node.id.removeprefix("<module>")})
            if node.id in self.bindings:
                return frozenset(name for value in self.bindings[node.id] for name in self.resolve(value))
            if node.id in self.bound:
                return frozenset()
            if node.id == "__builtins__":
                return frozenset({"builtins"})
            names = {f"{module}.{node.id}" for module in self.star_modules}
            if hasattr(builtins, node.id):
                names.add(f"builtins.{node.id}")
            return frozenset(names)
        if isinstance(node, ast.Attribute):
            text = _dotted_text(node)
            if text is not None and text in self.bindings:
                return frozenset(name for value in self.bindings[text] for name in self.resolve(value))
            return frozenset(f"{base}.{node.attr}" for base in self.resolve(node.value))
        if isinstance(node, ast.Call):
            return self._resolve_call(node)
        if isinstance(node, ast.Subscript):
            return self._resolve_subscript(node)
        return frozenset()

    def _resolve_call(self, node: ast.Call) -> frozenset[str]:
        functions = self.resolve(node.func)
        first = node.args[0] if node.args else None
        if functions & _MODULE_IMPORTS:
            module = _constant_string(first)
            if module is None:
                return frozenset()
            has_fromlist = len(node.args) >= 4 or any(keyword.arg == "fromlist" for keyword in node.keywords)
            if "builtins.__import__" in functions and not has_fromlist:
                return frozenset({module.split(".")[0]})
            return frozenset({module})
        if functions & {"builtins.getattr", "inspect.getattr_static"} and len(node.args) >= 2:
            attribute = _constant_string(node.args[1])
            if attribute is None:
                return frozenset()
            return frozenset(f"{base}.{attribute}" for base in self.resolve(node.args[0]))
        if "builtins.vars" in functions and first is not None:
            return frozenset(f"{base}.__dict__" for base in self.resolve(first))
        if "builtins.globals" in functions or "builtins.locals" in functions:
            return frozenset({"<namespace>"})
        return frozenset()

    def _resolve_subscript(self, node: ast.Subscript) -> frozenset[str]:
        key = _constant_string(node.slice)
        containers = self.resolve(node.value)
        if key is None:
            return frozenset()
        names: set[str] = set()
        for container in containers:
            if container == "sys.modules":
                names.add(key)
            elif container == "<namespace>":
                names |= self.resolve(ast.Name(id=key, ctx=ast.Load()))
            elif container.endswith(".__dict__"):
                names.add(f"{container.removesuffix('.__dict__')}.{key}")
        return frozenset(names)

    # -- judging ---------------------------------------------------------------------------------------------
    def report(self, node: ast.AST, message: str) -> None:
        self.violations.append(Violation(self.path, getattr(node, "lineno", 0), message))

    def judge_name(self, node: ast.AST, name: str) -> bool:
        """Report ``name`` if it is forbidden or cannot be checked; returns whether it was."""
        self.used.add(name)
        entry = self.rules.forbidden_call(name) or self.rules.forbidden_import(name)
        if entry is not None:
            self.report(node, f"uses {entry}; not allowed for this assignment")
            return True
        problem = self.rules.uncheckable(name)
        if problem is not None:
            self.report(node, problem)
            return True
        return False

    def judge_method(self, node: ast.AST, attribute: str, base: ast.AST | None) -> None:
        """A ``.name`` access: forbidden if ``name`` is a forbidden tensor method, unless it is an attribute
        of one of the student's own modules (the object may be a tensor: its type is not known here)."""
        entry = self.rules.methods.get(attribute)
        if entry is None:
            return
        bases = self.resolve(base) if base is not None else frozenset()
        if bases and all(name.split(".")[0] in self.local_modules for name in bases):
            return
        self.report(
            node,
            f"calls a method named {attribute} ({entry} is not allowed for this assignment; "
            "if this is your own method, rename it)",
        )

    def judge(self) -> None:
        forbids = self.rules.spec.forbids
        self._called = {id(node.func) for node in ast.walk(self.tree) if isinstance(node, ast.Call)}
        for node in ast.walk(self.tree):
            if id(node) in self._handled:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._judge_module(node, alias.name)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                self._judge_module(node, node.module)
                for alias in node.names:
                    if alias.name != "*":
                        self.judge_name(node, f"{node.module}.{alias.name}")
            elif isinstance(node, ast.Call):
                self._judge_call(node, forbids)
            elif isinstance(node, ast.Subscript):
                self._judge_subscript(node, forbids)
            elif isinstance(node, ast.Attribute):
                self._judge_reference(node)
                if self._dynamic_attribute(node, forbids):
                    self.report(node, f"uses {node.attr}; not allowed for this assignment")
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                self._judge_reference(node)

    def _judge_module(self, node: ast.AST, module: str) -> None:
        entry = self.rules.forbidden_import(module)
        if entry is not None:
            self.report(node, f"imports {module}; not allowed for this assignment")
        self.used.add(module)
        problem = self.rules.uncheckable(module, "imports")
        if problem is not None:
            self.report(node, problem)

    def _judge_reference(self, node: ast.Name | ast.Attribute) -> None:
        names = self.resolve(node)
        reported = [self.judge_name(node, name) for name in names]
        if self.rules.spec.forbids and names & _LOOKUP_FUNCTIONS and id(node) not in self._called:
            self.report(
                node,
                f"passes {node.attr if isinstance(node, ast.Attribute) else node.id} around as a "
                "value; not allowed for this assignment (its lookups cannot be followed)",
            )
        if isinstance(node, ast.Attribute):
            if not any(reported):
                self.judge_method(node, node.attr, node.value)
            # The chain's prefixes (torch.nn in torch.nn.functional.softmax) are not uses of their own.
            inner: ast.AST = node.value
            while isinstance(inner, ast.Attribute | ast.Name):
                self._handled.add(id(inner))
                if not isinstance(inner, ast.Attribute):
                    break
                inner = inner.value

    def _dynamic_attribute(self, node: ast.Attribute, forbids: bool) -> bool:
        """``__getattribute__``/``__getattr__`` anywhere, or a module's ``__dict__`` not indexed by a constant."""
        if not forbids or node.attr not in ("__getattribute__", "__getattr__", "__dict__"):
            return False
        return node.attr != "__dict__" or self._module_namespace(node.value)

    def _module_namespace(self, node: ast.AST | None) -> bool:
        if node is None:
            return False
        return any(
            isinstance(_live_object(name), types.ModuleType) or name.split(".")[0] in self.rules.roots
            for name in self.resolve(node)
        )

    def _judge_call(self, node: ast.Call, forbids: bool) -> None:
        functions = self.resolve(node.func)
        first = node.args[0] if node.args else None
        names = self.resolve(node)
        for name in names:
            self.judge_name(node, name)
        if not forbids:
            return
        if functions & _MODULE_IMPORTS and not names:
            self.report(
                node, "imports a module whose name is computed at run time; not allowed for this assignment"
            )
        if functions & _NAME_LOOKUPS and len(node.args) >= 2:
            attribute = _constant_string(node.args[1])
            if attribute is None:
                if self._module_namespace(first) or self.rules.methods:
                    self.report(
                        node, "uses getattr with a name computed at run time; not allowed for this assignment"
                    )
            elif not names and first is not None:
                self.judge_method(node, attribute, first)
        if functions & _ATTRIBUTE_HELPERS:
            attribute = _constant_string(first)
            if attribute is None:
                self.report(
                    node,
                    "looks up an attribute whose name is computed at run time; not allowed for this assignment",
                )
            else:
                self.judge_method(node, attribute.split(".")[-1], None)
        if "builtins.vars" in functions and id(node) not in self._handled and self._module_namespace(first):
            self.report(node, "uses vars() on a module; not allowed for this assignment")
        if functions & {"builtins.globals", "builtins.locals"} and id(node) not in self._handled:
            self.report(node, "uses globals() or locals(); not allowed for this assignment")

    def _judge_subscript(self, node: ast.Subscript, forbids: bool) -> None:
        containers = self.resolve(node.value)
        lookup = containers & {"sys.modules", "<namespace>"} or any(
            name.endswith(".__dict__") for name in containers
        )
        if not lookup:
            return
        names = self.resolve(node)
        for name in names:
            self.judge_name(node, name)
        self._handled.add(id(node.value))
        if isinstance(node.value, ast.Attribute):
            self._handled.add(id(node.value.value))
        if forbids and not names:
            self.report(node, "looks up a name computed at run time; not allowed for this assignment")


# -- the submission --------------------------------------------------------------------------------------------


def _module_names(paths: Iterable[str]) -> frozenset[str]:
    """The top-level module names the submission itself provides (``helpers.py``, ``pkg/__init__.py``)."""
    names = set()
    for path in paths:
        parts = PurePosixPath(path).parts
        if parts and path.endswith(".py"):
            names.add(parts[0].removesuffix(".py"))
    return frozenset(names)


def check_sources(files: Mapping[str, bytes], spec: StaticCheckSpec) -> list[Violation]:
    """Check a submission given as ``{relative path: contents}``; returns the violations, sorted."""
    if not spec.active:
        return []
    rules = _Rules(spec)
    local_modules = _module_names(files)
    violations: list[Violation] = []
    used: set[str] = set()
    for path in sorted(files):
        if path.endswith(UNCHECKABLE_SUFFIXES):
            violations.append(
                Violation(
                    path, 0, "is not source code, so it cannot be checked; not allowed for this assignment"
                )
            )
            continue
        if not path.endswith(".py"):
            continue
        try:
            tree = ast.parse(files[path], filename=path)
        except SyntaxError as exc:
            violations.append(
                Violation(path, exc.lineno or 0, f"is not valid Python ({exc.msg}), so it cannot be checked")
            )
            continue
        except (ValueError, RecursionError, MemoryError):
            violations.append(Violation(path, 0, "cannot be read as Python source, so it cannot be checked"))
            continue
        check = _FileCheck(path, tree, rules, local_modules)
        try:
            check.collect_bindings()
            check.judge()
        except RecursionError:
            violations.append(Violation(path, 0, "is nested too deeply to be checked"))
            continue
        violations += check.violations
        used |= check.used
    for required in spec.require_calls:
        if not any(_under(name, required) or _under(_canonical(name), required) for name in used):
            violations.append(
                Violation("", 0, f"your code never uses {required}; this assignment requires it")
            )
    return sorted(set(violations))


def read_submission(workdir: Path) -> dict[str, bytes]:
    """Every regular file under ``workdir`` as ``{relative posix path: contents}`` (links are skipped)."""
    root = Path(workdir)
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def check_package_sources(
    package: AssignmentPackage, workdir_files: Path | Mapping[str, bytes]
) -> list[Violation]:
    """The violations of ``package``'s ``[static_check]`` in a submission: its unpacked directory or its files."""
    files = read_submission(workdir_files) if isinstance(workdir_files, Path) else workdir_files
    return check_sources(files, package.static_check)


def violations_reason(violations: list[Violation]) -> str:
    """The plain failure reason shown to the student."""
    listed = [f"- {violation}" for violation in violations[:MAX_LISTED_VIOLATIONS]]
    if len(violations) > MAX_LISTED_VIOLATIONS:
        listed.append(f"- and {len(violations) - MAX_LISTED_VIOLATIONS} more")
    return "Your submission was not run: it uses code this assignment does not allow.\n" + "\n".join(listed)


def static_check_report(package: AssignmentPackage, violations: list[Violation]) -> GradeReport:
    """The ``failed`` report of a submission that did not pass the static check (no test was run)."""
    from graders.harness import GradeReport, TestOutcome

    tests = [
        TestOutcome(
            name=spec.name,
            visibility=spec.visibility,
            passed=False,
            score=0.0,
            max_score=spec.weight,
            message="Not run: your submission did not pass the static check.",
            duration_s=0.0,
        )
        for spec in package.tests
    ]
    return GradeReport(
        status="failed",
        failure_reason=violations_reason(violations),
        tests=tests,
        score=0.0,
        max_score=package.points,
        metrics={},
        flags=[f"static check: {violation}" for violation in violations[:MAX_LISTED_VIOLATIONS]],
    )
