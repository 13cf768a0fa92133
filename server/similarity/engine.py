"""Pairwise code similarity of Python sources: winnowed k-gram fingerprints, handout and common code excluded.

The method is copydetect's (itself MOSS's winnowing): the code is tokenised with Pygments and filtered, so that
names become ``V`` (variables, attributes), ``F`` (functions) and ``O`` (classes), strings become ``S`` and
comments and whitespace disappear; every run of ``NOISE_TOKENS`` filtered characters is hashed; two files share
code where they share hashes. Renaming variables, reordering functions and rewriting comments or whitespace
therefore changes nothing, while two independent solutions share only short idioms.

copydetect provides the fingerprints (``get_document_fingerprints``: k-gram hashing and winnowing), and the
tokenizer's filtering rules are its ``filter_code``'s. Three steps are done here instead, because in copydetect 0.5
they are wrong in ways that matter for a report staff act on:

- the filtered-to-source position map: ``filter_code`` records a wrong offset after every class name, and
  Pygments drops leading blank lines and ``\\r``, so copydetect's regions drift for files with classes, Windows
  line endings or leading blank lines. ``tokenize`` keeps, for every filtered character, the exact span of the
  source it came from (its filtered text is identical to copydetect's);
- boilerplate removal: ``get_document_fingerprints(..., boilerplate)`` calls ``np.intersect1d`` with
  ``assume_unique=True`` on non-unique hashes, which also deletes every repeated k-gram of the student's own
  code. Here handout and common fingerprints are removed by set difference;
- what is counted: copydetect counts every character a shared k-gram covers, so k-grams that straddle the
  handout and a few characters of the student's code (the end of a handout docstring and the first statement
  of the body) make two different solutions filled into the same handout look 40 % alike. Here the characters
  that handout or common k-grams cover are set aside first, and a side's similarity is the share of its own
  code (the rest) that shared k-grams cover.

Nothing here touches the database or the disk; ``compare`` takes the sources in memory.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate, combinations
from typing import Any

import numpy as np
from pygments.lexers.python import PythonLexer
from pygments.token import Comment, Literal, Name, Text

# The shortest match that counts, in filtered characters (copydetect's default noise threshold): about one
# statement. Shorter shared runs are idioms any two solutions have.
NOISE_TOKENS = 25
# Every k-gram is a fingerprint (a winnowing window of 1, copydetect's default guarantee threshold of 25), so
# every shared run of NOISE_TOKENS is found. It is also the fast path: a larger window runs a Python loop.
WINDOW = 1
# Fingerprints held by more students than this are common code (an idiom of the assignment, a snippet from the
# lecture) and ignored, as MOSS does by default; never fewer than DEFAULT_COMMON_SHARE of the students.
DEFAULT_COMMON_STUDENTS = 10
DEFAULT_COMMON_SHARE = 0.10
# Bounds on what a report stores: the best pairs, their largest regions, short snippets.
MAX_STORED_PAIRS = 1000
MAX_REGIONS_PER_PAIR = 20
SNIPPET_LINES = 12
SNIPPET_LINE_CHARS = 160
# Shorter stretches of a matching region are not shown (they still count towards the similarity).
MIN_REGION_TOKENS = 8
# A hash that occurs many times in both files of a pair adds nothing to the region pairing after a few.
_MAX_OCCURRENCES_PAIRED = 8

_VARIABLES = frozenset({Name, Name.Variable, Name.Attribute})
_PREPROCESSOR = frozenset({Comment.Preproc, Comment.Hashbang})


def normalise_source(text: str) -> str:
    """Source text as compared and shown: no byte-order mark, ``\\n`` line endings (line numbers unchanged)."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


@dataclass(frozen=True)
class Filtered:
    """Filtered code and, for each of its characters, the span ``[start, end)`` of the source it stands for."""

    text: str
    starts: list[int]
    ends: list[int]


