"""Byte-level BPE: hand-checked training, round trips, special tokens, streaming, files, and parity with
Hugging Face's ``tokenizers`` and ``transformers`` on our own vocabulary and merges."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_impl.data.synthetic_text import END_OF_TEXT, generate_corpus, generate_documents
from reference_impl.tokenizer import (
    GPT2_PRETOKEN_PATTERN,
    Tokenizer,
    bytes_to_unicode,
    count_pretokens,
    find_chunk_boundaries,
    train_bpe,
)
from tests.reference.hf_tokenizer import hf_tokenizer

REPO = Path(__file__).resolve().parents[2]

# Pieces that stress the pre-tokenizer and the byte level: contractions, whitespace runs (with and without a
# following word), CRLF, non-breaking and ideographic spaces, combining marks, multi-code-point emoji, scripts
# of several widths in UTF-8, digits, punctuation runs, and fragments of the special token.
FRAGMENTS = [
    "'s",
    "'ll",
    "'",
    "l",
    "s",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    "\u00a0",
    "\u3000",
    "e\u0301",
    "\u0301",
    "🙂",
    "👩‍👩‍👧",
    "👍🏽",
    "Straße",
    "東京",
    "مرحبا",
    "123",
    "4",
    "!!",
    "?",
    "the",
    " cat",
    "<|",
    "|>",
    "endoftext",
    END_OF_TEXT,
]
tricky_text = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=40).map("".join)
HYPOTHESIS = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def corpus_text() -> str:
    return generate_corpus(300_000, seed=3)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    return write_text(tmp_path_factory.mktemp("corpus") / "corpus.txt", corpus_text)


@pytest.fixture(scope="module")
def trained(corpus_path: Path) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    return train_bpe(corpus_path, 1000, [END_OF_TEXT])


@pytest.fixture(scope="module")
def tokenizer(trained: tuple[dict[int, bytes], list[tuple[bytes, bytes]]]) -> Tokenizer:
    vocab, merges = trained
    return Tokenizer(vocab, merges, [END_OF_TEXT])


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("saved")
    tokenizer.to_files(directory / "vocab.json", directory / "merges.txt")
    return directory / "vocab.json", directory / "merges.txt"


@pytest.fixture(scope="module")
def hf(trained):
    return hf_tokenizer(*trained, [END_OF_TEXT])


# --- Training -------------------------------------------------------------------------------------------


def test_train_hand_checked_example(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "low.txt",
        "low low low low low lower lower widest widest widest newest newest newest newest newest newest",
    )
    # Pre-tokens: "low" 1, " low" 4, " lower" 2, " widest" 3, " newest" 6 (the space belongs to the word).
    # Pair counts: (e,s)=(s,t)=9, (w,e)=8, (l,o)=(o,w)=7, (' ',l)=(' ',n)=(n,e)=(e,w)=6, ...
    #  1. (s,t) 9 beats (e,s) 9 on ties: "s" > "e".         2. (e,st) 9.
    #  3. (o,w) 7 beats (l,o) 7: "o" > "l".                  4. (l,ow) 7.
    #  5. six-way tie at 6 among (' ',low), (' ',n), (n,e), (e,w), (w,est): "w" is the greatest first token.
    #  6. (n,e) 6 over (e,west) 6 and the two starting with " ".   7. (ne,west) 6 over (' ',ne) 6.
    #  8. (' ',newest) 6 over (' ',low) 6: "newest" > "low".        9. (' ',low) 6.
    # 10-13. " widest" (3 each): (w,i), (wi,d), (wid,est), then (' ',widest), always the greatest first token.
    # 14. (e,r) 2 over (' low',e) 2: "e" > " low".          15. (' low',er) 2. No pairs are left after that.
    expected = [
        (b"s", b"t"),
        (b"e", b"st"),
        (b"o", b"w"),
        (b"l", b"ow"),
        (b"w", b"est"),
        (b"n", b"e"),
        (b"ne", b"west"),
        (b" ", b"newest"),
        (b" ", b"low"),
        (b"w", b"i"),
        (b"wi", b"d"),
        (b"wid", b"est"),
        (b" ", b"widest"),
        (b"e", b"r"),
        (b" low", b"er"),
    ]
    vocab, merges = train_bpe(path, 256 + 1 + len(expected), [END_OF_TEXT])
    assert merges == expected
    assert vocab[257 + 14] == b" lower"


def test_train_ties_compare_left_token_first_and_prefix_sorts_lower(tmp_path: Path) -> None:
    # Words "abz" x2, "ay" x2, "ab" x1 (one per line). (a,b) 3 is merged first; then (ab,z) and (a,y) tie at 2.
    # As tuples (b"ab", b"z") > (b"a", b"y") because b"ab" > b"a"; comparing the concatenations ("abz" < "ay")
    # or letting a prefix sort higher would pick (a,y) instead.
    path = write_text(tmp_path / "ties.txt", "abz\nabz\nay\nay\nab")
    _, merges = train_bpe(path, 300, [])
    assert merges == [(b"a", b"b"), (b"ab", b"z"), (b"a", b"y")]


def naive_bpe_merges(text: str, special_token: str, num_merges: int) -> list[tuple[bytes, bytes]]:
    """BPE by definition: recount every pair of every word at every step, take the max of (count, pair)."""
    words: Counter[tuple[bytes, ...]] = Counter()
    for segment in text.split(special_token):
        for pretoken in regex.findall(GPT2_PRETOKEN_PATTERN, segment):
            words[tuple(bytes([b]) for b in pretoken.encode("utf-8"))] += 1
    merges = []
    for _ in range(num_merges):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def test_train_matches_naive_bpe(tmp_path: Path, corpus_text: str) -> None:
    text = corpus_text[:20_000] + "".join(FRAGMENTS) * 20 + "aaaa abab aaa " * 30
    path = write_text(tmp_path / "sample.txt", text)
    _, merges = train_bpe(path, 257 + 250, [END_OF_TEXT])
    assert merges == naive_bpe_merges(text, END_OF_TEXT, 250)


def test_train_vocab_layout_bytes_then_specials_then_merges(trained, corpus_path: Path) -> None:
    vocab, merges = trained
    assert len(vocab) == 1000
    assert [vocab[i] for i in range(256)] == [bytes([i]) for i in range(256)]
    assert vocab[256] == END_OF_TEXT.encode()
    assert [vocab[257 + k] for k in range(len(merges))] == [a + b for a, b in merges]


def test_train_never_merges_across_or_into_special_tokens(tmp_path: Path) -> None:
    # Were the special token counted as text, pairs like (<,|) would be the most frequent ones.
    path = write_text(tmp_path / "specials.txt", f"ab{END_OF_TEXT}" * 100)
    vocab, merges = train_bpe(path, 400, [END_OF_TEXT])
    assert merges == [(b"a", b"b")]
    assert len(vocab) == 258  # training stops once no pair is left


def test_train_is_deterministic_across_process_counts(corpus_path: Path) -> None:
    results = [train_bpe(corpus_path, 600, [END_OF_TEXT], num_processes=n) for n in (1, 2, 3)]
    assert results[0] == results[1] == results[2]
    assert len(results[0][1]) == 600 - 257


def _train_in_daemon(corpus: str, results: multiprocessing.Queue) -> None:
    results.put(train_bpe(corpus, 300, [END_OF_TEXT], num_processes=2)[1])


def test_train_inside_a_daemonic_process_counts_in_that_process(corpus_path: Path) -> None:
    """Celery's prefork children are daemonic and may not start a pool: training must still work there."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    worker = multiprocessing.Process(target=_train_in_daemon, args=(str(corpus_path), results), daemon=True)
    worker.start()
    merges = results.get(timeout=120)
    worker.join(timeout=30)
    assert worker.exitcode == 0
    assert merges == train_bpe(corpus_path, 300, [END_OF_TEXT], num_processes=1)[1]


