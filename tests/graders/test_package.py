"""Assignment packages: the warm-up loads, broken manifests are refused by name, bundles are deterministic and
extract safely."""

import io
import os
import re
import shutil
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from graders.package import (
    PackageError,
    build_bundle,
    extract_bundle,
    load_package,
    runner_argv,
    runner_files,
)
from tests.graders.students import WARMUP


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    destination = tmp_path / "warmup"
    shutil.copytree(WARMUP, destination, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def edit_manifest(package_dir: Path, old: str, new: str) -> None:
    manifest = package_dir / "assignment.toml"
    text = manifest.read_text()
    assert old in text, f"{old!r} not in the manifest"
    manifest.write_text(text.replace(old, new, 1))


def test_warmup_package_loads(warmup_package):
    package = warmup_package
    assert (package.slug, package.title, package.version) == (
        "warmup",
        "Warm-up: softmax and RMSNorm",
        "1.1.0",
    )
    assert package.queue == "cpu" and package.module == "warmup"
    assert package.functions == ("softmax", "rms_norm")
    assert package.allowed_files == ("warmup.py",)
    assert (package.max_files, package.max_upload_bytes, package.max_file_bytes) == (4, 1 << 20, 256 << 10)
    assert (package.time_limit_s, package.call_timeout_s, package.memory_mb, package.max_processes) == (
        120,
        20,
        2048,
        64,
    )
    assert package.points == 10
    assert len(package.tests) >= 6
    assert {test.visibility for test in package.tests} == {"visible", "hidden", "after_due"}
    assert package.leaderboard is not None
    assert (package.leaderboard.metric, package.leaderboard.direction, package.leaderboard.unit) == (
        "softmax_ms",
        "asc",
        "ms",
    )
    assert package.due_at is None
    assert "autograder submit warmup warmup.py" in package.readme
    assert package.accepts_file("warmup.py") and not package.accepts_file("other.py")


def test_runner_files_and_argv(warmup_package):
    assert [path.name for path in runner_files()] == ["protocol.py", "runner.py"]
    assert all(path.is_file() for path in runner_files())
    argv = runner_argv(warmup_package)
    assert argv[:6] == ["python", "-I", "-B", "/runner/runner.py", "--module", "warmup"]
    assert argv[6:8] == ["--forbid", "torch.softmax"] and "--watch-triton" not in argv


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ('slug = "warmup"\n', "", "slug is missing"),
        (
            "max_processes = 64\n",
            "max_processes = 64\nmax_threads = 8\n",
            "limits.max_threads is not a known key",
        ),
        ('queue = "cpu"\n', 'queue = "cpu"\ncolour = "red"\n', "colour is not a known key"),
        (
            "weight = 1.5\n",
            "weight = -1.5\n",
            r"tests\[0\] \(softmax_basic\)\.weight must be a positive number",
        ),
        ("weight = 1.5\n", 'weight = "1.5"\n', r"softmax_basic\)\.weight must be a positive number"),
        ("weight = 1.5\n", "weight = true\n", r"softmax_basic\)\.weight must be a positive number"),
        ("weight = 1.5\n", "weight = nan\n", r"softmax_basic\)\.weight must be a positive number"),
        ("points = 10\n", "points = 12\n", "points is 12 but the test weights sum to 10"),
        (
            'visibility = "visible"',
            'visibility = "secret"',
            "visibility must be one of visible, hidden, after_due",
        ),
        ('queue = "cpu"', 'queue = "tpu"', "queue must be one of cpu, gpu"),
        ('version = "1.1.0"', 'version = "one"', "version must match"),
        ('module = "warmup"', 'module = "warm-up"', "interface.module must be a Python identifier"),
        ("call_timeout_s = 20", "call_timeout_s = 500", "call_timeout_s must not exceed limits.time_limit_s"),
        ("memory_mb = 2048", "memory_mb = 2048.5", "limits.memory_mb must be an integer"),
        ('allowed_files = ["warmup.py"]', 'allowed_files = ["../warmup.py"]', "must be a relative"),
        (
            'allowed_files = ["warmup.py"]',
            'allowed_files = ["*.txt"]',
            "does not accept the module file warmup.py",
        ),
        (
            'name = "softmax_basic"',
            'name = "softmax_renamed"',
            "'softmax_renamed' has no @suite.test in tests.py",
        ),
        ('metric = "softmax_ms"', 'metric = "softmax_us"', "'softmax_us' has no @suite.benchmark"),
        ('unit = "ms"', 'unit = "us"', "leaderboard.unit is 'us' but tests.py reports softmax_ms in 'ms'"),
        ('queue = "cpu"', 'queue = "cpu"\ndue_at = 2025-10-01T23:59:00', "due_at must include a UTC offset"),
        ('queue = "cpu"', 'queue = "cpu"\ndue_at = 2025-10-01', "due_at must be a date-time"),
        ("[limits]", "[limits\n", "not valid TOML"),
        (
            '  "torch.softmax",\n',
            '  "torch softmax",\n',
            "static_check.forbid_calls entry 'torch softmax' must be",
        ),
        ('  "torch.softmax",\n', '  "torch.rms_norm",\n', "static_check.forbid_calls lists an entry twice"),
        (
            "[static_check]\n",
            '[static_check]\nrequire_kernel_launch = ["attention"]\n',
            "static_check.require_kernel_launch must be true, false or a list of interface.functions",
        ),
        (
            "[static_check]\n",
            "[static_check]\nforbid_everything = true\n",
            "static_check.forbid_everything is not a",
        ),
        (
            "max_processes = 64\n",
            "max_processes = 64\nmax_tensor_elements = 0\n",
            "limits.max_tensor_elements must be an integer >= 1",
        ),
        (
            "[static_check]\n",
            '[static_check]\nallow_imports = ["torch.distributed"]\n',
            "static_check.allow_imports entry 'torch.distributed' is not a module the static check refuses",
        ),
        (
            "[static_check]\n",
            '[static_check]\nallow_imports = ["multiprocessing"]\n'
            'forbid_imports = ["multiprocessing.pool"]\n',
            "allow_imports entry 'multiprocessing' overlaps forbid_imports entry 'multiprocessing.pool'",
        ),
        (
            "[static_check]\n",
            '[static_check]\nallow_imports = "multiprocessing"\n',
            "static_check.allow_imports must be a list of dotted names",
        ),
    ],
    ids=[
        "missing-key",
        "unknown-limit",
        "unknown-top",
        "negative-weight",
        "string-weight",
        "bool-weight",
        "nan-weight",
        "points-mismatch",
        "visibility",
        "queue",
        "version",
        "module",
        "call-timeout",
        "memory-float",
        "allowed-traversal",
        "allowed-misses-module",
        "test-not-in-tests-py",
        "metric-not-registered",
        "unit-mismatch",
        "naive-due-at",
        "date-only-due-at",
        "toml-syntax",
        "forbid-not-dotted",
        "forbid-twice",
        "launch-not-interface",
        "static-check-unknown-key",
        "max-tensor-elements",
        "allow-not-refused",
        "allow-overlaps-forbid",
        "allow-not-a-list",
    ],
)
def test_invalid_manifest_is_refused_with_the_problem_named(package_copy, old, new, complaint):
    edit_manifest(package_copy, old, new)
    with pytest.raises(PackageError, match=complaint) as error:
        load_package(package_copy)
    assert "assignment.toml" in str(error.value)