def tokenize(source: str) -> Filtered:
    """copydetect's ``filter_code`` for Python, keeping an exact position map; ``source`` is normalised."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for index, kind, value in PythonLexer().get_tokens_unprocessed(source):
        if not value:
            continue
        symbol = _symbol(kind, value)
        if symbol is None:
            continue
        if symbol:
            chars.append(symbol)
            starts.append(index)
            ends.append(index + len(value))
            continue
        chars.extend(value)
        starts.extend(range(index, index + len(value)))
        ends.extend(range(index + 1, index + len(value) + 1))
    return Filtered("".join(chars), starts, ends)


def _symbol(kind: Any, value: str) -> str | None:
    """What a token becomes: a one-letter stand-in, ``""`` to keep it verbatim, or None to drop it."""
    if kind in _VARIABLES:
        return "V"
    if kind in Name.Function:
        return "F"
    if kind in Name.Class:
        return "O"
    if kind in _PREPROCESSOR:
        return "P"
    if kind in Text or kind in Comment:
        return None
    if kind in Literal.String:
        return '"' if value in ("'", '"') else "S"
    return ""


def fingerprints(filtered: str) -> dict[int, list[int]]:
    """Every k-gram hash of the filtered code and the positions where it starts."""
    from copydetect.utils import get_document_fingerprints  # copydetect imports matplotlib: only when used

    _, positions = get_document_fingerprints(filtered, NOISE_TOKENS, WINDOW)
    return {int(value): [int(index) for index in indexes] for value, indexes in positions.items()}


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str


@dataclass(frozen=True)
class CodeSubmission:
    """One submission as compared: who made it, when, and its Python files (normalised text)."""

    submission_id: int
    user_id: int
    student: str
    submitted_at: datetime
    files: tuple[SourceFile, ...]


@dataclass
class _File:
    path: str
    lines: list[str]
    line_starts: list[int]
    filtered: Filtered
    # Fingerprint -> where its k-grams start (after exclusion: the kept fingerprints only).
    positions: dict[int, list[int]]
    # The kept fingerprints (sorted), and every occurrence of one as (fingerprint, start), by fingerprint.
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    occurrence_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    occurrence_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    masked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # handout or common code
    tokens: int = 0  # filtered characters of the student's own code that a kept fingerprint covers


@dataclass
class _Document:
    submission: CodeSubmission
    files: list[_File]
    hashes: frozenset[int] = frozenset()
    tokens: int = 0


@dataclass(frozen=True)
class _Match:
    """How much of each side's own code is found in the other, and in which pairs of files."""

    left: _Document
    right: _Document
    matched_left: int
    matched_right: int
    file_pairs: tuple[tuple[int, int, np.ndarray], ...]

    @property
    def similarity_left(self) -> float:
        return self.matched_left / self.left.tokens if self.left.tokens else 0.0

    @property
    def similarity_right(self) -> float:
        return self.matched_right / self.right.tokens if self.right.tokens else 0.0

    @property
    def similarity(self) -> float:
        return max(self.similarity_left, self.similarity_right)

    @property
    def overlap_tokens(self) -> int:
        return min(self.matched_left, self.matched_right)


def boilerplate_hashes(sources: Iterable[str]) -> set[int]:
    """The fingerprints of the handout's code: matches made only of these are not similarity."""
    hashes: set[int] = set()
    for source in sources:
        hashes.update(fingerprints(tokenize(normalise_source(source)).text))
    return hashes


def common_threshold(students: int, requested: int | None = None) -> int:
    """How many students may share a fingerprint before it counts as common code."""
    if requested is not None:
        return requested
    return max(DEFAULT_COMMON_STUDENTS, math.ceil(DEFAULT_COMMON_SHARE * students))


def compare(
    submissions: Sequence[CodeSubmission], *, boilerplate: set[int], common_students: int
) -> dict[str, Any]:
    """Compare every pair of submissions by different students; the ranked pairs with their matching regions.

    A side's similarity is the share of its own code (filtered characters covered by a fingerprint that is
    neither handout nor common code, and not inside a stretch of handout or common code) that is also in the
    other side. ``common_students``: fingerprints held by more students than this are common code.
    """
    documents = [_fingerprint(submission) for submission in submissions]
    holders: dict[int, set[int]] = defaultdict(set)
    for document in documents:
        for file in document.files:
            for value in file.positions:
                holders[value].add(document.submission.user_id)
    common = {value for value, users in holders.items() if len(users) > common_students}
    ignored = boilerplate | common
    for document in documents:
        _exclude(document, ignored)

    matches = [
        match for left, right in _candidate_pairs(documents) if (match := _match(left, right)) is not None
    ]
    matches.sort(
        key=lambda m: (
            -m.similarity,
            -m.overlap_tokens,
            m.left.submission.submission_id,
            m.right.submission.submission_id,
        )
    )
    return {
        "compared": len(documents),
        "students": len({document.submission.user_id for document in documents}),
        "common_fingerprints_ignored": len(common - boilerplate),
        "pairs_with_overlap": len(matches),
        "truncated": len(matches) > MAX_STORED_PAIRS,
        "pairs": [_pair_out(rank, match) for rank, match in enumerate(matches[:MAX_STORED_PAIRS], start=1)],
    }


