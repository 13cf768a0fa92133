"""Everything the sandbox sends is untrusted: every field is type-checked, every size capped, and a malformed or
oversized message fails the submission with a clear reason, never the grader."""

import json
import struct

import pytest
import torch

from graders.harness import MAX_RESULT_HEADER_BYTES, MAX_RESULT_TENSORS, Context, GraderError, _Session, grade
from graders.protocol import MAGIC, PREFIX, VERSION, encode_message
from graders.static_check import StaticCheckSpec
from tests.graders.fake_runner import FakeRunner, doubles, fake_package, first_tensor, graded_by, ok


@pytest.fixture
def package(warmup_package, tmp_path):
    return fake_package(warmup_package, tmp_path / "fake")


DROP = object()


def result(header: dict, **fields) -> bytes:
    """A result frame for ``header``'s call: an honest one, with ``fields`` changed (DROP removes a field)."""
    message = {"op": "result", "id": header["id"], "ok": True, "value": 0, "mutated": [], "elapsed_s": 0.0}
    message.update(fields)
    return encode_message({key: value for key, value in message.items() if value is not DROP}, {})


def tensor_frame(header: dict, index: dict, data: bytes) -> bytes:
    """A result whose safetensors blob carries the given index (its own claims about the tensors in it)."""
    index_bytes = json.dumps(index).encode()
    blob = struct.pack("<Q", len(index_bytes)) + index_bytes + data
    head = json.dumps(
        {
            "op": "result",
            "id": header["id"],
            "ok": True,
            "value": {"$tensor": "t0"},
            "mutated": [],
            "elapsed_s": 0,
        }
    ).encode()
    return PREFIX.pack(MAGIC, VERSION, len(head), len(blob)) + head + blob


def nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


MALFORMED_RESULTS = {
    "ok-not-bool": (lambda h: result(h, ok="yes"), "expected the result of call"),
    "wrong-id": (lambda h: result(h, id=h["id"] + 7), "expected the result of call"),
    "inputs-not-returned": (lambda h: result(h), "does not carry the inputs back as asked"),
    "inputs-wrong-count": (lambda h: result(h, inputs_after=[]), "does not carry the inputs back as asked"),
    "elapsed-string": (lambda h: result(h, elapsed_s="fast"), "malformed 'elapsed_s'"),
    "elapsed-negative": (lambda h: result(h, elapsed_s=-1.0), "malformed 'elapsed_s'"),
    "elapsed-nan": (lambda h: result(h, elapsed_s=float("nan")), "malformed 'elapsed_s'"),
    "elapsed-bool": (lambda h: result(h, elapsed_s=True), "malformed 'elapsed_s'"),
    "elapsed-missing": (lambda h: result(h, elapsed_s=DROP), "malformed 'elapsed_s'"),
    "mutated-not-list": (lambda h: result(h, mutated=5), "malformed 'mutated'"),
    "mutated-too-long": (lambda h: result(h, mutated=["args[0]"] * 5000), "malformed 'mutated'"),
    "mutated-not-str": (lambda h: result(h, mutated=[1]), "malformed 'mutated'"),
    "no-value": (lambda h: result(h, value=DROP), "has no value"),
    "failure-kind": (
        lambda h: result(h, ok=False, kind="weird", error="x"),
        "failed result message is malformed",
    ),
    "failure-error": (lambda h: result(h, ok=False, kind="exception", error=123), "malformed"),
    "launches-negative": (lambda h: result(h, kernel_launches=-1), "malformed kernel launch count"),
    "launches-string": (lambda h: result(h, kernel_launches="many"), "malformed kernel launch count"),
    "forbidden-unknown": (
        lambda h: result(h, forbidden_calls=["os.system"]),
        "malformed list of forbidden calls",
    ),
    "deep-value": (lambda h: result(h, value=nested(100)), "nests values more than"),
    "missing-tensor": (lambda h: result(h, value={"$tensor": "t9"}), "was not sent"),
    "header-too-big": (
        lambda h: result(h, value="x" * (MAX_RESULT_HEADER_BYTES + 10)),
        f"exceeds the limit of {MAX_RESULT_HEADER_BYTES} bytes",
    ),
    "too-many-tensors": (
        lambda h: ok(h, [torch.zeros(1) for _ in range(MAX_RESULT_TENSORS + 44)]),
        # The test's input comes back too (one more tensor than the result holds, one more allowed).
        f"holds {MAX_RESULT_TENSORS + 45} tensors, more than the {MAX_RESULT_TENSORS + 1} allowed",
    ),
    "elements-claimed": (
        lambda h: tensor_frame(
            h, {"t0": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4]}}, b"0000"
        ),
        "tensor elements allowed",
    ),
    "index-claims-too-much": (
        lambda h: tensor_frame(h, {"t0": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"0000"),
        "describes a tensor it cannot hold",
    ),
    "index-not-json": (
        lambda h: PREFIX.pack(MAGIC, VERSION, 2, 12) + b"{}" + struct.pack("<Q", 4) + b"{{{{",
        "index is not valid JSON",
    ),
}


@pytest.mark.parametrize(("make", "complaint"), MALFORMED_RESULTS.values(), ids=MALFORMED_RESULTS.keys())
def test_a_malformed_result_fails_the_submission_not_the_grader(package, make, complaint):
    with graded_by(package, lambda header, tensors: make(header), benchmarks=False) as (report, _):
        pass
    assert report.status == "failed" and report.score == 0
    assert report.failure_reason.startswith("Your program broke the grading protocol during test double: ")
    assert complaint in report.failure_reason
    assert report.tests[0].message == "Your program broke the grading protocol."


