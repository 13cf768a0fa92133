"""How long a similarity report takes for a whole course, and whether planted copies come out on top.

Builds a SQLite database in a temporary directory with the warm-up assignment and N students, each with one
graded submission of synthetic code (random but plausible PyTorch: the handout's two functions plus helpers,
with statements drawn from a small grammar, so independent students share many idioms: most pairs overlap
somewhere, a denser and slower case than real solutions). A few students hand in
a lightly edited copy of another's code: identifiers renamed, functions reordered, comments and blank lines
changed. Then it runs a report the way the server's background thread does (selection, unpacking every archive,
fingerprinting, comparing all pairs, regions) and prints the time of each part and where the copies rank.

    .venv/bin/python bench/similarity_scale.py [--students 300] [--copies 10] [--helpers 2] [--seed 0]

``--helpers`` sets the size of each file: 2 gives warm-up-sized files (~40 lines), 20 gives ~300 lines.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NAMES = [
    "x",
    "y",
    "z",
    "t",
    "h",
    "w",
    "v",
    "u",
    "s",
    "r",
    "q",
    "p",
    "m",
    "n",
    "k",
    "a",
    "b",
    "c",
    "acc",
    "buf",
    "tmp",
    "val",
    "out",
    "res",
    "cur",
    "prev",
    "nxt",
    "peak",
    "top",
    "low",
    "high",
    "mean",
    "var",
    "rms",
    "scale",
    "norm",
    "total",
    "denom",
    "numer",
    "probs",
    "logits",
    "exps",
    "shifted",
    "squares",
    "inv",
    "gain",
    "bias",
    "mask",
    "step",
    "chunk",
    "part",
    "head",
]
FUNCTIONS = ["exp", "log", "sqrt", "rsqrt", "abs", "tanh", "sigmoid", "relu", "square", "reciprocal"]
REDUCTIONS = ["sum", "mean", "amax", "amin", "prod"]
COMMENTS = (
    "keep it numerically stable",
    "work in float32",
    "reduce over the chosen dimension",
    "broadcast back to the input's shape",
    "see the lecture notes",
    "TODO: tidy up",
)


def expression(rng: random.Random, known: list[str]) -> str:
    a, b = rng.choice(known), rng.choice(known)
    dim = rng.choice(["dim", "-1", "0", "1"])
    templates = [
        lambda: f"torch.{rng.choice(FUNCTIONS)}({a})",
        lambda: f"{a}.{rng.choice(REDUCTIONS)}(dim={dim}, keepdim={rng.choice(['True', 'False'])})",
        lambda: f"({a} {rng.choice('+-*/')} {b})",
        lambda: f"{a} * {rng.randint(2, 9)}.{rng.randint(0, 9)}",
        lambda: f"torch.where({a} > {rng.randint(0, 3)}, {a}, {b})",
        lambda: f"{a}.to({rng.choice(['torch.float32', 'torch.float64', 'x.dtype'])})",
        lambda: f"torch.clamp({a}, min={rng.choice(['0.0', '-1.0', 'eps'])})",
        lambda: f"{a}.transpose({dim}, -1)",
    ]
    return rng.choice(templates)()


def function(rng: random.Random, signature: str, params: list[str]) -> str:
    known = list(params)
    lines = [signature]
    for _ in range(rng.randint(4, 9)):
        if rng.random() < 0.2:
            lines.append(f"    # {rng.choice(COMMENTS)}")
        target = rng.choice(NAMES)
        lines.append(f"    {target} = {expression(rng, known)}")
        known.append(target)
    lines.append(f"    return {expression(rng, known)}")
    return "\n".join(lines)


def solution(rng: random.Random, helpers: int) -> str:
    blocks = [
        function(rng, "def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:", ["x"]),
        function(
            rng,
            "def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:",
            ["x", "weight", "eps"],
        ),
    ]
    for number in range(helpers):
        params = rng.sample(NAMES, 2)
        name = f"_{rng.choice(['helper', 'step', 'part', 'do'])}_{number}_{rng.randint(0, 999)}"
        blocks.append(function(rng, f"def {name}({', '.join(params)}, dim=-1):", [*params, "dim"]))
    rng.shuffle(blocks)
    return "import torch\n\n\n" + "\n\n\n".join(blocks) + "\n"


def lightly_edited(rng: random.Random, code: str) -> str:
    """Rename every local name, reorder the functions, rewrite comments and blank lines."""
    renamed = {name: f"{name}_{rng.choice(['v', 'my', 'new'])}{rng.randint(0, 9)}" for name in NAMES}
    code = re.sub(r"\b[a-z_]+\b", lambda m: renamed.get(m.group(0), m.group(0)), code)
    code = re.sub(r"  # .*|    # .*\n", "", code)
    header, *blocks = code.split("\n\n\n")
    rng.shuffle(blocks)
    blocks = [block.replace("\n    return", "\n\n    # done\n    return") for block in blocks]
    return header + "\n\n\n" + "\n\n\n".join(blocks)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--students", type=int, default=300)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--helpers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ag-bench-similarity-") as data_dir:
        os.environ.update({"AUTOGRADER_ENV": "test", "AUTOGRADER_DATA_DIR": data_dir})
        run(args)


def run(args: argparse.Namespace) -> None:
    from server import db, migrate
    from server.assignments.service import AssignmentAccess
    from server.auth import service as auth_service
    from server.auth.models import User
    from server.bootstrap import bootstrap
    from server.courses import service as courses
    from server.courses.models import Role
    from server.settings import get_settings
    from server.similarity import service
    from server.submissions import service as submissions
    from server.submissions.models import SubmissionStatus

    rng = random.Random(args.seed)
    codes = [solution(rng, args.helpers) for _ in range(args.students - args.copies)]
    planted = []
    for _ in range(args.copies):
        source = rng.randrange(len(codes))
        planted.append((f"s{source:04d}", f"s{len(codes):04d}"))
        codes.append(lightly_edited(rng, codes[source]))

    migrate.upgrade()
    factory = db.get_session_factory()
    with factory() as session:
        world = bootstrap(session=session, settings=get_settings(), packages=[REPO / "graders" / "warmup"])
        assignment = world.assignments[0]
        for number, code in enumerate(codes):
            user = auth_service.create_user(session=session, username=f"s{number:04d}", password=None)
            courses.enroll(session=session, course=world.course, user=user, role=Role.student)
            submission = submissions.create(
                session=session,
                user=user,
                access=AssignmentAccess(assignment, Role.student),
                parts=[("warmup.py", code.encode())],
                max_request_bytes=2**24,
                max_files=64,
            )
            submission.status = SubmissionStatus.graded
        instructor = auth_service.create_user(session=session, username="prof", password=None)
        session.commit()
        lines = sum(code.count("\n") for code in codes) / len(codes)
        print(f"{len(codes)} students, {args.copies} planted copies, {lines:.0f} lines per file")

        started, cpu_started = time.perf_counter(), time.process_time()
        report = service.request_report(
            session=session,
            assignment=assignment,
            actor=session.get(User, instructor.id) or instructor,
            scope=service.Scope.latest,
            common_students=None,
        )
        session.commit()
        service.run_report(session_factory=factory, report_id=report.id)
        total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        session.refresh(report)
        result = report.result

    pairs = result["pairs"]
    wanted = {frozenset(pair) for pair in planted}
    ranks = [p["rank"] for p in pairs if frozenset((p["a"]["student"], p["b"]["student"])) in wanted]
    planted_similarities = [p["similarity"] for p in pairs if p["rank"] in ranks]
    others = [p["similarity"] for p in pairs if p["rank"] not in ranks]
    all_pairs = len(codes) * (len(codes) - 1) // 2
    print(
        f"report (status {report.status}): {total:.2f} s end to end ({cpu:.2f} s of CPU; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs), {result['duration_s']:.2f} s computing"
    )
    timings = result["timings"]
    print(
        f"  reading {result['compared']} archives (select, unpack in a scratch dir): {timings['reading_s']:.2f} s"
    )
    print(f"  fingerprinting, comparing {all_pairs} pairs, regions: {timings['comparing_s']:.2f} s")
    print(
        f"pairs with any shared code: {result['pairs_with_overlap']} of {all_pairs}; "
        f"common fingerprints ignored: {result['common_fingerprints_ignored']} "
        f"(shared by more than {result['parameters']['common_students']} students)"
    )
    print(f"stored result: {len(json.dumps(result)) / 2**20:.1f} MiB of JSON for {len(pairs)} pairs")
    print(f"planted copies found: {len(ranks)}/{len(planted)}, ranks {sorted(ranks)}")
    if planted_similarities:
        print(f"  similarity of the copies: min {min(planted_similarities):.3f}")
    if others:
        print(f"  best pair that is not a copy: {max(others):.3f}")


if __name__ == "__main__":
    main()