def test_test_registered_only_in_tests_py_is_refused(package_copy):
    tests_py = package_copy / "tests.py"
    tests_py.write_text(
        tests_py.read_text() + '\n\n@suite.test("extra_case")\ndef extra_case(ctx):\n    pass\n'
    )
    with pytest.raises(PackageError, match=re.escape("test 'extra_case' is not declared in assignment.toml")):
        load_package(package_copy)


def test_tests_py_that_fails_to_import_is_refused(package_copy):
    (package_copy / "tests.py").write_text("import does_not_exist\n")
    with pytest.raises(PackageError, match=re.escape("tests.py: importing it failed: ModuleNotFoundError")):
        load_package(package_copy)


def test_static_check_and_tensor_cap_are_read(package_copy):
    edit_manifest(
        package_copy,
        "[static_check]\n",
        '[static_check]\nrequire_kernel_launch = true\nrequire_calls = ["triton.jit"]\n'
        'allow_imports = ["multiprocessing", "subprocess"]\n',
    )
    edit_manifest(package_copy, "max_processes = 64\n", "max_processes = 64\nmax_tensor_elements = 5000\n")
    package = load_package(package_copy)
    assert package.static_check.require_kernel_launch == ("softmax", "rms_norm")
    assert package.static_check.require_calls == ("triton.jit",)
    assert package.static_check.allow_imports == ("multiprocessing", "subprocess")
    assert "torch.Tensor.softmax" in package.static_check.forbid_calls
    assert package.max_tensor_elements == 5000
    argv = runner_argv(package)
    assert "--watch-triton" in argv and argv.count("--forbid") == len(package.static_check.forbid_calls)


