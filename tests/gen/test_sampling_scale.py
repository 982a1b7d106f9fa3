"""Sampling at corpus scale: the cut is uniform in its window, the sample does not depend on the
order, the files or the processes it is read in, repeats are counted exactly, the streamed
readers read every format as the whole-file readers would, and memory does not grow with the
corpus."""

from __future__ import annotations

import json
import math
import pickle
import queue
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_gen import corpus, sampling
from data_gen.corpus import Document, SkipCounts, plan_units, unit_records
from data_gen.sampling import BottomK, cut_document, sample_corpus

ROOT = Path(__file__).resolve().parents[2]


def _bottom_k(docs: list[Document], n: int | None, seed: int) -> list[Document]:
    """The sample of documents held in memory, in key order."""
    sample = BottomK(n, seed)
    for doc in docs:
        sample.offer(doc)
    return sample.documents()


def _text(i: int, words: int = 30) -> str:
    return " ".join(f"w{i}x{j}" for j in range(words))


def _window(n: int, lo_frac: float, hi_frac: float) -> tuple[int, int]:
    """The cut window of `cut_document`, in words of the prompt (written out again here)."""
    lo = min(max(1, math.ceil(lo_frac * n)), n - 1)
    return lo, max(min(n - 1, math.floor(hi_frac * n)), lo)


# --- the cut ------------------------------------------------------------------------------------

# chi-square, 9 degrees of freedom: P(X > 27.877) = 0.001.
CHI2_9DF_999 = 27.877


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _cut_chi_square(docs: list[Document], cuts: list[int], lo_frac: float, hi_frac: float):
    """Chi-square of the cut positions over the deciles of each document's window, with the
    exact expected count of every decile (windows of m positions do not split into ten equal
    parts)."""
    observed, expected = [0] * 10, [0.0] * 10
    for doc, k in zip(docs, cuts, strict=True):
        lo, hi = _window(len(doc.text.split()), lo_frac, hi_frac)
        assert lo <= k <= hi
        m = hi - lo + 1
        observed[10 * (k - lo) // m] += 1
        for b in range(10):  # the positions i with 10 i // m == b: ceil(b m / 10) <= i
            expected[b] += (_ceil_div((b + 1) * m, 10) - _ceil_div(b * m, 10)) / m
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))


@pytest.mark.parametrize("lo_frac, hi_frac", [(0.25, 0.75), (0.1, 0.9)])
def test_the_cut_of_sampled_documents_is_uniform_over_the_window(lo_frac, hi_frac):
    rng = random.Random(0)
    corpus_docs = [Document(f"d{i}", _text(i, rng.randint(20, 200))) for i in range(10_000)]
    docs = _bottom_k(corpus_docs, 2000, seed=11)  # the kept ones: small sampling keys
    cuts = [len(cut_document(d, 11, lo_frac, hi_frac).prompt.split()) for d in docs]
    assert _cut_chi_square(docs, cuts, lo_frac, hi_frac) < CHI2_9DF_999
    # The test can fail: a cut always at the start of the window, or one drawn from the
    # sampling key (which is small for every kept document), is far outside.
    starts = [_window(len(d.text.split()), lo_frac, hi_frac)[0] for d in docs]
    assert _cut_chi_square(docs, starts, lo_frac, hi_frac) > 100 * CHI2_9DF_999
    from_key, key = [], BottomK(None, 11).key
    for d, lo in zip(docs, starts, strict=True):
        hi = _window(len(d.text.split()), lo_frac, hi_frac)[1]
        from_key.append(lo + ((key(d.id) * (hi - lo + 1)) >> 128))
    assert _cut_chi_square(docs, from_key, lo_frac, hi_frac) > 10 * CHI2_9DF_999


def _reference_cut(doc: Document, seed: int, lo_frac: float, hi_frac: float) -> tuple[str, str]:
    """The cut written plainly: every word as a regex match, the k-th one's end."""
    words = list(re.finditer(r"\S+", doc.text))
    lo, hi = _window(len(words), lo_frac, hi_frac)
    end = words[lo + sampling._cut_draw(doc.id, seed, hi - lo + 1) - 1].end()
    return doc.text[:end], doc.text[end:]


