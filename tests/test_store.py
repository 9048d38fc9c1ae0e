"""Store: a local folder, file:// and s3:// (moto_server on loopback), with atomic publishing."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

import ils.store as store_mod
from ils.config import StoreConfig
from ils.store import TMP_PREFIX, Store, StoreError


@pytest.fixture(params=["local", "file", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(str(tmp_path / "run"))
    if request.param == "file":
        return Store(f"file://{tmp_path}/run")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return Store.from_config(StoreConfig(uri=f"s3://{bucket}/run", endpoint=endpoint))


def test_bytes_and_text_round_trip(store):
    assert store.write_bytes("a/b.bin", b"\x00\x01payload") == store.path("a/b.bin")
    assert store.read_bytes("a/b.bin") == b"\x00\x01payload"
    store.write_text("notes/readme.txt", "lungs: dark\n")
    assert store.read_text("notes/readme.txt") == "lungs: dark\n"
    assert store.size("a/b.bin") == 9 and store.is_file("a/b.bin") and not store.is_file("a")
    store.write_bytes("a/b.bin", b"new")  # overwrite
    assert store.read_bytes("a/b.bin") == b"new"
    with pytest.raises(StoreError, match="larger than"):
        store.read_bytes("notes/readme.txt", max_bytes=4)


def test_parquet_round_trip(store):
    t1 = pa.table({"study_id": ["s1", "s2"], "n": pa.array([1, 2], pa.int32())})
    t2 = pa.table({"study_id": ["s3"], "n": pa.array([3], pa.int32())})
    store.write_parquet("tables/part-0.parquet", t1)
    store.write_parquet("tables/part-1.parquet", t2)
    assert store.read_parquet("tables/part-0.parquet").equals(t1)
    both = store.read_parquet("tables")  # a folder: every Parquet file, in sorted order
    assert both.column("study_id").to_pylist() == ["s1", "s2", "s3"]
    assert store.read_parquet("tables", columns=["n"]).column_names == ["n"]
    assert sum(b.num_rows for b in store.iter_parquet("tables")) == 3
    with pytest.raises(StoreError, match="no Parquet data"):
        store.read_parquet("nothing-here")


def test_png_round_trip(store):
    mask = np.zeros((32, 48), dtype=np.uint8)
    mask[4:12, 5:20] = 255
    store.write_png("masks/m.png", mask)
    np.testing.assert_array_equal(store.read_png("masks/m.png"), mask)
    img16 = np.arange(32 * 16, dtype=np.uint16).reshape(32, 16) * 100
    store.write_png("img16.png", img16)
    np.testing.assert_array_equal(store.read_png("img16.png").astype(np.uint16), img16)
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    store.write_png("rgb.png", rgb)
    np.testing.assert_array_equal(store.read_png("rgb.png"), rgb)


def test_list_exists_delete_child_relative(store):
    for rel in ("b/2.txt", "a/1.txt", "a/sub/3.txt", "a/x.parquet"):
        store.write_text(rel, rel)
    assert store.list() == ["a/1.txt", "a/sub/3.txt", "a/x.parquet", "b/2.txt"]
    assert store.list("a", recursive=False) == ["a/1.txt", "a/x.parquet"]
    assert store.list("a", suffix=".txt") == ["a/1.txt", "a/sub/3.txt"]
    assert store.list("missing") == []
    assert store.exists("a/1.txt") and store.exists("a") and not store.exists("zzz")
    child = store.child("a")
    assert child.read_text("sub/3.txt") == "a/sub/3.txt"
    assert child.list() == ["1.txt", "sub/3.txt", "x.parquet"]
    assert store.relative(store.uri("a/sub/3.txt")) == "a/sub/3.txt"
    assert store.relative(child.root_uri) == "a"
    with pytest.raises(StoreError, match="not under"):
        child.relative(store.uri("b/2.txt"))
    store.delete("a/1.txt")
    assert not store.exists("a/1.txt")
    store.delete("a")
    assert store.list() == ["b/2.txt"]
    store.delete("never-there")  # deleting a missing path is a no-op


def test_full_uri_reads_on_the_same_file_system(store):
    store.write_bytes("x/y.bin", b"abc")
    assert store.read_bytes(store.uri("x/y.bin")) == b"abc"


def test_failed_write_leaves_nothing_visible(store, monkeypatch):
    store.write_parquet("t/keep.parquet", pa.table({"a": [1]}))

    def half_then_fail(table, where, **kw):
        where.write(b"PAR1 half a parquet file")
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(store_mod.pq, "write_table", half_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        store.write_parquet("t/new.parquet", pa.table({"a": [2]}))
    with pytest.raises(RuntimeError, match="simulated"):
        store.write_parquet("t/keep.parquet", pa.table({"a": [3]}))
    monkeypatch.undo()
    assert not store.exists("t/new.parquet")
    assert store.list("t") == ["t/keep.parquet"]
    assert store.read_parquet("t/keep.parquet").column("a").to_pylist() == [1]  # old content intact
    if not store.is_s3:  # and no temporary file is left behind on disk either
        import os

        assert not [n for n in os.listdir(store.path("t")) if n.startswith(TMP_PREFIX)]


def test_list_hides_temporary_files(tmp_path):
    store = Store(str(tmp_path))
    store.write_text("d/real.txt", "x")
    (tmp_path / "d" / f"{TMP_PREFIX}abc-real.txt").write_text("half")
    assert store.list() == ["d/real.txt"]


def test_pickling_keeps_root_and_s3_options(store):
    store.write_text("p.txt", "shipped")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.root_uri == store.root_uri and clone.is_s3 == store.is_s3
    assert clone.read_text("p.txt") == "shipped"
    if store.is_s3:
        assert clone._s3.endpoint == store._s3.endpoint


def test_errors_are_clear(store):
    with pytest.raises(StoreError, match="cannot read"):
        store.read_bytes("missing.bin")
    with pytest.raises(StoreError, match="not a file"):
        store.size("missing.bin")
    with pytest.raises(StoreError, match="unsupported store URI scheme"):
        Store("ftp://example.invalid/x")
    with pytest.raises(StoreError):
        store.read_bytes("gs://bucket/key")


def test_s3_and_local_do_not_mix(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    s3 = Store.from_config(StoreConfig(uri=f"s3://{bucket}/run", endpoint=endpoint))
    assert s3.is_s3 and s3.root_uri == f"s3://{bucket}/run" and repr(s3) == f"Store('s3://{bucket}/run')"
    with pytest.raises(StoreError, match="not on this store's file system"):
        s3.read_bytes(str(tmp_path / "x"))
    s3.write_text("k.txt", "v")
    other = Store(str(tmp_path)).child(f"s3://{bucket}/run")  # an absolute URI switches file system
    assert other.is_s3 is True


def test_dot_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    """`ils sample --out ./phantoms` means ./phantoms in the shell's folder, not in the store."""
    monkeypatch.chdir(tmp_path)
    store = Store(str(tmp_path / "store"))
    store.write_text("./here/a.txt", "x")
    store.write_text("there/b.txt", "y")
    assert (tmp_path / "here" / "a.txt").read_text() == "x"
    assert (tmp_path / "store" / "there" / "b.txt").read_text() == "y"
