"""Tokenizer speed: BPE training time on a few MB of generated text, and encoding throughput beside Hugging
Face's ``tokenizers`` (Rust) running the same vocabulary, merges and pre-tokenizer regex.

Encoding figures are MB of UTF-8 input per second, best of three runs. ``encode`` is timed on a fresh
tokenizer (empty pre-token cache, what a first pass over a dataset sees) and again warm; ``encode_iterable``
streams the text line by line. Hugging Face is timed on the whole text in one ``encode`` call (one thread) and
on the documents through ``encode_batch`` (all cores). Before timing, the two tokenizers' ids are compared.

    .venv/bin/python bench/tokenizer_speed.py [--megabytes 4] [--vocab-size 10000] [--processes N]

``run(report)`` does the same from another script, passing each output line to ``report``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reference_impl.data.synthetic_text import END_OF_TEXT, write_corpus  # noqa: E402
from reference_impl.tokenizer import Tokenizer, train_bpe  # noqa: E402
from tests.reference.hf_tokenizer import hf_tokenizer  # noqa: E402


def best_seconds(function: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def run(
    report: Callable[[str], None] = print,
    *,
    megabytes: float = 4.0,
    vocab_size: int = 10_000,
    num_processes: int | None = None,
) -> dict[str, float]:
    """Train, encode, compare; report one line per figure and return the figures by name."""
    with tempfile.TemporaryDirectory(prefix="tokenizer-bench-") as directory:
        path = write_corpus(Path(directory) / "corpus.txt", int(megabytes * 1_000_000))
        started = time.perf_counter()
        vocab, merges = train_bpe(path, vocab_size, [END_OF_TEXT], num_processes=num_processes)
        train_s = time.perf_counter() - started
        data = path.read_bytes()
    text = data.decode("utf-8")
    size_mb = len(data) / 1e6
    lines = text.splitlines(keepends=True)
    documents = text.split(END_OF_TEXT)

    hf = hf_tokenizer(vocab, merges, [END_OF_TEXT])
    ours = Tokenizer(vocab, merges, [END_OF_TEXT])
    if ours.encode(text) != hf.encode(text).ids:
        raise SystemExit("our ids differ from Hugging Face tokenizers' on the benchmark text")

    figures = {
        "corpus_mb": size_mb,
        "train_s": train_s,
        "encode_cold_mb_s": size_mb
        / best_seconds(lambda: Tokenizer(vocab, merges, [END_OF_TEXT]).encode(text)),
        "encode_warm_mb_s": size_mb / best_seconds(lambda: ours.encode(text)),
        "encode_iterable_mb_s": size_mb / best_seconds(lambda: sum(1 for _ in ours.encode_iterable(lines))),
        "hf_encode_mb_s": size_mb / best_seconds(lambda: hf.encode(text)),
        "hf_encode_batch_mb_s": size_mb / best_seconds(lambda: hf.encode_batch(documents)),
    }
    processes = num_processes or ("auto" if len(data) >= 1 << 20 else 1)
    report(f"corpus                       : {size_mb:.2f} MB generated text, {len(documents)} documents")
    report(
        f"train_bpe                    : {train_s:.2f} s for vocab {len(vocab)} ({len(merges)} merges), "
        f"processes {processes} of {os.cpu_count()} CPUs"
    )
    report(f"encode, fresh tokenizer      : {figures['encode_cold_mb_s']:.1f} MB/s")
    report(f"encode, warm cache           : {figures['encode_warm_mb_s']:.1f} MB/s")
    report(f"encode_iterable, by line     : {figures['encode_iterable_mb_s']:.1f} MB/s")
    report(f"HF tokenizers encode         : {figures['hf_encode_mb_s']:.1f} MB/s (one call, whole text)")
    report(
        f"HF tokenizers encode_batch   : {figures['hf_encode_batch_mb_s']:.1f} MB/s (per document, all cores)"
    )
    report(
        f"ratio ours fresh / HF encode : {figures['encode_cold_mb_s'] / figures['hf_encode_mb_s']:.2f}x, "
        f"/ HF encode_batch: {figures['encode_cold_mb_s'] / figures['hf_encode_batch_mb_s']:.2f}x"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=float, default=4.0, help="size of the generated training text")
    parser.add_argument("--vocab-size", type=int, default=10_000)
    parser.add_argument(
        "--processes", type=int, default=None, help="pre-tokenization workers (default: auto)"
    )
    args = parser.parse_args()
    run(megabytes=args.megabytes, vocab_size=args.vocab_size, num_processes=args.processes)


if __name__ == "__main__":
    main()