def test_count_pretokens_without_special_tokens_reads_one_chunk(tmp_path: Path) -> None:
    # Without special tokens no cut is known to be safe, so the file stays whole whatever the process count.
    path = write_text(tmp_path / "plain.txt", "hello world, hello there\n" * 50)
    assert find_chunk_boundaries(path, 8, []) == [0, path.stat().st_size]
    counts = count_pretokens(path, [], num_processes=2)
    assert counts == count_pretokens(path, [], num_processes=1)
    assert counts["hello"] == counts[" hello"] == counts["\n"] == 50


def test_train_rejects_vocab_smaller_than_bytes_and_specials(corpus_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(corpus_path, 256, [END_OF_TEXT])


def test_chunk_boundaries_start_at_special_tokens(corpus_path: Path) -> None:
    boundaries = find_chunk_boundaries(corpus_path, 8, [END_OF_TEXT])
    data = corpus_path.read_bytes()
    assert boundaries[0] == 0
    assert boundaries[-1] == len(data)
    assert len(boundaries) > 3
    assert all(data.startswith(END_OF_TEXT.encode(), b) for b in boundaries[1:-1])


def test_chunk_boundary_skips_a_token_inside_a_longer_one(tmp_path: Path) -> None:
    # The guess for 2 chunks of 202 bytes is offset 101: the "<|a|>" there is the tail of "x<|a|>", so the cut
    # goes to the next free-standing "<|a|>".
    data = b"a" * 100 + b"x<|a|>" + b"b" * 40 + b"<|a|>" + b"c" * 51
    assert len(data) == 202
    path = tmp_path / "overlap.txt"
    path.write_bytes(data)
    assert find_chunk_boundaries(path, 2, ["<|a|>", "x<|a|>"]) == [0, 146, 202]


# --- Encoding and decoding ------------------------------------------------------------------------------


@HYPOTHESIS
@given(text=st.text() | tricky_text)
def test_decode_inverts_encode(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_token_is_one_id(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(f"the end{END_OF_TEXT}Once")
    assert ids.count(256) == 1
    assert tokenizer.encode(END_OF_TEXT) == [256]
    assert tokenizer.decode(ids) == f"the end{END_OF_TEXT}Once"


def test_special_token_text_is_ordinary_when_not_declared(trained) -> None:
    vocab, merges = trained
    plain = Tokenizer(vocab, merges)
    ids = plain.encode(END_OF_TEXT)
    assert 256 not in ids
    assert len(ids) > 1
    assert plain.decode(ids) == END_OF_TEXT


def test_partial_special_token_is_ordinary_text(tokenizer: Tokenizer) -> None:
    assert 256 not in tokenizer.encode("<|endoftext| <|endoftext")


def test_overlapping_special_tokens_longest_match_wins(trained) -> None:
    vocab, merges = trained
    single, double = "<|a|>", "<|a|><|a|>"
    for order in ([single, double], [double, single]):
        tokenizer = Tokenizer(vocab, merges, order)
        double_id, single_id = tokenizer.encode(double)[0], tokenizer.encode(single)[0]
        assert double_id != single_id
        assert tokenizer.encode(single * 3 + "x") == [double_id, single_id, *tokenizer.encode("x")]


def test_special_tokens_missing_from_vocab_are_appended(trained) -> None:
    vocab, merges = trained
    tokenizer = Tokenizer(vocab, merges, [END_OF_TEXT, "<|pad|>"])
    assert tokenizer.encode("<|pad|>") == [len(vocab)]
    assert tokenizer.vocab[len(vocab)] == b"<|pad|>"
    assert len(vocab) == 1000  # the caller's dictionary is left alone


def test_encode_applies_merges_by_rank_not_position() -> None:
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"bc", 257: b"ab"}
    assert Tokenizer(vocab, [(b"b", b"c"), (b"a", b"b")]).encode("abc") == [ord("a"), 256]
    assert Tokenizer(vocab, [(b"a", b"b"), (b"b", b"c")]).encode("abc") == [257, ord("c")]


def test_encode_merges_repeated_pair_left_to_right() -> None:
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"aa"}
    assert Tokenizer(vocab, [(b"a", b"a")]).encode("aaa") == [256, ord("a")]


def test_decode_replaces_invalid_utf8(tokenizer: Tokenizer) -> None:
    assert tokenizer.decode([0xFF]) == "\ufffd"
    assert tokenizer.decode([ord("a"), "é".encode()[0], ord("b")]) == "a\ufffdb"


def test_decode_rejects_unknown_ids(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="unknown token id 5000"):
        tokenizer.decode([5000])


def test_constructor_rejects_merge_outside_vocab() -> None:
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer(vocab, [(b"a", b"b")])


# --- Streaming ------------------------------------------------------------------------------------------


# Texts whose every cut point is tried: each has a place where a chunk boundary changes the pre-tokens or the
# special tokens unless the stream holds enough text back.
CUT_TEXTS = [
    "we'll see it's x'll",  # "'l" + "l": the pre-token before the last one still changes
    "a  b \n\n  c   ",  # whitespace runs split differently once a word follows
    f"a{END_OF_TEXT}{END_OF_TEXT}b{END_OF_TEXT}",  # the doubled special token needs all its characters
    "<|endoftext|<|endoftext|>",
    "12 345 ½ e\u0301\u0301 🙂👍🏽",
]


@pytest.fixture(scope="module")
def stream_tokenizer(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Tokenizer:
    """Two overlapping special tokens, and merges that make most pre-tokens of FRAGMENTS and CUT_TEXTS a single
    token, so that a pre-token cut in the wrong place changes the ids (with bytes alone it would not)."""
    extra = ("".join(FRAGMENTS) + " ".join(CUT_TEXTS) + " ".join(FRAGMENTS)) * 50
    path = write_text(tmp_path_factory.mktemp("stream") / "corpus.txt", corpus_text[:50_000] + extra)
    special_tokens = [END_OF_TEXT, END_OF_TEXT + END_OF_TEXT]
    return Tokenizer(*train_bpe(path, 1200, special_tokens), special_tokens)


@HYPOTHESIS
@given(text=tricky_text, data=st.data(), min_chunk_chars=st.sampled_from([1, 3, 16]))
def test_encode_iterable_equals_encode_for_any_chunking(
    stream_tokenizer: Tokenizer, text: str, data: st.DataObject, min_chunk_chars: int
) -> None:
    # Any cut may fall inside a pre-token, a contraction or a special token (or between two halves of the
    # doubled special token, which must still come out as one id).
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    chunks = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    tokenizer = stream_tokenizer
    streamed = list(tokenizer.encode_iterable(chunks, min_chunk_chars=min_chunk_chars))
    assert streamed == tokenizer.encode(text)


@pytest.mark.parametrize("with_special_tokens", [True, False])
@pytest.mark.parametrize("text", CUT_TEXTS)
def test_encode_iterable_equals_encode_at_every_cut(
    stream_tokenizer: Tokenizer, text: str, with_special_tokens: bool
) -> None:
    tokenizer = stream_tokenizer
    if not with_special_tokens:
        tokenizer = Tokenizer(tokenizer.vocab, tokenizer.merges)
    # While a special token could still be completing, the stream holds back its longest length in characters;
    # the padding moves every point of the text past that margin at some cut.
    text += " and that was the end of the story."
    expected = tokenizer.encode(text)
    for cut in range(len(text) + 1):
        assert list(tokenizer.encode_iterable([text[:cut], text[cut:]], min_chunk_chars=1)) == expected, cut


def test_encode_iterable_reads_a_file_line_by_line(tokenizer: Tokenizer, corpus_path: Path) -> None:
    with open(corpus_path, encoding="utf-8", newline="") as file:
        streamed = list(tokenizer.encode_iterable(file, min_chunk_chars=4096))
    assert streamed == tokenizer.encode(corpus_path.read_text(encoding="utf-8"))


def test_encode_iterable_is_lazy(tokenizer: Tokenizer) -> None:
    endless = itertools.cycle(["Once upon a time, ", "there was a cat.\n", END_OF_TEXT])
    first = list(itertools.islice(tokenizer.encode_iterable(endless, min_chunk_chars=64), 1000))
    assert len(first) == 1000


STREAM_CHECK = textwrap.dedent(
    """
    import itertools, json, resource, sys
    from reference_impl.data.synthetic_text import END_OF_TEXT, generate_documents
    from reference_impl.tokenizer import Tokenizer

    vocab_path, merges_path, text_path, order_path = sys.argv[1:]
    tokenizer = Tokenizer.from_files(vocab_path, merges_path, [END_OF_TEXT])
    (end_of_text,) = tokenizer.encode(END_OF_TEXT)
    documents = [tokenizer.encode(d) + [end_of_text] for d in generate_documents(200, seed=11)]
    with open(order_path) as file:
        order = json.load(file)
    expected = itertools.chain.from_iterable(documents[index] for index in order)

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = 0
    with open(text_path, encoding="utf-8", newline="") as file:
        streamed = tokenizer.encode_iterable(file)
        while True:
            got = list(itertools.islice(streamed, 1 << 16))
            want = list(itertools.islice(expected, 1 << 16))
            if got != want:
                sys.exit(f"the ids differ from the encoding of the documents after token {count}")
            if not got:
                break
            count += len(got)
    growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib
    print(json.dumps({"tokens": count, "peak_growth_mib": growth_kib / 1024}))
    """
)


@pytest.mark.slow
def test_encode_iterable_streams_50_mb_in_bounded_memory(
    tmp_path: Path, saved_files: tuple[Path, Path]
) -> None:
    # Documents drawn from a pool make the expected ids cheap to produce (each document is encoded once) while
    # the stream itself is 50 MB; the child process's peak RSS may grow by a fraction of that at most.
    documents = generate_documents(200, seed=11)
    rng = random.Random(5)
    order, size = [], 0
    text_path = tmp_path / "stream.txt"
    with open(text_path, "w", encoding="utf-8", newline="") as file:
        while size < 50_000_000:
            index = rng.randrange(len(documents))
            order.append(index)
            file.write(documents[index] + END_OF_TEXT)
            size += len(documents[index].encode()) + len(END_OF_TEXT)
    order_path = tmp_path / "order.json"
    order_path.write_text(json.dumps(order))

    result = subprocess.run(
        [sys.executable, "-c", STREAM_CHECK, *map(str, saved_files), str(text_path), str(order_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tokens"] > 5_000_000
    assert report["peak_growth_mib"] < 20


# --- Files and parity -----------------------------------------------------------------------------------


def test_bytes_to_unicode_is_gpt2s_table() -> None:
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert (table[ord(" ")], table[ord("\n")], table[ord("!")], table[0xFF]) == ("Ġ", "Ċ", "!", "ÿ")
    assert table[0] == "Ā"


def test_from_files_round_trips_to_files(tokenizer: Tokenizer, saved_files, corpus_text: str) -> None:
    vocab_path, merges_path = saved_files
    loaded = Tokenizer.from_files(vocab_path, merges_path, [END_OF_TEXT])
    assert loaded.vocab == tokenizer.vocab
    assert loaded.merges == tokenizer.merges
    assert loaded.encode(corpus_text[:20_000]) == tokenizer.encode(corpus_text[:20_000])
    assert merges_path.read_text(encoding="utf-8").startswith("#version: 0.2\n")
    assert json.loads(vocab_path.read_text(encoding="utf-8"))["Ġ"] == ord(" ")


SAMPLES = [
    "Hello, world! It's 2024 and we'll see   what they've got.\n\n",
    "I'm here; you're there.  Don't  'stop'  — 'LL and 'S are not contractions.",
    "    indented code:\n\tif x == 1:\n\t\treturn [x, y]\r\n",
    "naïve café Straße Ελλάδα Москва 東京 مرحبا नमस्ते e\u0301 🙂 👍🏽 👩‍👩‍👧",
    "numbers 1234567 3.14159 1,000,000 and ½ ²",
    f"end{END_OF_TEXT}start {END_OF_TEXT} {END_OF_TEXT}{END_OF_TEXT}<|endoftext",
    "trailing spaces   ",
    "\u00a0non-breaking\u00a0\u3000ideographic\u2003em space",
]


def test_encode_matches_hf_tokenizers(tokenizer: Tokenizer, hf, corpus_text: str) -> None:
    for text in [corpus_text[:100_000], *SAMPLES]:
        assert tokenizer.encode(text) == hf.encode(text).ids, text[:80]


@HYPOTHESIS
@given(text=st.text() | tricky_text)
def test_encode_matches_hf_tokenizers_on_random_text(tokenizer: Tokenizer, hf, text: str) -> None:
    assert tokenizer.encode(text) == hf.encode(text).ids


def test_saved_files_load_in_transformers_gpt2_tokenizer(
    tokenizer: Tokenizer, saved_files, corpus_text
) -> None:
    from transformers import GPT2Tokenizer

    hf = GPT2Tokenizer.from_pretrained(saved_files[0].parent)
    for text in [corpus_text[:50_000], *SAMPLES]:
        assert tokenizer.encode(text) == hf.encode(text), text[:80]
