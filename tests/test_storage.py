"""Storage layer: filesystem helper, content keys, and the idempotent shard store (local and moto S3)."""

import os
import threading
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.storage import content_key, exclusive_write, filesystem, make_key, stat_many
from pipeline.io.shards import ShardStore, shard_id_for


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket; returns (bucket name, storage_options)."""
    opts = {"endpoint_url": s3_endpoint}
    fs, _ = filesystem("s3://x", opts)
    name = f"t-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return name, opts


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])  # s3: moto's server
def store_root(request, tmp_path):
    """(root uri, storage_options) on a local tmp dir or on the moto S3 endpoint."""
    if request.param == "local":
        return str(tmp_path / "out"), None
    bucket, opts = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs/r1", opts


def _table(keys, score=0.0):
    return pa.table({"video_id": [f"v{k}" for k in keys], "score": [float(score)] * len(keys)})


# ---- filesystem ----------------------------------------------------------------------------------


def test_filesystem_local_and_s3_options(tmp_path, s3_bucket):
    fs, path = filesystem(str(tmp_path / "a.txt"))
    assert path == str(tmp_path / "a.txt") and fs.protocol[0] == "file"
    bucket, opts = s3_bucket
    fs, path = filesystem(f"s3://{bucket}/p/a.txt", {**opts, "key": "testing", "secret": "testing", "region": "us-east-1"})
    assert path == f"{bucket}/p/a.txt"
    fs.pipe_file(path, b"hi")
    # same options -> the cached instance, not a new client per call
    fs2, _ = filesystem(f"s3://{bucket}/other", {**opts, "key": "testing", "secret": "testing", "region": "us-east-1"})
    assert fs2 is fs
    assert fs.cat_file(path) == b"hi"


def test_filesystem_endpoint_from_standard_env(s3_bucket, monkeypatch):
    bucket, opts = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", opts["endpoint_url"])
    fs, path = filesystem(f"s3://{bucket}/env.txt", {"skip_instance_cache": True})
    fs.pipe_file(path, b"env")
    fs2, _ = filesystem(f"s3://{bucket}/env.txt", opts)
    assert fs2.cat_file(path) == b"env"


# ---- content keys --------------------------------------------------------------------------------


def test_content_key_local_changes_with_file(tmp_path):
    p = tmp_path / "v.mp4"
    p.write_bytes(b"aaaa")
    k1 = content_key(str(p))
    assert content_key(str(p)) == k1  # stable
    st = os.stat(p)
    p.write_bytes(b"bbbb")  # same size, different bytes
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    k2 = content_key(str(p))
    assert k2 != k1
    p.write_bytes(b"bbbbb")  # different size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even with the same mtime
    assert content_key(str(p)) not in (k1, k2)


def test_content_key_s3_changes_on_reupload(s3_bucket):
    bucket, opts = s3_bucket
    uri = f"s3://{bucket}/videos/a.mp4"
    fs, path = filesystem(uri, opts)
    fs.pipe_file(path, b"first")
    k1 = content_key(uri, storage_options=opts)
    assert content_key(uri, storage_options=opts) == k1
    assert content_key(uri, fs.info(path), storage_options=opts) == k1  # from an info dict, no request
    fs.pipe_file(path, b"other")  # same size, new bytes
    k2 = content_key(uri, storage_options=opts)
    assert k2 != k1 and "etag=" in k2 and "size=5" in k2


def test_stat_many_local_and_s3(tmp_path, s3_bucket):
    bucket, opts = s3_bucket
    fs, _ = filesystem(f"s3://{bucket}", opts)
    s3_uris = []
    for i in range(5):
        fs.pipe_file(f"{bucket}/many/{i}.mp4", b"x" * (i + 1))
        s3_uris.append(f"s3://{bucket}/many/{i}.mp4")
    fs.pipe_file(f"{bucket}/few/a.mp4", b"abc")
    (tmp_path / "l.mp4").write_bytes(b"local")
    uris = s3_uris + [f"s3://{bucket}/few/a.mp4", f"s3://{bucket}/many/missing.mp4", f"s3://{bucket}/few/missing.mp4",
                      str(tmp_path / "l.mp4"), str(tmp_path / "missing.mp4")]
    got = stat_many(uris, opts, list_threshold=3)  # 'many' listed once, 'few' by HEAD
    assert list(got) == uris
    for i, u in enumerate(s3_uris):
        assert got[u].size == i + 1
        assert got[u].content_key == content_key(u, storage_options=opts)
    assert got[f"s3://{bucket}/few/a.mp4"].content_key == content_key(f"s3://{bucket}/few/a.mp4", storage_options=opts)
    assert got[str(tmp_path / "l.mp4")].size == 5
    assert got[f"s3://{bucket}/many/missing.mp4"] is None
    assert got[f"s3://{bucket}/few/missing.mp4"] is None
    assert got[str(tmp_path / "missing.mp4")] is None


def test_keys_are_deterministic():
    assert shard_id_for(["b", "a"]) == shard_id_for(["a", "b"]) != shard_id_for(["a"])
    assert make_key("s3://b/v.mp4", "etag=1", "m1") == make_key("s3://b/v.mp4", "etag=1", "m1")
    assert make_key("ab", "c") != make_key("a", "bc")


# ---- shard store ---------------------------------------------------------------------------------


def test_commit_and_committed_keys(store_root):
    root, opts = store_root
    st = ShardStore(root, opts)
    assert st.committed_keys() == set() and st.read_table().num_rows == 0
    keys = ["k1", "k2", "k3"]
    r = st.commit(shard_id_for(keys), _table(keys), keys)
    assert r.created and r.num_rows == 3
    # a fresh store object (e.g. a resumed run) sees it
    st2 = ShardStore(root, opts)
    assert st2.committed_keys() == set(keys)
    t = st2.read_table()
    assert t.column("key").to_pylist() == keys
    assert t.column("video_id").to_pylist() == ["vk1", "vk2", "vk3"]
    assert st2.read_table(columns=["score"]).column_names == ["score"]
    m = st2.manifests()[0]
    assert m["num_rows"] == 3 and m["keys"] == keys and m["file"].startswith("data/") and "created" in m


def test_read_table_newest_shards_only(store_root):
    root, opts = store_root
    st = ShardStore(root, opts)
    for keys in (["a1", "a2"], ["b1"], ["c1", "c2"]):  # committed in this order
        st.commit(None, _table(keys), keys)
    assert st.read_table(newest=2).column("key").to_pylist() == ["b1", "c1", "c2"]
    assert st.read_table(newest=1).column("key").to_pylist() == ["c1", "c2"]
    assert st.read_table(newest=10).num_rows == st.read_table().num_rows == 5


def test_recommit_is_idempotent_and_id_reuse_is_an_error(store_root):
    root, opts = store_root
    keys = ["a", "b"]
    assert ShardStore(root, opts).commit(None, _table(keys), keys).created
    again = ShardStore(root, opts).commit(None, _table(keys[::-1]), keys[::-1])
    assert not again.created
    st = ShardStore(root, opts)
    assert st.read_table().num_rows == 2 and st.orphans() == []
    with pytest.raises(ValueError, match="already committed with other keys"):
        st.commit(shard_id_for(keys), _table(["a", "c"]), ["a", "c"])
    with pytest.raises(ValueError, match="2 keys for 1 rows"):
        st.commit("x", _table(["a"]), ["a", "b"])


def test_orphan_data_files_are_ignored(store_root):
    root, opts = store_root
    st = ShardStore(root, opts)
    st.commit(None, _table(["a"]), ["a"])
    # a killed run: full data file without a manifest, and a truncated one
    fs, base = filesystem(root, opts)
    buf = pa.BufferOutputStream()
    pq.write_table(_table(["a", "z"]).append_column("key", pa.array(["a", "z"])), buf)
    fs.pipe_file(f"{base}/data/deadbeef.000000000000.parquet", buf.getvalue().to_pybytes())
    fs.pipe_file(f"{base}/data/cafe.111111111111.parquet", b"PAR1 half")
    t = ShardStore(root, opts).read_table()
    assert t.column("key").to_pylist() == ["a"]
    assert st.committed_keys() == {"a"}
    orphans = st.orphans()
    assert orphans == ["data/cafe.111111111111.parquet", "data/deadbeef.000000000000.parquet"]
    assert st.gc_orphans(min_age_s=3600) == []  # too young: could be a commit in flight
    assert st.gc_orphans(min_age_s=0) == orphans
    assert st.orphans() == [] and st.read_table().num_rows == 1


def test_resume_after_crash_before_manifest(store_root, monkeypatch):
    root, opts = store_root
    keys = ["v1", "v2"]
    st = ShardStore(root, opts)
    import pipeline.io.shards as shards

    def killed(*a, **k):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(shards, "exclusive_write", killed)
    with pytest.raises(KeyboardInterrupt):
        st.commit(None, _table(keys), keys)
    monkeypatch.undo()
    st = ShardStore(root, opts)
    assert st.committed_keys() == set() and st.read_table().num_rows == 0 and len(st.orphans()) == 1
    r = st.commit(None, _table(keys), keys)  # the re-run recomputes the same shard id
    assert r.created and r.shard_id == shard_id_for(keys)
    assert st.read_table().column("key").to_pylist() == keys


def test_same_key_in_two_shards_keeps_the_newest(store_root):
    root, opts = store_root
    st = ShardStore(root, opts)
    st.commit(None, _table(["a", "b"], score=1.0), ["a", "b"])
    st.commit(None, _table(["b", "c"], score=2.0), ["b", "c"])  # e.g. a forced re-score of b
    t = ShardStore(root, opts).read_table()
    assert t.column("key").to_pylist() == ["a", "b", "c"]
    assert t.column("score").to_pylist() == [1.0, 2.0, 2.0]


def test_exclusive_create_race(store_root):
    root, opts = store_root
    fs, base = filesystem(root, opts)
    path = f"{base}/_manifests/race.json"
    barrier = threading.Barrier(2)
    outcomes = []

    def writer(tag):
        barrier.wait()
        try:
            exclusive_write(fs, path, tag.encode())
            outcomes.append(("won", tag))
        except FileExistsError:
            outcomes.append(("lost", tag))

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("A", "B")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    won = [t for o, t in outcomes if o == "won"]
    assert len(won) == 1 and len(outcomes) == 2
    assert fs.cat_file(path) == won[0].encode()
    with pytest.raises(FileExistsError):
        exclusive_write(fs, path, b"late")


def test_s3_xb_is_checked_at_commit_time(s3_bucket):
    """Both handles open before either uploads: the second upload is refused by the server (412)."""
    bucket, opts = s3_bucket
    fs, _ = filesystem(f"s3://{bucket}", opts)
    f1 = fs.open(f"{bucket}/m.json", "xb")
    f2 = fs.open(f"{bucket}/m.json", "xb")
    f1.write(b"one")
    f2.write(b"two")
    f1.close()
    with pytest.raises(FileExistsError):
        f2.close()
    assert fs.cat_file(f"{bucket}/m.json") == b"one"


def test_concurrent_commit_of_one_shard(store_root):
    root, opts = store_root
    keys = [f"k{i}" for i in range(4)]
    barrier = threading.Barrier(2)
    results = []

    def run():
        st = ShardStore(root, opts)
        barrier.wait()
        results.append(st.commit(None, _table(keys), keys))

    threads = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(r.created for r in results) == [False, True]
    st = ShardStore(root, opts)
    assert st.read_table().num_rows == 4
    assert st.orphans() == []  # the loser removed its data file


def test_losing_the_manifest_race_is_a_clean_no_op(store_root):
    """The loser passed the 'already committed?' check, then finds the manifest taken at publish time."""
    root, opts = store_root
    keys = ["p", "q"]
    winner, loser = ShardStore(root, opts), ShardStore(root, opts)
    real = loser._load_manifest
    calls = []

    def stale_then_real(shard_id):
        calls.append(shard_id)
        if len(calls) == 1:
            winner.commit(None, _table(keys, 1.0), keys)  # the other writer publishes right now
            return None
        return real(shard_id)

    loser._load_manifest = stale_then_real
    r = loser.commit(None, _table(keys, 2.0), keys)
    assert not r.created and len(calls) == 2
    st = ShardStore(root, opts)
    assert st.read_table().column("score").to_pylist() == [1.0, 1.0]
    assert st.orphans() == []


def test_stat_many_over_http_never_trusts_a_folder_listing(tmp_path, http_catalog):
    """A CDN folder answers 404 (or 403, or an HTML page): each of many files gets its own HEAD and a
    version from Last-Modified and size; one the server sends no version for gets an error, not None."""
    for i in range(20):
        (tmp_path / f"v{i}.mp4").write_bytes(b"x" * (100 + i))
    url = http_catalog  # serves tmp_path
    uris = [f"{url}/v{i}.mp4" for i in range(20)] + [f"{url}/noversion/v0.mp4", f"{url}/gone.mp4"]
    stats = stat_many(uris, list_threshold=16)
    for i in range(20):
        s = stats[f"{url}/v{i}.mp4"]
        assert s.size == 100 + i and s.error is None and s.content_key.startswith("obj:mtime=")
    assert stats[f"{url}/gone.mp4"] is None
    bad = stats[f"{url}/noversion/v0.mp4"]
    assert bad.content_key == "" and "cannot identify a version" in bad.error
