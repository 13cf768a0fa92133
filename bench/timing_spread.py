"""Spread of the leaderboard metric between gradings of the same honest solution.

Grades the warm-up's reference solution N times (default 5) through the real harness and the local sandbox, the
way the worker does but without the server, and prints each run's leaderboard metric (with its per-shape
figures, the speed-up and any staff flags), then the mean, standard deviation and coefficient of variation.

    .venv/bin/python bench/timing_spread.py [--runs 5]
"""

from __future__ import annotations

import argparse
import math
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from graders.harness import GradeReport, grade  # noqa: E402
from graders.package import AssignmentPackage, load_package, runner_argv, runner_files  # noqa: E402
from graders.protocol import Channel  # noqa: E402
from graders.static_check import check_package_sources  # noqa: E402
from worker.sandbox import Limits, LocalSandbox, SandboxSpec, get_sandbox  # noqa: E402

SOLUTION = REPO / "graders" / "warmup" / "solution" / "warmup.py"
PER_SHAPE_FIGURES = {"iqr", "sandbox", "reference", "overhead", "reps"}


def grade_once(sandbox: LocalSandbox, package: AssignmentPackage, scratch: Path, index: int) -> GradeReport:
    job = scratch / f"job{index}"
    workdir, runner_dir = job / "work", job / "runner"
    workdir.mkdir(parents=True)
    runner_dir.mkdir()
    job.chmod(0o711)
    shutil.copyfile(SOLUTION, workdir / "warmup.py")
    if check_package_sources(package, workdir):
        raise SystemExit("the solution does not pass the warm-up's static check")
    for source in runner_files():
        shutil.copyfile(source, runner_dir / source.name)
    runner_dir.chmod(0o755)
    sandbox.prepare_workdir(workdir)
    spec = SandboxSpec(
        argv=runner_argv(package),
        workdir=workdir,
        ro_binds={runner_dir: "/runner"},
        limits=Limits(
            wall_seconds=package.time_limit_s,
            cpu_seconds=math.ceil(package.time_limit_s * 2),
            memory_bytes=package.memory_mb * 2**20,
            max_processes=package.max_processes,
        ),
    )
    with sandbox.run(spec) as session:
        channel = Channel(session.stdout, session.stdin, default_timeout=package.call_timeout_s)
        return grade(package, channel, seed=secrets.randbits(63))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()

    package = load_package(REPO / "graders" / "warmup")
    assert package.leaderboard is not None
    metric, unit = package.leaderboard.metric, package.leaderboard.unit
    sandbox = get_sandbox("local")
    assert isinstance(sandbox, LocalSandbox)
    sandbox.check()
    scratch = Path(tempfile.mkdtemp(prefix="timing-spread-"))
    scratch.chmod(0o711)
    values = []
    try:
        for index in range(options.runs):
            report = grade_once(sandbox, package, scratch, index)
            if metric not in report.metrics:
                raise SystemExit(f"run {index + 1}: no {metric}: {report.failure_reason} {report.notes}")
            values.append(report.metrics[metric])
            shapes = "  ".join(
                f"{key.removeprefix(metric + '.')}={value:.3f}"
                for key, value in report.metrics.items()
                if key.startswith(metric + ".") and key.rsplit("_", 1)[-1] not in PER_SHAPE_FIGURES
            )
            print(
                f"run {index + 1}: {metric} = {report.metrics[metric]:.3f} {unit} ({report.hardware_class})  "
                f"[{shapes}]  speed-up {report.metrics.get(metric + '_speedup', float('nan')):.2f}  "
                f"flags {len(report.flags)}"
            )
            for flag in report.flags:
                print(f"    flag: {flag}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    mean = statistics.fmean(values)
    stdev = statistics.stdev(values) if len(values) > 1 else 0.0
    print(f"mean {mean:.3f} {unit}  stdev {stdev:.3f} {unit}  coefficient of variation {stdev / mean:.1%}")


if __name__ == "__main__":
    main()
