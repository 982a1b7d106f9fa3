"""The run-folder persistence module: atomic writes, the JSONL cache, the dataset-folder contract
and the configuration fingerprint."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from data_gen import store


def test_atomic_writes_round_trip_and_leave_no_temp(tmp_path):
    store.write_json_atomic(tmp_path / "a.json", {"é": [1]})
    store.write_text_atomic(tmp_path / "b.md", "# title\n")
    store.write_bytes_atomic(tmp_path / "c.bin", b"\x00\x01")
    table = pa.table({"id": ["x", "y"]})
    store.write_table_atomic(tmp_path / "d.arrow", table)
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "é": [\n    1\n  ]\n}\n'
    assert (tmp_path / "b.md").read_text() == "# title\n"
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    with pa.OSFile(str(tmp_path / "d.arrow"), "rb") as f:  # the IPC stream format
        assert pa.ipc.open_stream(f).read_all().equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.md", "c.bin", "d.arrow"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    store.write_json_atomic(path, {"v": 1})

    def unserialisable(*args, **kwargs):
        raise TypeError("boom")

    with monkeypatch.context() as m:
        m.setattr(store.json, "dumps", unserialisable)
        with pytest.raises(TypeError):
            store.write_json_atomic(path, {"v": 2})

    def killed(src, dst):  # the content is written, the rename never happens
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(store.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            store.write_json_atomic(path, {"v": 3})
        with pytest.raises(KeyboardInterrupt):
            store.write_table_atomic(tmp_path / "t.arrow", pa.table({"id": ["a"]}))
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_jsonl_cache_reads_around_a_torn_line_and_append_ends_it(tmp_path):
    cache = store.JsonlCache(tmp_path / "cache.jsonl")
    assert cache.read() == []
    with cache.open_for_append() as out:
        out.append({"k": 1})
        out.append({"k": 2})
    with cache.path.open("a") as f:  # a kill in the middle of the third line
        f.write('{"k": ')
    assert cache.read() == [{"k": 1}, {"k": 2}]
    with cache.open_for_append() as out:
        out.append({"k": 3})
    assert cache.read() == [{"k": 1}, {"k": 2}, {"k": 3}]
    assert cache.path.read_text().splitlines()[2] == '{"k": '  # ended, not glued to the next


def test_parse_jsonl_skips_what_is_not_an_object():
    assert store.parse_jsonl('{"a": 1}\n\n[1]\nnot json\n{"b": 2}') == [{"a": 1}, {"b": 2}]


def test_read_jsonl_records_names_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    # a raw U+2028 inside a JSON string is valid JSON and no line end
    path.write_text('{"a": 1}\n\n  \n{"b": "x\u2028y"}\n', encoding="utf-8")
    got = list(store.read_jsonl_records(path, what="`--in`"))
    assert got == [(f"`--in` {path}:1", {"a": 1}), (f"`--in` {path}:4", {"b": "x\u2028y"})]
    bad = {
        b'{"a": 1}\n[1]\n': "in.jsonl:2: a record must be a JSON object, not list",
        b'{"a": 1}\n\n{"a": \n': "in.jsonl:3: not valid JSON (Expecting value)",
        b"[" * 100_000: "in.jsonl:1: not valid JSON (nested too deeply)",
        b'{"a": 1}\n{"b": "\xff"}\n': "in.jsonl:2: not UTF-8 text (invalid start byte)",
    }
    for data, message in bad.items():
        path.write_bytes(data)
        with pytest.raises(ValueError) as err:
            list(store.read_jsonl_records(path, what="`--in`"))
        assert str(err.value) == f"`--in` {tmp_path / message}"
    with pytest.raises(ValueError, match=r"^`--in` '.*gone.jsonl' does not exist$"):
        next(store.read_jsonl_records(tmp_path / "gone.jsonl", what="`--in`"))


def _write_shard(path, table, *, stream=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as f, new(f, table.schema) as w:
        w.write_table(table)


def test_dataset_folder_reads_every_arrow_shard_in_either_format(tmp_path):
    rows = {"id": ["a"], "prompt": ["p"], "completion": ["c"]}
    _write_shard(tmp_path / "shards" / "part-00000.arrow", pa.table(rows))
    _write_shard(tmp_path / "shards" / "other.arrow", pa.table(rows | {"id": ["b"]}), stream=False)
    (tmp_path / "shards" / ".part-00001.arrow.tmp").write_bytes(b"half a shard")
    assert [p.name for p in store.check_dataset_dir(tmp_path)] == [
        "other.arrow",
        "part-00000.arrow",
    ]
    table = store.read_dataset(tmp_path, ["id", "completion"])
    assert table.column_names == ["id", "completion"] and table["id"].to_pylist() == ["b", "a"]
    assert store.read_dataset(tmp_path / "none").schema == store.SCHEMA


def test_dataset_folder_errors_name_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`--data` .*nope does not exist"):
        store.check_dataset_dir(tmp_path / "nope", what="`--data`")
    with pytest.raises(ValueError, match=r"`data.dir` .* holds no shards/\*\.arrow"):
        store.check_dataset_dir(tmp_path, what="`data.dir`")
    _write_shard(tmp_path / "shards" / "part-00000.arrow", pa.table({"id": ["a"]}))
    with pytest.raises(ValueError, match=r"DIR .*: shards lack column\(s\) \['completion'"):
        store.check_dataset_dir(tmp_path, what="DIR")
    (tmp_path / "shards" / "part-00000.arrow").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="part-00000.arrow is not an Arrow IPC file"):
        store.check_dataset_dir(tmp_path)


def test_fingerprint_drops_operational_keys_at_any_depth():
    config = {"seed": 1, "concurrency": 4, "teacher": {"model": "m", "concurrency": 8}}
    assert store.fingerprint(config, {"concurrency"}) == {"seed": 1, "teacher": {"model": "m"}}
    assert config["teacher"]["concurrency"] == 8  # the input is left alone


def test_config_diff_names_nested_paths():
    old = {"seed": 0, "teacher": {"model": "a", "rpm": None}, "gone": 1}
    new = {"seed": 0, "teacher": {"model": "b", "rpm": None, "temperature": 0.5}}
    assert store.config_diff(old, new) == ["gone", "teacher.model", "teacher.temperature"]
    assert store.config_diff(old, old) == []
    assert store.config_diff(1, 2) == ["value"]
    assert store.config_value(new, "teacher.model") == "b"
    assert store.config_value(old, "teacher.temperature") is None


def test_nif_gen_resume_ignores_operational_settings_and_names_the_rest(tmp_path):
    from data_gen.config import OPERATIONAL, GenConfig
    from data_gen.generate import check_resume

    cfg = GenConfig(corpus="builtin", out=str(tmp_path), num_docs=4)
    manifest = cfg.public_dict()
    manifest["teacher"] |= {"model": "a", "concurrency": 99, "base_urls": ["http://x"]}
    manifest |= {"out": "elsewhere", "shard_rows": 7, "flush_seconds": 1.0}
    (tmp_path / "manifest.json").write_text(json.dumps({"config": manifest}))
    assert {"out", "shard_rows", "flush_seconds", "concurrency", "base_urls"} <= OPERATIONAL
    cfg.teacher.model = "a"
    check_resume(tmp_path, cfg)  # only operational settings differ
    cfg.teacher.model = "b"
    with pytest.raises(ValueError, match=r"different configuration \(teacher.model: 'a' -> 'b'\)"):
        check_resume(tmp_path, cfg)


def test_the_directory_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(store.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    store.write_text_atomic(tmp_path / "x", "1")
    assert len(synced) == 2  # the file, then the folder holding the rename