def test_a_package_without_static_check_runs_no_monitors(package_copy):
    manifest = package_copy / "assignment.toml"
    text = manifest.read_text()
    manifest.write_text(text[: text.index("# Students write")] + text[text.index("[[tests]]") :])
    package = load_package(package_copy)
    assert not package.static_check.active and package.max_tensor_elements is None
    assert runner_argv(package) == ["python", "-I", "-B", "/runner/runner.py", "--module", "warmup"]


def test_due_at_with_an_offset_is_stored_in_utc(package_copy):
    edit_manifest(package_copy, 'queue = "cpu"', 'queue = "cpu"\ndue_at = 2025-10-01T23:59:00+08:00')
    package = load_package(package_copy)
    assert package.due_at == datetime(2025, 10, 1, 15, 59, tzinfo=UTC)


def test_bundle_is_deterministic(package_copy, tmp_path):
    first, first_sha = build_bundle(package_copy)
    # Timestamps, caches and location must not change the bytes.
    os.utime(package_copy / "tests.py", (1_000_000, 1_000_000))
    (package_copy / "__pycache__").mkdir(exist_ok=True)
    (package_copy / "__pycache__" / "tests.cpython-311.pyc").write_bytes(b"compiled")
    (package_copy / "handout" / "stale.pyc").write_bytes(b"compiled")
    elsewhere = tmp_path / "elsewhere" / "warmup"
    shutil.copytree(package_copy, elsewhere)
    second, second_sha = build_bundle(elsewhere)
    assert first == second and first_sha == second_sha
    assert len(first_sha) == 64


def test_bundle_changes_when_a_file_changes(package_copy):
    _, before = build_bundle(package_copy)
    (package_copy / "handout" / "README.md").write_text("changed")
    _, after = build_bundle(package_copy)
    assert before != after


def test_bundle_round_trips_through_extraction(package_copy, tmp_path):
    data, _ = build_bundle(package_copy)
    extracted = extract_bundle(data, tmp_path / "unpacked")
    assert extracted == (tmp_path / "unpacked" / "warmup").resolve()
    assert (extracted / "tests.py").read_bytes() == (package_copy / "tests.py").read_bytes()
    assert not list(extracted.rglob("__pycache__"))
    assert load_package(extracted).tests == load_package(package_copy).tests


def malicious_bundle(*entries: tuple[str, bytes | str | None]) -> bytes:
    """A .tar.gz with (name, content) entries: bytes for a file, None for a directory, "->target" for a link."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif isinstance(content, str):
                info.type = tarfile.SYMTYPE
                info.linkname = content.removeprefix("->")
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return raw.getvalue()


@pytest.mark.parametrize(
    ("entries", "complaint"),
    [
        ((("pkg", None), ("pkg/../../escaped.txt", b"x")), "unsafe path"),
        ((("/tmp/absolute.txt", b"x"),), "unsafe path"),
        ((("pkg", None), ("pkg/link", "->/etc/passwd")), "not a regular file or directory"),
        ((("pkg/a.txt", b"x"), ("other/b.txt", b"y")), "exactly one top-level directory"),
        ((("pkg/a.txt", b"x"), ("pkg/a.txt", b"y")), "appears twice"),
    ],
    ids=["dot-dot", "absolute", "symlink", "two-roots", "duplicate"],
)
def test_extract_bundle_rejects_unsafe_archives(tmp_path, entries, complaint):
    destination = tmp_path / "dest"
    with pytest.raises(PackageError, match=complaint):
        extract_bundle(malicious_bundle(*entries), destination)
    assert not (tmp_path / "escaped.txt").exists()
    assert not any(path.is_symlink() for path in destination.rglob("*"))


def test_extract_bundle_rejects_non_gzip_data(tmp_path):
    with pytest.raises(PackageError, match=re.escape("not a valid .tar.gz")):
        extract_bundle(b"definitely not a tarball", tmp_path / "dest")