def test_too_many_elements_are_refused_before_they_are_read(package):
    capped = fake_package(package, package.path, max_tensor_elements=1000)

    def huge(header, tensors):
        return ok(header, torch.zeros(4 << 20))  # 16 MiB the grader must not read

    with graded_by(capped, huge, benchmarks=False) as (report, _):
        assert report.status == "failed"
    assert (
        "tensor data of" in report.failure_reason and "(257 tensors, 1004 elements)" in report.failure_reason
    )


def test_elements_over_the_package_cap_are_refused_from_the_blob_index(package):
    capped = fake_package(package, package.path, max_tensor_elements=1000)
    with graded_by(capped, lambda header, tensors: ok(header, torch.zeros(5000)), benchmarks=False) as (
        report,
        _,
    ):
        assert report.status == "failed"
    # The package's cap plus the test's input of 4 elements, which comes back for the mutation check.
    assert "more than the 1004 tensor elements allowed" in report.failure_reason


def test_the_default_element_cap_scales_with_the_call(package):
    # The test's call sends 4 elements: far below the floor of the default cap, so 100k elements are fine.
    with graded_by(
        package, lambda header, tensors: ok(header, first_tensor(tensors) * 2), benchmarks=False
    ) as (
        report,
        fake,
    ):
        assert report.status == "graded"
    limits = next(header["limits"] for header in fake.requests if header["op"] == "call")
    assert limits == {
        "max_header_bytes": MAX_RESULT_HEADER_BYTES,
        "max_tensors": 256,
        "max_tensor_elements": 1 << 20,
    }


def test_a_forbidden_call_seen_at_run_time_fails_the_test_and_flags_it(package):
    watched = fake_package(
        package, package.path, static_check=StaticCheckSpec(forbid_calls=("torch.softmax",))
    )

    def evasive(header, tensors):
        return ok(header, first_tensor(tensors) * 2, forbidden_calls=["torch.softmax"])

    with graded_by(watched, evasive, benchmarks=False) as (report, _):
        assert report.status == "graded" and report.score == 0
    assert report.tests[0].message == "double called torch.softmax, which this assignment does not allow"
    assert report.flags == ["runtime check: double called torch.softmax during test double"]


@pytest.mark.parametrize(("launches", "passed"), [(0, False), (3, True)])
def test_a_required_kernel_launch_is_checked_at_run_time(package, launches, passed):
    watched = fake_package(
        package, package.path, static_check=StaticCheckSpec(require_kernel_launch=("double",))
    )

    def launching(header, tensors):
        return ok(header, first_tensor(tensors) * 2, kernel_launches=launches)

    with graded_by(watched, launching, benchmarks=False) as (report, _):
        assert report.status == "graded"
    assert report.tests[0].passed is passed
    if not passed:
        assert report.tests[0].message.startswith("double returned without launching a Triton kernel")
        assert report.flags == ["runtime check: double launched no Triton kernel during test double"]


def test_a_result_silent_about_a_required_kernel_launch_breaks_the_protocol(package):
    watched = fake_package(
        package, package.path, static_check=StaticCheckSpec(require_kernel_launch=("double",))
    )
    with graded_by(watched, doubles(), benchmarks=False) as (report, _):
        assert report.status == "failed"
    assert "did not say whether a Triton kernel was launched" in report.failure_reason


@pytest.mark.parametrize(
    "ready",
    [
        {"op": "ready", "names": "double"},
        {"op": "ready", "names": ["x"] * 20_000},
        {"op": "ready", "names": [7]},
        {"op": "ready", "names": [], "forbidden_calls": ["os.system"]},
    ],
    ids=["names-not-list", "too-many-names", "name-not-str", "unknown-forbidden-call"],
)
def test_a_malformed_ready_message_fails_the_submission(package, ready):
    with graded_by(package, doubles(), benchmarks=False, ready=ready) as (report, _):
        pass
    assert report.status == "failed"
    assert (
        report.failure_reason
        == "Your program broke the grading protocol while starting up: it did not announce itself."
    )


def test_a_runner_that_does_not_greet_properly_is_an_infrastructure_fault(package):
    hello = {"op": "ready", "names": []}
    with (
        FakeRunner(doubles(), hello=hello) as fake,
        pytest.raises(GraderError, match="did not greet the grader"),
    ):
        grade(package, fake.channel, seed=1)


def test_fields_the_grader_did_not_ask_for_are_ignored(package):
    def boastful(header, tensors):
        message, out = ok(header, first_tensor(tensors) * 2, passed=True, score=10, status="graded")
        return message, out

    ready = {"op": "ready", "names": ["double"], "score": 10, "tests": ["all passed"]}
    with graded_by(package, boastful, benchmarks=False, ready=ready) as (report, _):
        assert (report.status, report.score) == ("graded", 1)


def test_inputs_changed_in_place_are_found_on_the_graders_side(package):
    def mutates_and_denies_it(header, tensors):
        x = first_tensor(tensors)
        x.mul_(2)  # the answer, computed into the input
        return ok(header, x.clone())  # reports mutated == [], yet the input it sends back has changed

    with FakeRunner(mutates_and_denies_it) as fake:
        session = _Session(package, fake.channel, seed=1)
        fake.channel.recv(timeout=10)
        fake.channel.send({"op": "import"})
        fake.channel.recv(timeout=10)
        ctx = Context(session, "double", visible=True)
        x = ctx.randn(4)
        result = ctx.invoke("double", x)
    assert result.mutated == ("args[0]",) and torch.equal(result.value, x * 2)