def test_the_cut_matches_a_plain_word_by_word_reference_on_odd_whitespace():
    rng = random.Random(1)
    spaces = [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x1c", "\xa0", "\u2028", "\u3000"]
    for i in range(300):
        words = [f"w{j}é" for j in range(rng.randint(2, 60))]
        text = rng.choice(["", " ", "\n"]) + "".join(w + rng.choice(spaces) for w in words)
        doc = Document(f"d{i}", text.rstrip() if i % 2 else text)
        for lo_frac, hi_frac in [(0.25, 0.75), (0.01, 0.99), (0.5, 0.5)]:
            ex = cut_document(doc, i, lo_frac, hi_frac)
            assert (ex.prompt, ex.reference) == _reference_cut(doc, i, lo_frac, hi_frac)


# --- order, files, processes --------------------------------------------------------------------


def _records(n: int) -> list[dict]:
    return [{"text": _text(i), "id": f"r{i}"} for i in range(n)]


_BAD_LINES = [b"{oops", json.dumps({"text": "too short"}).encode(), b'{"text": "caf\xe9 x"}']


def _write_one_file(folder: Path, records: list[dict]) -> Path:
    folder.mkdir()
    lines = [json.dumps(r).encode() for r in records] + _BAD_LINES
    (folder / "all.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return folder / "all.jsonl"


def _write_shuffled_and_split(folder: Path, records: list[dict], seed: int) -> Path:
    """The same records in another order, over every format and a sub-folder."""
    records = list(records)
    random.Random(seed).shuffle(records)
    parts = [records[i::5] for i in range(5)]
    (folder / "sub").mkdir(parents=True)
    lines = [json.dumps(r).encode() for r in parts[0]] + _BAD_LINES
    random.Random(seed).shuffle(lines)
    (folder / "z.jsonl").write_bytes(b"\r\n".join(lines))  # CRLF, no final newline
    (folder / "sub" / "a.jsonl").write_text("".join(json.dumps(r) + "\n\n" for r in parts[1]))
    (folder / "m.json").write_text(json.dumps(parts[2], indent=1))
    (folder / "sub" / "d.json").write_text(json.dumps({"data": parts[3]}))
    table = pa.Table.from_pylist(parts[4])
    pq.write_table(table, folder / "p.parquet", row_group_size=max(1, len(parts[4]) // 3))
    return folder


def _parallel(monkeypatch) -> list[int]:
    """Several units even for a small corpus, and processes for any size; the worker counts of
    the process reads made (a read that quietly stays in this process appends nothing)."""
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(sampling, "PARALLEL_MIN_BYTES", 0)
    real, workers = sampling._read_in_processes, []

    def counted(payloads, reading, n, tick):
        workers.append(n)
        return real(payloads, reading, n, tick)

    monkeypatch.setattr(sampling, "_read_in_processes", counted)
    return workers


def test_the_sample_is_the_same_for_a_shuffled_resplit_corpus_and_any_workers(
    tmp_path, monkeypatch
):
    records = _records(1500)
    one = _write_one_file(tmp_path / "one", records)
    kw = {"text_field": "text", "id_field": "id"}
    expected, skipped = sample_corpus(str(one), 100, 5, **kw)
    assert len(expected) == 100 and len({d.id for d in expected}) == 100
    assert skipped == {"invalid_json": 1, "too_short": 1, "invalid_utf8": 1}
    for seed in (1, 2):
        split = _write_shuffled_and_split(tmp_path / f"split{seed}", records, seed)
        assert sample_corpus(str(split), 100, 5, **kw) == (expected, skipped)
    assert sample_corpus(str(one), 100, 6, **kw)[0] != expected  # the seed matters
    # Read in 4 KiB ranges by two processes, the single file and the split folder agree.
    processes = _parallel(monkeypatch)
    assert len(plan_units(str(one))) > 10
    assert sample_corpus(str(one), 100, 5, workers=2, **kw) == (expected, skipped)
    split = tmp_path / "split1"
    assert sample_corpus(str(split), 100, 5, workers=3, **kw) == (expected, skipped)
    assert processes == [2, 3]
    # Without `--num-docs`: every document once, in the same (key) order.
    everything, _ = sample_corpus(str(split), None, 5, **kw)
    assert everything[:100] == expected and len(everything) == 1500


def test_a_record_repeated_across_files_is_sampled_once_and_counted_as_a_duplicate(
    tmp_path, monkeypatch
):
    records = [{"text": _text(i)} for i in range(400)]
    key = BottomK(20, 3).key
    by_key = sorted(records, key=lambda r: key(corpus.text_id(r["text"])))
    first, last = by_key[0], by_key[-1]  # surely sampled; surely not
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "b.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(last) + "\n")
    (folder / "c.json").write_text(json.dumps([first, first]))
    docs, skipped = sample_corpus(str(folder), 20, 3)
    ids = [d.id for d in docs]
    assert len(ids) == 20 == len(set(ids)) and corpus.text_id(first["text"]) in ids
    # The three extra copies of the sampled one; `last`'s copy is not sampled, not counted.
    assert skipped == {"duplicate": 3}
    processes = _parallel(monkeypatch)
    assert sample_corpus(str(folder), 20, 3, workers=2) == (docs, skipped)
    assert processes == [2]
    everything, skipped = sample_corpus(str(folder), None, 3)  # all sampled: all repeats count
    assert len(everything) == 400 and skipped == {"duplicate": 4}


def test_copies_with_one_id_and_two_texts_keep_the_same_text_in_any_order():
    a, b = Document("x", _text(1)), Document("x", _text(2))
    others = [Document(f"o{i}", _text(i + 10)) for i in range(30)]
    one = _bottom_k([a, *others, b], None, 0)
    assert one == _bottom_k([b, *others, a], None, 0)
    assert [d.text for d in one if d.id == "x"] == [min(a.text, b.text)]


# --- the streamed readers -----------------------------------------------------------------------


def _read(src: str, **kw) -> tuple[list[dict], SkipCounts]:
    skipped = SkipCounts()
    records = [r for unit in plan_units(src) for r in unit_records(unit, skipped, **kw)]
    return records, skipped


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1000, 10**6])
def test_jsonl_byte_ranges_read_every_line_exactly_once(tmp_path, monkeypatch, chunk):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": _text(i, i % 5), "n": i}).encode() for i in range(60)]
    deep = b"[" * 100_000 + b"]" * 100_000  # RecursionError in json: one invalid line
    lines[7:7] = [b"", b"  ", b"[1, 2]", b"{bad", b"\xff\xfe", deep]
    path.write_bytes(b"\n".join(lines) + b"\r\n")
    reference, ref_skipped = _read(str(path))
    assert [r["n"] for r in reference] == list(range(60))
    assert ref_skipped == {"invalid_json": 3, "invalid_utf8": 1}
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    units = plan_units(str(path))
    assert len(units) == math.ceil(path.stat().st_size / chunk)
    assert _read(str(path)) == (reference, ref_skipped)


def _json_files(tmp_path: Path) -> dict[str, tuple[bytes, list, dict]]:
    """name -> (content, the records json.loads finds, the skip counts)."""
    records = [{"text": _text(i, i % 7), "v": [i, {"k": 'a\\"]}'}]} for i in range(40)]
    array = json.dumps([*records[:20], 123456789, "s", None, *records[20:]], indent=2)
    return {
        "array": (array.encode(), records, {"invalid_json": 3}),
        "data": (json.dumps({"meta": {"x": [1]}, "data": records}).encode(), records, {}),
        "one": (json.dumps(records[0]).encode(), records[:1], {}),
        "empty_array": (b" [ ] ", [], {}),
        # Broken after the three scalars: what comes before the break is read.
        "broken": (array[: len(array) * 4 // 5].encode(), None, {"invalid_json": 4}),
        "extra": (array.encode() + b" [", records, {"invalid_json": 4}),
        "scalar": (b"12", [], {"invalid_json": 1}),
        "empty": (b"", [], {"invalid_json": 1}),
        "bad_utf8": (
            array.encode().replace(b"w30x", b"\xff30x"),
            records[:30],  # whatever the chunk size: the records before the bad byte
            {"invalid_json": 3, "invalid_utf8": 1},
        ),
        "data_not_list": (b'{"data": 3}', [], {"invalid_json": 1}),
    }


@pytest.mark.parametrize("read_bytes", [1, 5, 1 << 20])
def test_json_files_stream_element_by_element_like_json_loads(tmp_path, monkeypatch, read_bytes):
    monkeypatch.setattr(corpus, "_READ_BYTES", read_bytes)
    for name, (content, expected, counts) in _json_files(tmp_path).items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(content)
        records, skipped = _read(str(path))
        if expected is None:  # broken midway: the records before the break are kept
            whole = json.loads(_json_files(tmp_path)["array"][0])
            assert records == [r for r in whole if isinstance(r, dict)][: len(records)], name
        else:
            assert records == expected, name
        assert skipped == counts, name


def test_a_json_array_is_read_in_chunks_not_whole(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"text": _text(i)} for i in range(3000)]))  # ~800 KB
    monkeypatch.setattr(corpus, "_READ_BYTES", 4096)
    longest = []
    more = corpus._JsonReader._more

    def watched(self):
        longest.append(len(self.buf))
        return more(self)

    monkeypatch.setattr(corpus._JsonReader, "_more", watched)
    records, _ = _read(str(path))
    assert len(records) == 3000 and max(longest) < 3 * 4096


def test_parquet_is_read_in_batches_of_the_needed_columns(tmp_path):
    rows = [{"text": _text(i), "id": i, "blob": "x" * 100} for i in range(3000)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet", row_group_size=700)
    records, skipped = _read(str(tmp_path / "p.parquet"), id_field="id")
    assert records == [{"text": r["text"], "id": r["id"]} for r in rows] and not skipped
    pq.write_table(pa.Table.from_pylist([{"body": "a"}] * 5), tmp_path / "q.parquet")
    docs, skipped = sample_corpus(str(tmp_path / "q.parquet"), None, 0)
    assert docs == [] and skipped == {"missing_field": 5}


# --- hf: streaming shards -----------------------------------------------------------------------


def _local_hub(tmp_path: Path, monkeypatch) -> Path:
    """`hf:` offline: `load_dataset` gives a local streamed set of 4 files (built once: building
    one takes seconds); returns the folder of the same files."""
    import datasets

    records = _records(600)
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(4):
        part = "".join(json.dumps(r) + "\n" for r in records[i::4])
        (folder / f"part{i}.jsonl").write_text(part)
    files = sorted(str(p) for p in folder.iterdir())
    local_set = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: local_set)
    return folder


def test_an_hf_corpus_is_one_unit_per_streaming_shard_with_the_same_sample(tmp_path, monkeypatch):
    folder = _local_hub(tmp_path, monkeypatch)
    assert len(plan_units("hf:a/b")) == 4  # one unit per data file, each a picklable shard
    expected = sample_corpus(str(folder), 50, 9, id_field="id")
    assert sample_corpus("hf:a/b", 50, 9, id_field="id") == expected


@pytest.mark.slow  # each worker imports `datasets` to unpickle its shards (seconds)
def test_hf_shards_read_by_several_processes_give_the_same_sample(tmp_path, monkeypatch):
    folder = _local_hub(tmp_path, monkeypatch)
    expected = sample_corpus(str(folder), 50, 9, id_field="id")
    assert sample_corpus("hf:a/b", 50, 9, id_field="id", workers=2) == expected


class _FailingShard:
    """A streamed shard whose reading fails, as a lost connection would."""

    def __iter__(self):
        yield {"text": _text(1)}
        raise ConnectionError("the Hub went away")


def test_a_worker_error_is_raised_in_the_parent_naming_the_source():
    units = [corpus.Unit("hf", "a/b", dataset=[{"text": _text(0)}])]
    units.append(corpus.Unit("hf", "a/b", dataset=_FailingShard()))
    reading = sampling._Reading(5, 0, "text", None, 8)
    with pytest.raises(ValueError, match=r"`--corpus hf:a/b`: cannot load it \(the Hub went"):
        sampling._read_in_processes(sampling._pickled(units), reading, 2, lambda k: None)
    # A unit that cannot be sent to a process is read here instead (never dropped).
    units.append(corpus.Unit("hf", "a/b", dataset=(r for r in [{"text": _text(2)}])))
    assert sampling._pickled(units) is None


class _Worker:
    def __init__(self, exitcode: int | None = None) -> None:
        self.exitcode = exitcode


class _LateEvents:
    """A result queue whose first wait times out just before the workers' last message lands
    and they exit with code 0: the window between the parent's timeout and its exit-code check."""

    def __init__(self, procs: list[_Worker], event: tuple) -> None:
        self.procs, self.pending, self.waits = procs, [], 0
        self.event = event

    def get(self, timeout: float) -> tuple:
        self.waits += 1
        if self.waits == 1:  # the wait times out; then the message arrives, the workers exit
            self.pending.append(self.event)
            for p in self.procs:
                p.exitcode = 0
            raise queue.Empty
        if self.pending:
            return self.pending.pop()
        raise queue.Empty


def test_a_result_that_lands_as_the_wait_times_out_is_still_read(monkeypatch):
    monkeypatch.setattr(sampling, "_POLL_S", 0.01)
    procs = [_Worker(), _Worker()]
    events = _LateEvents(procs, ("done", "the sample"))
    assert sampling._next_event(events, procs) == ("done", "the sample")
    # Nothing left to read once all ended: the result never came, and that is raised.
    with pytest.raises(RuntimeError, match="ended with no sample sent"):
        sampling._next_event(events, procs)
    # A worker killed (out of memory) is named by its exit code, the others still running.
    with pytest.raises(RuntimeError, match="exited with code -9"):
        sampling._next_event(queue.Queue(), [_Worker(-9), _Worker()])


class _FirstWaitTimesOut:
    """A real result queue whose first wait is reported as timed out without reading."""

    def __init__(self, events) -> None:
        self.events, self.waits = events, 0

    def get(self, timeout: float):
        self.waits += 1
        if self.waits == 1:
            raise queue.Empty
        return self.events.get(timeout=timeout)


def test_a_worker_that_exited_has_its_result_in_the_pipe(monkeypatch):
    """What the drain relies on: a real worker that exited with code 0 flushed its sample into
    the queue's pipe before exiting, so the parent reads it after the exit."""
    import multiprocessing

    monkeypatch.setattr(sampling, "_POLL_S", 0.01)
    ctx = multiprocessing.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    tasks.put(None)  # no units: the worker sends its (empty) sample and exits
    reading = sampling._Reading(5, 0, "text", None, 8)
    proc = ctx.Process(target=sampling._worker, args=(tasks, events, reading), daemon=True)
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0
    kind, (sample, counts) = sampling._next_event(_FirstWaitTimesOut(events), [proc])
    assert kind == "done" and sample.documents() == [] and counts == {}
    tasks.close()
    events.close()


def test_an_unreadable_file_counts_once_however_many_ranges_fail(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(300)))
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": _text(1)}) + "\n")
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 1000)

    def unreadable(path, *args):
        if path.name == "a.jsonl":
            raise OSError("I/O error")
        yield from real(path, *args)

    real = corpus._jsonl_records
    monkeypatch.setattr(corpus, "_jsonl_records", unreadable)
    assert len(plan_units(str(tmp_path))) > 10
    docs, skipped = sample_corpus(str(tmp_path), None, 0)
    assert len(docs) == 1 and skipped == {"unreadable_file": 1}
    # Counted per reader, the counts of the workers merge to one per file.
    parts = [SkipCounts(), SkipCounts()]
    for part in parts:
        part.unreadable(tmp_path / "a.jsonl")
        part["empty"] += 1
    merged = SkipCounts()
    for part in parts:
        merged.merge(pickle.loads(pickle.dumps(part)))  # as a worker sends it
    assert merged == {"unreadable_file": 1, "empty": 2}


