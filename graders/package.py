"""Assignment packages: parsing and validating ``assignment.toml``, and the published bundle format.

A package is a directory ``graders/<slug>/`` holding ``assignment.toml``, ``tests.py`` (the hidden cases, written
against :mod:`graders.harness`), ``handout/`` (starter code, public tests and ``README.md``) and usually
``solution/``. See docs/writing-an-assignment.md for the format.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import keyword
import math
import re
import tarfile
import tomllib
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from graders.harness import GraderError, load_suite
from graders.static_check import UNCHECKABLE_MODULES, StaticCheckSpec

MANIFEST = "assignment.toml"
README = "handout/README.md"
# Bundles hold code and small data; anything near these sizes is a mistake, not an assignment.
MAX_BUNDLE_FILES = 2_000
MAX_BUNDLE_BYTES = 256 * 1024 * 1024

_SLUG = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_TEST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_METRIC = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_VERSION = re.compile(r"\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?")
_EXCLUDED_DIRS = {"__pycache__"}
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")


class PackageError(ValueError):
    """The package is invalid; the message names the file and key at fault."""


@dataclass(frozen=True)
class TestSpec:
    __test__ = False  # not a pytest test class, despite the name

    name: str
    weight: float
    visibility: Literal["visible", "hidden", "after_due"]
    description: str
    # "gpu": the test only runs where the run has a GPU; elsewhere it is reported as not run, with the reason.
    requires: Literal["any", "gpu"] = "any"


@dataclass(frozen=True)
class RubricCriterion:
    """One criterion of a staff-graded (``grading = "manual"``) assignment."""

    name: str
    title: str
    points: float
    description: str


@dataclass(frozen=True)
class LeaderboardSpec:
    metric: str
    direction: Literal["asc", "desc"]  # asc: smaller is better (times); desc: larger is better
    unit: str
    label: str


@dataclass(frozen=True)
class AssignmentPackage:
    path: Path
    slug: str
    title: str
    version: str
    summary: str
    readme: str  # the handout README (Markdown)
    queue: Literal["cpu", "gpu", "manual"]  # "manual": staff grade it; nothing is enqueued
    tests: tuple[TestSpec, ...]
    module: str  # the student module, e.g. "warmup"
    functions: tuple[str, ...]  # the interface students implement
    allowed_files: tuple[str, ...]  # fnmatch patterns of accepted upload paths, "/"-separated
    max_files: int
    max_upload_bytes: int
    max_file_bytes: int
    time_limit_s: float  # the whole grading run
    call_timeout_s: float  # one call into the student's code
    memory_mb: int
    max_processes: int
    leaderboard: LeaderboardSpec | None
    due_at: datetime | None = None  # aware, UTC
    startup_timeout_s: float = 60.0  # importing the student's module (torch included)
    # What the submitted source must and must not use.
    static_check: StaticCheckSpec = field(default_factory=StaticCheckSpec)
    # Cap on the tensor elements one result may carry; None: a multiple of the call's own tensors (see harness).
    max_tensor_elements: int | None = None
    grading: Literal["auto", "manual"] = "auto"
    rubric: tuple[RubricCriterion, ...] = ()  # manual grading only
    required_files: tuple[str, ...] = ()  # upload paths every submission must contain
    weight: float | None = None  # share of the course total in percent (None: not part of the total)

    @property
    def points(self) -> float:
        if self.grading == "manual":
            return round(sum(criterion.points for criterion in self.rubric), 6)
        return round(sum(test.weight for test in self.tests), 6)

    def accepts_file(self, relative_path: str) -> bool:
        """Whether an uploaded file at ``relative_path`` ("/"-separated) matches ``allowed_files``."""
        return any(fnmatch.fnmatchcase(relative_path, pattern) for pattern in self.allowed_files)


# -- parsing -------------------------------------------------------------------------------------------------

_MANUAL_TOP_KEYS = {
    "slug",
    "title",
    "version",
    "summary",
    "grading",
    "points",
    "due_at",
    "weight",
    "submission",
    "rubric",
}
_RUBRIC_KEYS = {"name", "title", "points", "description"}
_TOP_KEYS = {
    "grading",
    "weight",
    "slug",
    "title",
    "version",
    "summary",
    "queue",
    "points",
    "due_at",
    "interface",
    "submission",
    "limits",
    "leaderboard",
    "tests",
    "static_check",
}
_INTERFACE_KEYS = {"module", "functions"}
_SUBMISSION_KEYS = {"allowed_files", "max_files", "max_upload_bytes", "max_file_bytes", "required_files"}
_LIMIT_KEYS = {
    "time_limit_s",
    "call_timeout_s",
    "startup_timeout_s",
    "memory_mb",
    "max_processes",
    "max_tensor_elements",
}
_STATIC_CHECK_KEYS = {
    "require_calls",
    "forbid_calls",
    "forbid_imports",
    "require_kernel_launch",
    "allow_imports",
}
_LEADERBOARD_KEYS = {"metric", "direction", "unit", "label"}
_TEST_KEYS = {"name", "weight", "visibility", "description", "requires"}


_REQUIRED: Any = object()


class _Reader:
    """Typed access to one TOML table, with errors that name the file and the dotted key."""

    def __init__(self, source: Path, table: dict[str, Any], prefix: str, allowed: set[str]) -> None:
        self.source = source
        self.table = table
        self.prefix = prefix
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.error(unknown[0], "is not a known key")

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, problem: str) -> PackageError:
        return PackageError(f"{self.source}: {self.key(name)} {problem}")

    def _get(self, name: str, default: Any) -> Any:
        if name in self.table:
            return self.table[name]
        if default is _REQUIRED:
            raise self.error(name, "is missing")
        return default

    def string(self, name: str, default: Any = _REQUIRED, *, pattern: re.Pattern[str] | None = None) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"must be a non-empty string, got {value!r}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.error(name, f"must match {pattern.pattern}, got {value!r}")
        return value

    def text(self, name: str) -> str:
        """An optional free-text string (may be empty)."""
        value = self._get(name, "")
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {value!r}")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: Any = _REQUIRED) -> str:
        value = self._get(name, default)
        if value not in options:
            raise self.error(name, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def integer(self, name: str, default: Any = _REQUIRED, *, minimum: int = 1) -> int:
        value = self._get(name, default)
        if type(value) is not int or value < minimum:
            raise self.error(name, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def optional_integer(self, name: str) -> int | None:
        return self.integer(name) if name in self.table else None

    def positive(self, name: str, default: Any = _REQUIRED) -> float:
        value = self._get(name, default)
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            raise self.error(name, f"must be a positive number, got {value!r}")
        return float(value)

    def string_list(self, name: str, *, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        value = self._get(name, _REQUIRED)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, str) and item for item in value)
        ):
            raise self.error(name, f"must be a non-empty list of strings, got {value!r}")
        if len(set(value)) != len(value):
            raise self.error(name, "lists an entry twice")
        for item in value:
            if pattern is not None and not pattern.fullmatch(item):
                raise self.error(name, f"entry {item!r} must match {pattern.pattern}")
        return tuple(value)

    def name_list(self, name: str) -> tuple[str, ...]:
        """An optional list of dotted Python names (may be empty)."""
        value = self._get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(name, f"must be a list of dotted names like torch.softmax, got {value!r}")
        for item in value:
            if not _DOTTED.fullmatch(item):
                raise self.error(name, f"entry {item!r} must be a dotted name like torch.softmax")
        if len(set(value)) != len(value):
            raise self.error(name, "lists an entry twice")
        return tuple(value)

    def table_of(self, name: str, allowed: set[str], *, required: bool = True) -> _Reader | None:
        value = self.table.get(name)
        if value is None:
            if required:
                raise self.error(name, "is missing (a [table])")
            return None
        if not isinstance(value, dict):
            raise self.error(name, "must be a [table]")
        return _Reader(self.source, value, self.key(name) + ".", allowed)


def _identifier(reader: _Reader, name: str, value: str) -> str:
    if not value.isidentifier() or keyword.iskeyword(value):
        raise reader.error(name, f"must be a Python identifier, got {value!r}")
    return value


def _parse_due_at(reader: _Reader) -> datetime | None:
    value = reader.table.get("due_at")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise reader.error("due_at", f"is not an ISO 8601 date-time: {value!r}") from None
    if not isinstance(value, datetime):
        kind = "a date without a time" if isinstance(value, date) else repr(value)
        raise reader.error("due_at", f"must be a date-time with a UTC offset, got {kind}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise reader.error("due_at", "must include a UTC offset, e.g. 2025-10-01T23:59:00+08:00")
    return value.astimezone(UTC)


def _parse_allowed_files(reader: _Reader) -> tuple[str, ...]:
    patterns = reader.string_list("allowed_files")
    for pattern in patterns:
        parts = PurePosixPath(pattern).parts
        if pattern.startswith("/") or "\\" in pattern or ".." in parts or not parts:
            raise reader.error("allowed_files", f"entry {pattern!r} must be a relative '/'-separated pattern")
    return patterns


def _parse_tests(source: Path, raw: Any) -> tuple[TestSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise PackageError(f"{source}: tests must be a non-empty array of [[tests]] tables")
    specs: list[TestSpec] = []
    for index, table in enumerate(raw):
        if not isinstance(table, dict):
            raise PackageError(f"{source}: tests[{index}] must be a [[tests]] table")
        reader = _Reader(source, table, f"tests[{index}].", _TEST_KEYS)
        name = reader.string("name", pattern=_TEST_NAME)
        reader.prefix = f"tests[{index}] ({name})."
        specs.append(
            TestSpec(
                name=name,
                weight=reader.positive("weight"),
                visibility=reader.choice("visibility", ("visible", "hidden", "after_due")),  # type: ignore[arg-type]
                description=reader.text("description"),
                requires=reader.choice("requires", ("any", "gpu"), "any"),  # type: ignore[arg-type]
            )
        )
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PackageError(f"{source}: test {duplicates[0]!r} is declared twice")
    return tuple(specs)


def _parse_static_check(reader: _Reader | None, functions: tuple[str, ...]) -> StaticCheckSpec:
    if reader is None:
        return StaticCheckSpec()
    launch = reader.table.get("require_kernel_launch", False)
    if launch is True:
        require_launch = functions
    elif launch is False:
        require_launch = ()
    elif isinstance(launch, list) and launch and all(item in functions for item in launch):
        require_launch = tuple(dict.fromkeys(launch))
    else:
        raise reader.error(
            "require_kernel_launch", f"must be true, false or a list of interface.functions, got {launch!r}"
        )
    forbid_imports = reader.name_list("forbid_imports")
    allow_imports = reader.name_list("allow_imports")
    for module in allow_imports:
        if not any(_under(module, refused) for refused in UNCHECKABLE_MODULES):
            raise reader.error(
                "allow_imports",
                f"entry {module!r} is not a module the static check refuses; it can allow only "
                f"{', '.join(sorted(UNCHECKABLE_MODULES))} (or their submodules)",
            )
        forbidden = next(
            (entry for entry in forbid_imports if _under(module, entry) or _under(entry, module)), None
        )
        if forbidden is not None:
            raise reader.error(
                "allow_imports", f"entry {module!r} overlaps forbid_imports entry {forbidden!r}"
            )
    return StaticCheckSpec(
        require_calls=reader.name_list("require_calls"),
        forbid_calls=reader.name_list("forbid_calls"),
        forbid_imports=forbid_imports,
        require_kernel_launch=require_launch,
        allow_imports=allow_imports,
    )


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def load_package(path: Path) -> AssignmentPackage:
    """Parse and validate the package at ``path``; PackageError with a message naming the file and key."""
    path = Path(path)
    source = path / MANIFEST
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{source}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{source}: not valid TOML: {exc}") from None

    if raw.get("grading") == "manual":
        return _load_manual(path, source, raw)
    top = _Reader(source, raw, "", _TOP_KEYS)
    if top.choice("grading", ("auto", "manual"), "auto") != "auto":
        raise AssertionError("unreachable: manual packages are loaded above")
    interface = top.table_of("interface", _INTERFACE_KEYS)
    submission = top.table_of("submission", _SUBMISSION_KEYS)
    limits = top.table_of("limits", _LIMIT_KEYS)
    board = top.table_of("leaderboard", _LEADERBOARD_KEYS, required=False)
    static_check = top.table_of("static_check", _STATIC_CHECK_KEYS, required=False)
    assert interface is not None and submission is not None and limits is not None

    module = _identifier(interface, "module", interface.string("module"))
    functions = interface.string_list("functions")
    for function in functions:
        _identifier(interface, "functions", function)
    allowed_files = _parse_allowed_files(submission)

    leaderboard = None
    if board is not None:
        unit = board.string("unit")
        leaderboard = LeaderboardSpec(
            metric=board.string("metric", pattern=_METRIC),
            direction=board.choice("direction", ("asc", "desc")),  # type: ignore[arg-type]
            unit=unit,
            label=board.string("label", unit),
        )

    tests = _parse_tests(source, raw.get("tests"))
    package = AssignmentPackage(
        path=path,
        slug=top.string("slug", pattern=_SLUG),
        title=top.string("title"),
        version=top.string("version", pattern=_VERSION),
        summary=top.text("summary"),
        readme=_read_readme(path),
        queue=top.choice("queue", ("cpu", "gpu")),  # type: ignore[arg-type]
        tests=tests,
        module=module,
        functions=functions,
        allowed_files=allowed_files,
        max_files=submission.integer("max_files"),
        max_upload_bytes=submission.integer("max_upload_bytes"),
        max_file_bytes=submission.integer("max_file_bytes"),
        time_limit_s=limits.positive("time_limit_s"),
        call_timeout_s=limits.positive("call_timeout_s"),
        memory_mb=limits.integer("memory_mb", minimum=64),
        max_processes=limits.integer("max_processes"),
        leaderboard=leaderboard,
        due_at=_parse_due_at(top),
        startup_timeout_s=limits.positive("startup_timeout_s", 60.0),
        static_check=_parse_static_check(static_check, functions),
        max_tensor_elements=limits.optional_integer("max_tensor_elements"),
        required_files=_parse_required_files(submission, allowed_files),
        weight=_parse_weight(top),
    )
    _check_consistency(package, top, limits, submission)
    return package


def _parse_weight(top: _Reader) -> float | None:
    value = top.table.get("weight")
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 <= value <= 100:
        raise top.error("weight", f"must be a percentage from 0 to 100, got {value!r}")
    return float(value)


def _parse_required_files(submission: _Reader, allowed_files: tuple[str, ...]) -> tuple[str, ...]:
    if "required_files" not in submission.table:
        return ()
    required = submission.string_list("required_files")
    for name in required:
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed_files):
            raise submission.error("required_files", f"entry {name!r} is not accepted by allowed_files")
    return required


def _load_manual(path: Path, source: Path, raw: dict[str, Any]) -> AssignmentPackage:
    """A staff-graded package: a handout README, what may be uploaded, and the rubric. No tests, no sandbox."""
    top = _Reader(source, raw, "", _MANUAL_TOP_KEYS)
    submission = top.table_of("submission", _SUBMISSION_KEYS)
    assert submission is not None
    rubric_tables = raw.get("rubric")
    if not isinstance(rubric_tables, list) or not rubric_tables:
        raise PackageError(
            f"{source}: a manually graded package needs a non-empty array of [[rubric]] tables"
        )
    rubric: list[RubricCriterion] = []
    for index, table in enumerate(rubric_tables):
        if not isinstance(table, dict):
            raise PackageError(f"{source}: rubric[{index}] must be a [[rubric]] table")
        reader = _Reader(source, table, f"rubric[{index}].", _RUBRIC_KEYS)
        name = reader.string("name", pattern=_TEST_NAME)
        reader.prefix = f"rubric[{index}] ({name})."
        rubric.append(
            RubricCriterion(
                name=name,
                title=reader.string("title"),
                points=reader.positive("points"),
                description=reader.text("description"),
            )
        )
    names = [criterion.name for criterion in rubric]
    if len(set(names)) != len(names):
        raise PackageError(f"{source}: a rubric criterion name is used twice")
    allowed_files = _parse_allowed_files(submission)
    package = AssignmentPackage(
        path=path,
        slug=top.string("slug", pattern=_SLUG),
        title=top.string("title"),
        version=top.string("version", pattern=_VERSION),
        summary=top.text("summary"),
        readme=_read_readme(path),
        queue="manual",
        tests=(),
        module="",
        functions=(),
        allowed_files=allowed_files,
        max_files=submission.integer("max_files"),
        max_upload_bytes=submission.integer("max_upload_bytes"),
        max_file_bytes=submission.integer("max_file_bytes"),
        time_limit_s=0.0,
        call_timeout_s=0.0,
        memory_mb=0,
        max_processes=0,
        leaderboard=None,
        due_at=_parse_due_at(top),
        grading="manual",
        rubric=tuple(rubric),
        required_files=_parse_required_files(submission, allowed_files),
        weight=_parse_weight(top),
    )
    if "points" in top.table:
        points = top.positive("points")
        if not math.isclose(points, package.points, abs_tol=1e-9):
            raise top.error("points", f"is {points:g} but the rubric's points sum to {package.points:g}")
    return package


def _read_readme(path: Path) -> str:
    try:
        return (path / README).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PackageError(f"{path / README}: file not found (every package has a handout README)") from None


def _check_consistency(
    package: AssignmentPackage, top: _Reader, limits: _Reader, submission: _Reader
) -> None:
    source = top.source
    if "points" in top.table:
        points = top.positive("points")
        if not math.isclose(points, package.points, abs_tol=1e-9):
            raise top.error("points", f"is {points:g} but the test weights sum to {package.points:g}")
    if package.call_timeout_s > package.time_limit_s:
        raise limits.error("call_timeout_s", "must not exceed limits.time_limit_s")
    if not (
        package.accepts_file(f"{package.module}.py") or package.accepts_file(f"{package.module}/__init__.py")
    ):
        raise submission.error("allowed_files", f"does not accept the module file {package.module}.py")
    starter = package.path / "handout" / f"{package.module}.py"
    if not (starter.is_file() or (package.path / "handout" / package.module / "__init__.py").is_file()):
        raise PackageError(
            f"{starter}: file not found (the handout needs the starter module, {package.module}.py or "
            f"{package.module}/__init__.py)"
        )

    try:
        suite = load_suite(package.path)
    except GraderError as exc:
        raise PackageError(str(exc)) from None
    declared = [spec.name for spec in package.tests]
    missing = [name for name in declared if name not in suite.tests]
    extra = [name for name in suite.tests if name not in declared]
    if missing:
        raise PackageError(f"{source}: test {missing[0]!r} has no @suite.test in tests.py")
    if extra:
        raise PackageError(f"{package.path / 'tests.py'}: test {extra[0]!r} is not declared in {MANIFEST}")
    if package.leaderboard is not None:
        metric = package.leaderboard.metric
        bench = suite.benchmarks.get(metric)
        unit = bench.unit if bench is not None else suite.metrics.get(metric)
        if unit is None:
            raise PackageError(
                f"{source}: leaderboard.metric {metric!r} has no @suite.benchmark and no suite.metric in tests.py"
            )
        if unit != package.leaderboard.unit:
            raise PackageError(
                f"{source}: leaderboard.unit is {package.leaderboard.unit!r} but tests.py reports {metric} in {unit!r}"
            )


# -- bundles -------------------------------------------------------------------------------------------------


def _bundle_members(root: Path) -> list[Path]:
    members: list[Path] = []
    for entry in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        relative = entry.relative_to(root)
        if any(part in _EXCLUDED_DIRS for part in relative.parts) or entry.name.endswith(_EXCLUDED_SUFFIXES):
            continue
        if entry.is_symlink():
            raise PackageError(f"{entry}: links cannot be bundled")
        if not (entry.is_file() or entry.is_dir()):
            raise PackageError(f"{entry}: only regular files and directories can be bundled")
        members.append(entry)
    return members


def build_bundle(path: Path) -> tuple[bytes, str]:
    """A deterministic .tar.gz of the package directory and its sha256 (hex): same files, same bytes.

    Entries are sorted, rooted at the directory's name, with mtime 0, uid/gid 0 and fixed modes;
    ``__pycache__`` and compiled files are left out.
    """
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"{root}: not a directory")
    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for entry in [root, *_bundle_members(root)]:
            relative = PurePosixPath(root.name, *entry.relative_to(root).parts)
            info = tarfile.TarInfo(relative.as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            else:
                data = entry.read_bytes()
                info.size = len(data)
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(data))
    data = raw.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def extract_bundle(data: bytes, dest: Path) -> Path:
    """Unpack a bundle made by :func:`build_bundle` into ``dest``; returns the package directory.

    Only regular files and directories under one top-level directory are accepted; absolute paths, ``..``,
    links, devices, duplicates and oversized contents raise PackageError before anything escapes ``dest``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    top: str | None = None
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in _checked_members(archive):
                top = _extract_member(archive, member, root, top, seen)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PackageError(f"the bundle is not a valid .tar.gz: {exc}") from None
    if top is None:
        raise PackageError("the bundle is empty")
    return root / top


