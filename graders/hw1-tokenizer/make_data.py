"""Write the handout's training corpus and the merges the reference learns on it.

    .venv/bin/python graders/hw1-tokenizer/make_data.py

``handout/data/corpus.txt`` is synthetic text from reference_impl.data.synthetic_text (made-up words, no
third-party text), documents joined by ``<|endoftext|>``. ``handout/data/corpus_merges.json`` holds what
reference_impl.tokenizer.train_bpe learns on it, byte strings written as hex, so students can check their
train_bpe on the full corpus without the reference. The output is the same on every run; the package's self-test
checks that the shipped files are exactly what this script writes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
sys.path.insert(0, str(PACKAGE.parents[1]))  # the repository root, for reference_impl

from reference_impl.data import synthetic_text  # noqa: E402 (after the path set-up)
from reference_impl.tokenizer import train_bpe  # noqa: E402

DATA = PACKAGE / "handout" / "data"
CORPUS_CHARS = 300_000
CORPUS_SEED = 2027
VOCAB_SIZE = 500
SPECIAL_TOKENS = [synthetic_text.END_OF_TEXT]


def corpus_text() -> str:
    return synthetic_text.generate_corpus(CORPUS_CHARS, seed=CORPUS_SEED)


def merges_document(text: str) -> str:
    """The JSON the handout ships: the training settings and the merges as pairs of hex strings."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "corpus.txt"
        path.write_bytes(text.encode("utf-8"))
        _, merges = train_bpe(path, VOCAB_SIZE, SPECIAL_TOKENS, num_processes=1)
    settings = json.dumps({"vocab_size": VOCAB_SIZE, "special_tokens": SPECIAL_TOKENS})
    pairs = ",\n".join(json.dumps([left.hex(), right.hex()]) for left, right in merges)
    return f'{settings[:-1]}, "merges": [\n{pairs}\n]}}\n'  # one merge per line


def main() -> None:
    text = corpus_text()
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "corpus.txt").write_bytes(text.encode("utf-8"))
    (DATA / "corpus_merges.json").write_text(merges_document(text), encoding="utf-8")


if __name__ == "__main__":
    main()