# --- memory -------------------------------------------------------------------------------------

_RSS_PROBE = textwrap.dedent(
    r"""
    import json, re, sys
    from pathlib import Path
    from data_gen.sampling import sample_corpus

    def peak_kib():  # VmHWM, this address space's peak RSS
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s*(\d+) kB", status).group(1))

    path, how = Path(sys.argv[1]), sys.argv[2]
    small = path.with_name("small.jsonl")
    sample_corpus(str(small), 20, 0)  # imports and first allocations, before the baseline
    before = peak_kib()
    if how == "whole":  # the control: what reading the file whole costs
        lines = path.read_bytes().splitlines()
    else:
        docs, skipped = sample_corpus(str(path), 2000, 0, workers=1)
        assert len(docs) == 2000 and not skipped, skipped
    print(json.dumps((peak_kib() - before) / 1024))  # MiB
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_memory_does_not_grow_with_a_corpus_100x_the_sample(tmp_path):
    """200,000 documents (65 MB), 2,000 sampled: the peak RSS grows by less than 100 MB. The
    control, the same file read whole as the previous reader did, grows by more: the probe can
    fail. (VmHWM, not `ru_maxrss`: a child's `ru_maxrss` starts at its parent's RSS at the fork,
    pytest's here, and would hide the growth.)"""
    pad = " ".join(["padding"] * 40)
    with (tmp_path / "big.jsonl").open("w") as f:
        for i in range(200_000):
            f.write(f'{{"text": "doc {i} {pad}"}}\n')
    (tmp_path / "small.jsonl").write_text(f'{{"text": "doc -1 {pad}"}}\n' * 3)

    def growth(how: str) -> float:
        argv = [sys.executable, "-c", _RSS_PROBE, str(tmp_path / "big.jsonl"), how]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    assert growth("stream") < 100
    assert growth("whole") > 100


# --- the benchmark ------------------------------------------------------------------------------


def test_bench_sample_rows(tmp_path):
    """The benchmark runs end to end on a small corpus, its baseline included when the git
    history holds it; one sample for any number of workers. (Speed is never asserted.)"""
    from benchmarks import bench_sample

    argv = ["--docs", "3000", "--num-docs", "50", "--workers", "1", "2", "--work", str(tmp_path)]
    argv += ["--chunk-bytes", "65536", "--no-write"]
    has_baseline = (
        subprocess.run(
            ["git", "cat-file", "-e", f"{bench_sample.BASELINE}^{{commit}}"],
            cwd=ROOT,
            capture_output=True,
        ).returncode
        == 0
    )
    rows = bench_sample.main(argv if has_baseline else [*argv, "--no-baseline"])
    ours = [r for r in rows if r["impl"] == "ours"]
    assert [r["workers"] for r in ours] == [1, 2] and len(rows) == 2 + has_baseline
    assert ours[0]["sample_digest"] == ours[1]["sample_digest"]
    assert ours[1]["worker_peak_mb"] > 0 == ours[0]["worker_peak_mb"]  # two processes, or none
    for r in rows:
        assert r["sampled"] == 50 and r["docs_per_s"] > 0
        assert r["peak_rss_mb"] >= r["parent_peak_mb"] > 0


# --- the setting --------------------------------------------------------------------------------


def test_sample_workers_is_operational_and_checked(tmp_path):
    from data_gen.config import GenConfig
    from data_gen.generate import config_fingerprint, generate

    with pytest.raises(ValueError, match="`--sample-workers` must be >= 1"):
        GenConfig(corpus="builtin", out=str(tmp_path / "o"), sample_workers=0)
    one = GenConfig(corpus="builtin", out=str(tmp_path / "o"), num_docs=3, sample_workers=1)
    two = GenConfig(corpus="builtin", out=str(tmp_path / "o"), num_docs=3, sample_workers=2)
    assert config_fingerprint(one) == config_fingerprint(two)  # it does not change the data
    assert generate(one, progress=False).done == 3
    assert generate(two, progress=False).already_done == 3  # resumes, not refused
