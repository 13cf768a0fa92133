"""Upload-to-graded latency of the warm-up assignment, against the cost of importing torch.

Starts a real server and worker on the embedded defaults (SQLite, embedded broker, local sandbox) in a
temporary directory, submits the reference solution N times one after another, and follows each submission
with the server-sent-events stream until it is graded. In the same run it times a bare
``python -c "import torch"``, the floor every sandboxed grading pays at least once, and prints the ratio.

    .venv/bin/python bench/e2e_latency.py [--submissions 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.stack import Stack  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_import_torch(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - started)
    return times


def wait_graded(client: httpx.Client, submission_id: int) -> str:
    with client.stream("GET", f"/api/submissions/{submission_id}/events", timeout=None) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                status = json.loads(line[6:])["status"]
                if status in ("graded", "failed", "error"):
                    return str(status)
    raise RuntimeError("event stream ended before the submission finished")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--submissions", type=int, default=20)
    parser.add_argument("--import-repeats", type=int, default=5)
    args = parser.parse_args()

    solution = (REPO / "graders" / "warmup" / "solution" / "warmup.py").read_bytes()
    with tempfile.TemporaryDirectory(prefix="ag-bench-") as tmp:
        env = {
            "AUTOGRADER_ENV": "test",
            "AUTOGRADER_DATA_DIR": f"{tmp}/var",
            "AUTOGRADER_DATABASE__URL": "",
            "AUTOGRADER_BROKER__URL": "",
        }
        stack = Stack(env, Path(tmp))
        for command in (
            ["db", "upgrade"],
            ["assignment", "publish", str(REPO / "graders" / "warmup")],
            ["user", "add", "bench", "--password", "bench-password-1"],
        ):
            result = stack.cli(*command)
            if result.returncode:
                raise SystemExit(result.stderr)
        token = stack.cli("token", "create", "--user", "bench").stdout.strip()
        stack.start_server()
        stack.start_worker()
        try:
            client = httpx.Client(
                base_url=stack.url, headers={"authorization": f"Bearer {token}"}, timeout=60
            )
            course = client.get("/api/assignments").json()[0]["course"]
            url = f"/api/courses/{course}/assignments/warmup/submissions"
            # One untimed submission warms the worker (imports, bundle extraction), as in steady state.
            first = client.post(url, files=[("files", ("warmup.py", solution))]).json()["id"]
            wait_graded(client, first)
            latencies = []
            for _ in range(args.submissions):
                started = time.perf_counter()
                created = client.post(url, files=[("files", ("warmup.py", solution))])
                created.raise_for_status()
                status = wait_graded(client, created.json()["id"])
                latencies.append(time.perf_counter() - started)
                if status != "graded":
                    raise SystemExit(f"submission {created.json()['id']} ended {status}:\n{stack.logs()}")
        finally:
            stack.stop()
    torch_times = time_import_torch(args.import_repeats)
    torch_median = statistics.median(torch_times)
    median = statistics.median(latencies)
    print(f"submissions graded        : {len(latencies)} (sequential, embedded defaults, local sandbox)")
    print(f"upload -> graded median   : {median:.3f} s")
    print(f"upload -> graded p95      : {percentile(latencies, 0.95):.3f} s")
    print(f"upload -> graded min/max  : {min(latencies):.3f} / {max(latencies):.3f} s")
    print(f"bare 'import torch' median: {torch_median:.3f} s (over {len(torch_times)} runs)")
    print(f"ratio median / import     : {median / torch_median:.2f}x")


if __name__ == "__main__":
    main()