def _fingerprint(submission: CodeSubmission) -> _Document:
    files = []
    for source in submission.files:
        filtered = tokenize(source.text)
        lines = source.text.split("\n")
        line_starts = [0, *accumulate(len(line) + 1 for line in lines[:-1])]
        files.append(_File(source.path, lines, line_starts, filtered, fingerprints(filtered.text)))
    return _Document(submission, files)


def _exclude(document: _Document, ignored: set[int]) -> None:
    """Set aside handout and common code; what remains is the code this submission can share with another."""
    for file in document.files:
        length = len(file.filtered.text)
        kept = {value: at for value, at in file.positions.items() if value not in ignored}
        file.masked = _cover(
            np.fromiter(
                (p for value, at in file.positions.items() if value in ignored for p in at), np.int64
            ),
            length,
        )
        file.positions = kept
        file.hashes = np.array(sorted(kept), dtype=np.int64)
        file.occurrence_hashes = np.array(
            [value for value in file.hashes.tolist() for _ in kept[value]], np.int64
        )
        file.occurrence_starts = np.array(
            [p for value in file.hashes.tolist() for p in kept[value]], np.int64
        )
        file.tokens = int(np.count_nonzero(_own(file, file.occurrence_starts)))
    document.hashes = frozenset().union(*(file.positions for file in document.files))
    document.tokens = sum(file.tokens for file in document.files)


def _cover(starts: np.ndarray, length: int) -> np.ndarray:
    """The filtered characters that k-grams starting at ``starts`` cover."""
    if not starts.size:
        return np.zeros(length, dtype=bool)
    # +1 where a k-gram starts, -1 where it ends: a character is covered where the running sum is positive.
    depth = np.bincount(starts, minlength=length + 1) - np.bincount(
        starts + NOISE_TOKENS, minlength=length + 1
    )
    return np.cumsum(depth[:length]) > 0


def _own(file: _File, starts: np.ndarray) -> np.ndarray:
    """The characters of the student's own code that k-grams starting at ``starts`` cover."""
    return _cover(starts, len(file.filtered.text)) & ~file.masked


def _shared_starts(file: _File, shared: np.ndarray) -> np.ndarray:
    """Where the k-grams of the file whose fingerprints are in ``shared`` (sorted) start."""
    index = np.searchsorted(shared, file.occurrence_hashes).clip(max=len(shared) - 1)
    return file.occurrence_starts[shared[index] == file.occurrence_hashes]


def _candidate_pairs(documents: list[_Document]) -> list[tuple[_Document, _Document]]:
    """Pairs of different students' documents sharing at least one fingerprint, earlier submission first.

    An inverted index finds them without looking at the pairs that share nothing, which are most of them once
    common code is ignored.
    """
    holders: dict[int, list[int]] = defaultdict(list)
    for number, document in enumerate(documents):
        for value in document.hashes:
            holders[value].append(number)
    pairs: set[tuple[int, int]] = set()
    for numbers in holders.values():
        pairs.update(combinations(numbers, 2))
    ordered = []
    for first, second in sorted(pairs):
        left, right = sorted((documents[first], documents[second]), key=_submission_order)
        if left.submission.user_id != right.submission.user_id:
            ordered.append((left, right))
    return ordered


def _submission_order(document: _Document) -> tuple[datetime, int]:
    return document.submission.submitted_at, document.submission.submission_id


def _match(left: _Document, right: _Document) -> _Match | None:
    matched_left: dict[int, np.ndarray] = {}
    matched_right: dict[int, np.ndarray] = {}
    file_pairs = []
    for left_number, left_file in enumerate(left.files):
        for right_number, right_file in enumerate(right.files):
            shared = np.intersect1d(left_file.hashes, right_file.hashes, assume_unique=True)
            if not shared.size:
                continue
            in_left = _own(left_file, _shared_starts(left_file, shared))
            in_right = _own(right_file, _shared_starts(right_file, shared))
            if not in_left.any() and not in_right.any():
                continue
            matched_left[left_number] = matched_left.get(left_number, False) | in_left
            matched_right[right_number] = matched_right.get(right_number, False) | in_right
            file_pairs.append((left_number, right_number, shared))
    if not file_pairs:
        return None
    return _Match(
        left,
        right,
        sum(int(np.count_nonzero(covered)) for covered in matched_left.values()),
        sum(int(np.count_nonzero(covered)) for covered in matched_right.values()),
        tuple(file_pairs),
    )