def handout_zip(data: bytes, name: str) -> bytes:
    """The ``handout/`` directory of a bundle as a zip whose entries sit under ``name/``: what students download.

    Deterministic (sorted entries, fixed timestamps), so the same bundle always gives the same bytes.
    """
    zipped = io.BytesIO()
    try:
        with (
            tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive,
            zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as handout,
        ):
            files = []
            for member in _checked_members(archive):
                parts = PurePosixPath(member.name).parts
                if len(parts) > 2 and parts[1] == "handout" and member.isfile():
                    files.append((PurePosixPath(name, *parts[2:]).as_posix(), member))
            for entry_name, member in sorted(files, key=lambda item: item[0]):
                source = archive.extractfile(member)
                assert source is not None
                info = zipfile.ZipInfo(entry_name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                handout.writestr(info, source.read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PackageError(f"the bundle is not a valid .tar.gz: {exc}") from None
    return zipped.getvalue()


def _checked_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's entries, refusing too many of them or too many bytes before anything is written."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in archive:
        members.append(member)
        total += member.size if member.isreg() else 0
        if len(members) > MAX_BUNDLE_FILES:
            raise PackageError(f"the bundle has more than {MAX_BUNDLE_FILES} entries")
        if total > MAX_BUNDLE_BYTES:
            raise PackageError(f"the bundle unpacks to more than {MAX_BUNDLE_BYTES} bytes")
    return members


def _extract_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, root: Path, top: str | None, seen: set[str]
) -> str:
    """Write one checked entry under ``root``; returns the bundle's top-level directory name."""
    name = member.name
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\\" in name:
        raise PackageError(f"the bundle entry {name!r} has an unsafe path")
    if not (member.isreg() or member.isdir()):
        raise PackageError(f"the bundle entry {name!r} is not a regular file or directory")
    if top is not None and parts[0] != top:
        raise PackageError("the bundle must hold exactly one top-level directory")
    if name in seen:
        raise PackageError(f"the bundle entry {name!r} appears twice")
    seen.add(name)
    target = root.joinpath(*parts)
    if not target.resolve().is_relative_to(root):
        raise PackageError(f"the bundle entry {name!r} would land outside the destination")
    try:
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            with source, open(target, "xb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
    except (OSError, tarfile.TarError) as exc:
        raise PackageError(f"the bundle entry {name!r} cannot be written: {exc}") from None
    return parts[0]


def runner_files() -> list[Path]:
    """The files to copy into the sandbox's /runner: the runner stub and the protocol it imports."""
    here = Path(__file__).resolve().parent
    return [here / "protocol.py", here / "runner.py"]


def runner_argv(package: AssignmentPackage) -> list[str]:
    """The command that starts the runner stub inside the sandbox (the student's files are the cwd, /work).

    It asks the runner to count Triton kernel launches when the assignment requires them, and to record calls
    of the functions its static check forbids (run-time cross-checks of the static check).
    """
    argv = ["python", "-I", "-B", "/runner/runner.py", "--module", package.module]
    if package.static_check.require_kernel_launch:
        argv.append("--watch-triton")
    for name in package.static_check.forbid_calls:
        argv += ["--forbid", name]
    return argv