def _pair_out(rank: int, match: _Match) -> dict[str, Any]:
    regions = _regions(match)
    return {
        "rank": rank,
        "similarity": round(match.similarity, 4),
        "overlap_tokens": match.overlap_tokens,
        "a": _side_out(match.left, match.similarity_left, match.matched_left),
        "b": _side_out(match.right, match.similarity_right, match.matched_right),
        "regions_total": len(regions),
        "regions": regions[:MAX_REGIONS_PER_PAIR],
    }


def _side_out(document: _Document, similarity: float, matched: int) -> dict[str, Any]:
    submission = document.submission
    return {
        "submission_id": submission.submission_id,
        "user_id": submission.user_id,
        "student": submission.student,
        "submitted_at": submission.submitted_at.isoformat(),
        "similarity": round(similarity, 4),
        "matched_tokens": matched,
        "tokens": document.tokens,
    }


def _regions(match: _Match) -> list[dict[str, Any]]:
    """Matching regions, largest first: a stretch of one side's code and the stretch of the other it matches.

    Copied code shows up as a diagonal: consecutive k-grams of one file at a constant distance from their twins
    in the other (renaming, comments and whitespace do not break it; an inserted or reordered statement starts
    a new one). Along a diagonal both filtered texts are the same; each stretch of it that is own code on both
    sides is a region, and the few characters of own code a k-gram picks up at the edge of handout code
    (the ``)`` that ends the function before a handout signature) are too short to show.
    """
    regions: list[dict[str, Any]] = []
    for left_number, right_number, shared in match.file_pairs:
        left_file = match.left.files[left_number]
        right_file = match.right.files[right_number]
        twins = np.array(
            [
                (left_at, right_at)
                for value in shared.tolist()
                for left_at in left_file.positions[value][:_MAX_OCCURRENCES_PAIRED]
                for right_at in right_file.positions[value][:_MAX_OCCURRENCES_PAIRED]
            ],
            dtype=np.int64,
        )
        shifts = twins[:, 1] - twins[:, 0]
        order = np.lexsort((twins[:, 0], shifts))
        twins, shifts = twins[order], shifts[order]
        breaks = np.flatnonzero((np.diff(shifts) != 0) | (np.diff(twins[:, 0]) >= NOISE_TOKENS)) + 1
        for run in np.split(twins, breaks):
            start, end = int(run[0, 0]), int(run[-1, 0]) + NOISE_TOKENS
            shift = int(run[0, 1] - run[0, 0])
            own = ~left_file.masked[start:end] & ~right_file.masked[start + shift : end + shift]
            for first, last in _stretches(own):
                if last - first < MIN_REGION_TOKENS:
                    continue
                regions.append(
                    {
                        "tokens": last - first,
                        "a": _region_side(left_file, start + first, start + last),
                        "b": _region_side(right_file, start + shift + first, start + shift + last),
                    }
                )
    regions.sort(key=lambda region: (-region["tokens"], region["a"]["file"], region["a"]["start_line"]))
    return regions


def _stretches(flags: np.ndarray) -> list[tuple[int, int]]:
    """The ``[start, end)`` of each maximal stretch of true values."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return [(int(first), int(last)) for first, last in zip(edges[0::2], edges[1::2], strict=True)]


def _region_side(file: _File, start: int, end: int) -> dict[str, Any]:
    """Lines ``start_line..end_line`` (1-based, inclusive) of the source behind filtered code ``[start, end)``."""
    first = bisect.bisect_right(file.line_starts, file.filtered.starts[start])
    last = bisect.bisect_right(file.line_starts, file.filtered.ends[end - 1] - 1)
    lines = file.lines[first - 1 : last]
    shown = [
        line if len(line) <= SNIPPET_LINE_CHARS else line[: SNIPPET_LINE_CHARS - 1] + "…"
        for line in lines[:SNIPPET_LINES]
    ]
    return {
        "file": file.path,
        "start_line": first,
        "end_line": last,
        "snippet": "\n".join(shown),
        "snippet_truncated": len(lines) > SNIPPET_LINES or shown != lines[:SNIPPET_LINES],
    }
