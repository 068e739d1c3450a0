"""End-to-end tests of the offline test Hub server (tests/hub_server.py) with the REAL huggingface_hub client, kept
to what finephrase relies on: whoami and tokens' roles, create_repo, commits (inline and LFS, additions and
deletions, a stale parent, faults and retries), branches, the tree and paths-info, downloads, the dataset card's
validation, and ``datasets.load_dataset`` of a Hub source.

No mocks: every call goes through huggingface_hub / datasets over HTTP to the local server.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

try:
    from hub_server import DEFAULT_USER, HubTestServer, hub_repo_id, hub_server  # noqa: F401
except ImportError:  # tests/ is a package
    from tests.hub_server import DEFAULT_USER, HubTestServer, hub_repo_id, hub_server  # noqa: F401

LARGE_SIZE = 11 * 1024 * 1024  # > 10 MiB => LFS even for a text file


# ----------------------------------------------------------------------------------------------------------------
# helpers / fixtures
# ----------------------------------------------------------------------------------------------------------------


def _api():
    from huggingface_hub import HfApi

    return HfApi()


def _write_parquet(path: Path, n: int = 100, offset: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(offset, offset + n)), "text": [f"row {i}" for i in range(offset, offset + n)]})
    pq.write_table(table, path)


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


@pytest.fixture(autouse=True)
def _no_internal_server_errors(hub_server):
    before = len(hub_server.stats()["internal_errors"])
    yield
    errors = hub_server.stats()["internal_errors"]
    assert len(errors) <= before, f"test hub server crashed: {errors}"


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory) -> Path:
    """Small text files (inline upload), a parquet file (LFS: *.parquet + binary), an 11 MiB text file
    (LFS: size), an empty file (always regular)."""
    root = tmp_path_factory.mktemp("sample")
    (root / "notes.txt").write_text("hello hub\n")
    (root / "meta").mkdir()
    (root / "meta" / "info.json").write_text(json.dumps({"a": 1, "b": [1, 2, 3]}) + "\n")
    (root / "meta" / "naïve name #1 (é).md").write_text("unicode & spaces in the path\n")
    (root / "empty.txt").write_bytes(b"")
    _write_parquet(root / "data" / "train-00000-of-00001.parquet")
    line = b"0123456789abcdefghijklmnopqrstuvwxyz " * 3 + b"\n"
    (root / "big").mkdir()
    (root / "big" / "large.txt").write_bytes((line * (LARGE_SIZE // len(line) + 1))[:LARGE_SIZE])
    return root


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    (root / "a.txt").write_text("a\n")
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_text("b\n")
    _write_parquet(root / "data" / "part-0.parquet", n=10)
    return root


# ----------------------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------------------


def test_whoami_create_repo_exist_ok(hub_server, hub_repo_id):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = _api()
    assert api.whoami()["name"] == DEFAULT_USER
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(token="not-a-valid-token").whoami()
    assert exc.value.response.status_code == 401

    url = api.create_repo(hub_repo_id, repo_type="dataset")
    assert url.repo_id == hub_repo_id and url.repo_type == "dataset"
    assert url.startswith(hub_server.url)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(hub_repo_id, repo_type="dataset")
    assert exc.value.response.status_code == 409
    assert api.create_repo(hub_repo_id, repo_type="dataset", exist_ok=True) == url

    assert api.repo_exists(hub_repo_id, repo_type="dataset")
    assert not api.repo_exists(hub_repo_id, repo_type="model")
    assert not api.repo_exists(f"{DEFAULT_USER}/does-not-exist", repo_type="dataset")
    # like on the Hub, a new repo has an initial commit with a .gitattributes
    assert api.list_repo_files(hub_repo_id, repo_type="dataset") == [".gitattributes"]
    info = api.dataset_info(hub_repo_id)
    refs = api.list_repo_refs(hub_repo_id, repo_type="dataset")
    assert [b.name for b in refs.branches] == ["main"] and refs.branches[0].target_commit == info.sha

    # repo without namespace => the user's namespace
    name = hub_repo_id.split("/")[1] + "-nons"
    assert api.create_repo(name, repo_type="dataset").repo_id == f"{DEFAULT_USER}/{name}"

    # private repo: invisible without a token
    private_id = hub_repo_id + "-private"
    api.create_repo(private_id, repo_type="dataset", private=True)
    assert api.dataset_info(private_id).private is True
    assert not HfApi(token=False).repo_exists(private_id, repo_type="dataset")


def test_upload_folder_inline_and_lfs_then_download(hub_server, hub_repo_id, sample_folder, tmp_path):
    from huggingface_hub import RepoFile, RepoFolder, hf_hub_download, snapshot_download

    api = _api()
    api.create_repo(hub_repo_id, repo_type="dataset")
    commit = api.upload_folder(folder_path=sample_folder, repo_id=hub_repo_id, repo_type="dataset")
    info = api.dataset_info(hub_repo_id, files_metadata=True)
    assert commit.oid == info.sha

    expected = sorted([".gitattributes", *_tree_bytes(sample_folder)])
    assert api.list_repo_files(hub_repo_id, repo_type="dataset") == expected

    # upload modes: parquet + >10MiB file went through LFS (batch + PUT), the rest inline in the commit
    stats = hub_server.repo_stats(hub_repo_id)
    assert stats["commits"] == 1 and stats["lfs_uploads"] == 2 and stats["lfs_bytes"] > LARGE_SIZE
    paths = ["notes.txt", "empty.txt", "meta/info.json", "data/train-00000-of-00001.parquet", "big/large.txt",
             "meta"]
    by_path = {p.path: p for p in api.get_paths_info(hub_repo_id, paths, repo_type="dataset")}
    assert isinstance(by_path["meta"], RepoFolder)
    assert by_path["notes.txt"].lfs is None and by_path["empty.txt"].lfs is None
    assert by_path["meta/info.json"].lfs is None
    assert by_path["data/train-00000-of-00001.parquet"].lfs is not None
    assert by_path["big/large.txt"].lfs is not None and by_path["big/large.txt"].size == LARGE_SIZE
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["big/large.txt"] == LARGE_SIZE and sizes["empty.txt"] == 0

    top = list(api.list_repo_tree(hub_repo_id, repo_type="dataset"))
    assert {e.path for e in top if isinstance(e, RepoFolder)} == {"big", "data", "meta"}
    assert all(isinstance(e, RepoFile) for e in api.list_repo_tree(hub_repo_id, "meta", repo_type="dataset"))

    # hf_hub_download into a fresh cache and into a local dir: byte-identical
    for rel, content in _tree_bytes(sample_folder).items():
        path = hf_hub_download(hub_repo_id, rel, repo_type="dataset", cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == content, rel
    local = hf_hub_download(hub_repo_id, "big/large.txt", repo_type="dataset", local_dir=tmp_path / "one")
    assert Path(local).read_bytes() == (sample_folder / "big" / "large.txt").read_bytes()

    # snapshot_download (cache + local_dir)
    snap = snapshot_download(hub_repo_id, repo_type="dataset", cache_dir=tmp_path / "cache2")
    assert _tree_bytes(Path(snap)) == {**_tree_bytes(sample_folder), ".gitattributes": _tree_bytes(Path(snap))[
        ".gitattributes"]}
    out = tmp_path / "snapshot"
    snapshot_download(hub_repo_id, repo_type="dataset", local_dir=out)
    got = _tree_bytes(out)
    assert got.pop(".gitattributes").startswith(b"*.7z filter=lfs")
    assert got == _tree_bytes(sample_folder)

    # downloads at an explicit commit sha work too
    path = hf_hub_download(hub_repo_id, "notes.txt", repo_type="dataset", revision=commit.oid,
                           cache_dir=tmp_path / "cache3")
    assert Path(path).read_text() == "hello hub\n"


CARD = """---
license: mit
pretty_name: Test dataset
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.parquet
---

# Test dataset

Some text.
"""


def test_dataset_card_push_load_and_validate(hub_server, hub_repo_id, tmp_path):
    from huggingface_hub import DatasetCard, DatasetCardData

    api = _api()
    api.create_repo(hub_repo_id, repo_type="dataset")
    card = DatasetCard(CARD)
    card.validate()  # goes through POST /api/validate-yaml (Accept: text/plain)
    card.push_to_hub(hub_repo_id)
    loaded = DatasetCard.load(hub_repo_id)
    assert str(loaded) == str(card)
    assert loaded.data.configs == [{"config_name": "default", "data_files": [{"split": "train",
                                                                              "path": "data/*.parquet"}]}]
    assert loaded.data.license == "mit"
    assert api.dataset_info(hub_repo_id).card_data.pretty_name == "Test dataset"

    # a card built from card data round-trips too
    data = DatasetCardData(license="apache-2.0", configs=[{"config_name": "x", "data_files": "x/*.parquet"}])
    card2 = DatasetCard.from_template(data, pretty_name="Two")
    card2.push_to_hub(hub_repo_id, commit_message="card 2")
    assert DatasetCard.load(hub_repo_id).data.configs == [{"config_name": "x", "data_files": "x/*.parquet"}]
    commits_before = hub_server.repo_stats(hub_repo_id)["commits"]
    assert commits_before == 2

    bad_cards = {
        "missing data_files": "---\nconfigs:\n- config_name: default\n---\n# x\n",
        "missing config_name": "---\nconfigs:\n- data_files: data/*.parquet\n---\n# x\n",
        "duplicate config_name": "---\nconfigs:\n- config_name: a\n  data_files: a.csv\n"
                                 "- config_name: a\n  data_files: b.csv\n---\n",
        "unparsable yaml": "---\nlicense: [mit\nconfigs: {\n---\n# x\n",
        "configs not a list": "---\nconfigs: nope\n---\n",
    }
    for why, text in bad_cards.items():
        if why != "unparsable yaml":  # DatasetCard() itself refuses to parse that one client-side
            with pytest.raises(ValueError):
                DatasetCard(text).validate()
        with pytest.raises(ValueError, match="Invalid metadata"):  # HfApi._validate_yaml (JSON flavour)
            api.upload_file(path_or_fileobj=text.encode(), path_in_repo="README.md", repo_id=hub_repo_id,
                            repo_type="dataset")
    with pytest.raises(ValueError, match="data_files"):
        DatasetCard(bad_cards["missing data_files"]).push_to_hub(hub_repo_id)
    assert hub_server.repo_stats(hub_repo_id)["commits"] == commits_before

    # the server also rejects an invalid README.md at commit time (like the Hub's pre-receive hook)
    head = api.dataset_info(hub_repo_id).sha
    ndjson = b"\n".join(json.dumps(x).encode() for x in [
        {"key": "header", "value": {"summary": "bad card"}},
        {"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                  "content": base64.b64encode(bad_cards["missing data_files"].encode()).decode()}},
    ])
    req = urllib.request.Request(f"{hub_server.url}/api/datasets/{hub_repo_id}/commit/main", data=ndjson,
                                 method="POST", headers={"Content-Type": "application/x-ndjson",
                                                         "Authorization": f"Bearer {hub_server.token}"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req)
    assert exc.value.code == 400 and b"data_files" in exc.value.read()
    assert api.dataset_info(hub_repo_id).sha == head


def test_upload_to_branch(hub_server, hub_repo_id, small_folder, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    api = _api()
    api.create_repo(hub_repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"main only\n", path_in_repo="main.txt", repo_id=hub_repo_id,
                    repo_type="dataset")
    # like on the Hub, the branch must exist before committing to it
    with pytest.raises(RevisionNotFoundError):
        api.upload_folder(folder_path=small_folder, repo_id=hub_repo_id, repo_type="dataset", revision="dev")

    for branch in ("dev", "feature/x"):
        api.create_branch(hub_repo_id, branch=branch, repo_type="dataset")
        api.upload_folder(folder_path=small_folder, repo_id=hub_repo_id, repo_type="dataset", revision=branch,
                          path_in_repo=f"on-{branch.replace('/', '-')}")
        files = api.list_repo_files(hub_repo_id, repo_type="dataset", revision=branch)
        assert "main.txt" in files and f"on-{branch.replace('/', '-')}/a.txt" in files
        path = hf_hub_download(hub_repo_id, f"on-{branch.replace('/', '-')}/sub/b.txt", repo_type="dataset",
                               revision=branch, cache_dir=tmp_path / "cache")
        assert Path(path).read_text() == "b\n"
    assert api.list_repo_files(hub_repo_id, repo_type="dataset") == [".gitattributes", "main.txt"]

    with pytest.raises(HfHubHTTPError) as exc:
        api.create_branch(hub_repo_id, branch="dev", repo_type="dataset")
    assert exc.value.response.status_code == 409
    api.create_branch(hub_repo_id, branch="dev", repo_type="dataset", exist_ok=True)
    refs = api.list_repo_refs(hub_repo_id, repo_type="dataset")
    assert sorted(b.name for b in refs.branches) == ["dev", "feature/x", "main"]
    assert api.revision_exists(hub_repo_id, "dev", repo_type="dataset")
    assert not api.revision_exists(hub_repo_id, "nope", repo_type="dataset")



def test_commit_faults_then_retry_without_duplicates(hub_server, hub_repo_id, sample_folder):
    from huggingface_hub.errors import HfHubHTTPError

    api = _api()
    api.create_repo(hub_repo_id, repo_type="dataset")
    expected = sorted([".gitattributes", *_tree_bytes(sample_folder)])

    # 1. next commit answers 503: upload_folder (single commit, no retry on /commit) fails, nothing committed
    hub_server.add_fault("commit", 503, count=1, repo=hub_repo_id)
    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_folder(folder_path=sample_folder, repo_id=hub_repo_id, repo_type="dataset")
    assert exc.value.response.status_code == 503
    stats = hub_server.repo_stats(hub_repo_id)
    assert stats["commits"] == 0 and stats["lfs_uploads"] == 2  # LFS objects were uploaded before the commit
    assert api.list_repo_files(hub_repo_id, repo_type="dataset") == [".gitattributes"]

    # 2. retry: LFS objects are already there (batch returns no actions), one commit, no duplicates
    api.upload_folder(folder_path=sample_folder, repo_id=hub_repo_id, repo_type="dataset")
    stats = hub_server.repo_stats(hub_repo_id)
    assert stats["commits"] == 1 and stats["lfs_uploads"] == 2 and stats["history_length"] == 2
    files = api.list_repo_files(hub_repo_id, repo_type="dataset")
    assert files == expected and len(files) == len(set(files))

    # 3. transient 429 on preupload and 503 on the LFS PUT are retried by the client (http_backoff)
    (sample_folder_2 := sample_folder.parent / (sample_folder.name + "-v2")).mkdir(exist_ok=True)
    _write_parquet(sample_folder_2 / "data" / "train-00001-of-00001.parquet", n=50, offset=100)
    hub_server.add_fault("preupload", 429, count=1, repo=hub_repo_id, headers={"Retry-After": "0"})
    hub_server.add_fault("lfs_upload", 503, count=1, repo=hub_repo_id)
    api.upload_folder(folder_path=sample_folder_2, repo_id=hub_repo_id, repo_type="dataset")
    routes = hub_server.stats()["routes"]
    assert routes["preupload"]["by_status"]["429"] >= 1 and routes["lfs_upload"]["by_status"]["503"] >= 1
    assert hub_server.repo_stats(hub_repo_id)["commits"] == 2

    # 4. 412 (e.g. concurrent commit) is surfaced; a real stale parent_commit gives 412 too
    hub_server.add_fault("commit", 412, count=1, repo=hub_repo_id)
    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id=hub_repo_id, repo_type="dataset")
    assert exc.value.response.status_code == 412
    first = api.list_repo_commits(hub_repo_id, repo_type="dataset")[-1].commit_id
    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id=hub_repo_id, repo_type="dataset",
                        parent_commit=first)
    assert exc.value.response.status_code == 412

    # 5. "lost response": the commit is applied but the client sees a 503; re-running is a no-op
    hub_server.add_fault("commit", 503, count=1, repo=hub_repo_id, when="after")
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"y\n", path_in_repo="y.txt", repo_id=hub_repo_id, repo_type="dataset")
    assert hub_server.repo_stats(hub_repo_id)["commits"] == 3
    api.upload_file(path_or_fileobj=b"y\n", path_in_repo="y.txt", repo_id=hub_repo_id, repo_type="dataset")
    assert hub_server.repo_stats(hub_repo_id)["commits"] == 3
    files = api.list_repo_files(hub_repo_id, repo_type="dataset")
    assert files.count("y.txt") == 1 and "x.txt" not in files
    assert hub_server.faults() == []


def test_load_dataset_straight_from_server(hub_server, hub_repo_id, tmp_path):
    """`datasets` resolves hf:// paths through HfFileSystem (tree, paths-info, resolve with Range)."""
    import datasets

    api = _api()
    api.create_repo(hub_repo_id, repo_type="dataset")
    src = tmp_path / "src"
    _write_parquet(src / "data" / "train-00000-of-00001.parquet", n=40)
    (src / "README.md").write_text(CARD)
    api.upload_folder(folder_path=src, repo_id=hub_repo_id, repo_type="dataset")
    ds = datasets.load_dataset(hub_repo_id, split="train", cache_dir=str(tmp_path / "ds_cache"))
    assert ds.num_rows == 40 and ds[0] == {"id": 0, "text": "row 0"}


def test_tree_pagination_and_lfs_multipart(hub_server, hub_repo_id, tmp_path):
    from huggingface_hub import CommitOperationAdd, RepoFile, hf_hub_download

    api = _api()
    api.create_repo(hub_repo_id, repo_type="dataset")
    ops = [CommitOperationAdd(f"dir{i % 3}/file{i}.txt", f"content {i}\n".encode()) for i in range(10)]
    api.create_commit(hub_repo_id, ops, commit_message="many files", repo_type="dataset")
    blob = os.urandom(2 * 1024 * 1024 + 123)
    try:
        hub_server.set_config(tree_page_size=3, lfs_multipart_threshold=1024 * 1024,
                              lfs_multipart_chunk_size=1024 * 1024)
        n_tree = hub_server.stats()["routes"].get("tree", {}).get("count", 0)
        entries = list(api.list_repo_tree(hub_repo_id, repo_type="dataset", recursive=True))
        assert sorted(e.path for e in entries if isinstance(e, RepoFile)) == sorted(
            [".gitattributes"] + [op.path_in_repo for op in ops])
        assert hub_server.stats()["routes"]["tree"]["count"] - n_tree == 5  # 14 entries / 3 per page
        expanded = list(api.list_repo_tree(hub_repo_id, "dir0", repo_type="dataset", expand=True))
        assert all(e.last_commit is not None and e.last_commit.title == "many files" for e in expanded)

        api.upload_file(path_or_fileobj=blob, path_in_repo="blob.bin", repo_id=hub_repo_id, repo_type="dataset")
    finally:
        hub_server.reset(repos=False)
    assert hub_server.repo_stats(hub_repo_id).get("commits", 0) == 0  # stats were reset
    path = hf_hub_download(hub_repo_id, "blob.bin", repo_type="dataset", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == blob
    log = hub_server.requests_log()
    assert any(r["route"] == "resolve" for r in log)


def test_tokens_roles_and_namespaces(tmp_path):
    """Permissions as on the Hub: an unknown token -> 401, a read token -> 403 on writes (and whoami says "read"),
    a namespace the token may not write to -> 403, someone else's private repo -> 404 RepoNotFound."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    tokens = {"hf_alice": "alice", "hf_alice_read": "alice", "hf_bob": "bob"}
    with HubTestServer(tmp_path / "root", known_tokens=tokens, token_roles={"hf_alice_read": "read"},
                       allowed_namespaces=[], orgs=[]) as server:
        alice, reader, bob = (HfApi(endpoint=server.url, token=t) for t in ("hf_alice", "hf_alice_read", "hf_bob"))
        assert alice.whoami()["auth"]["accessToken"]["role"] == "write"
        assert reader.whoami()["auth"]["accessToken"]["role"] == "read"
        with pytest.raises(HfHubHTTPError) as exc:
            HfApi(endpoint=server.url, token="hf_nobody").whoami()
        assert exc.value.response.status_code == 401

        alice.create_repo("alice/private", repo_type="dataset", private=True)
        alice.create_repo("alice/public", repo_type="dataset")
        with pytest.raises(HfHubHTTPError) as exc:  # a read token cannot create, even in its own namespace
            reader.create_repo("alice/other", repo_type="dataset")
        assert exc.value.response.status_code == 403
        with pytest.raises(HfHubHTTPError) as exc:  # nor commit
            reader.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/public", repo_type="dataset")
        assert exc.value.response.status_code == 403
        assert reader.dataset_info("alice/private").private is True  # but it reads

        with pytest.raises(HfHubHTTPError) as exc:  # bob may not write to alice's namespace
            bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/public", repo_type="dataset")
        assert exc.value.response.status_code == 403
        assert bob.dataset_info("alice/public").id == "alice/public"
        with pytest.raises(RepositoryNotFoundError):  # alice's private repo does not exist for bob
            bob.dataset_info("alice/private")
        # create_repo(exist_ok=True) in a namespace one may not write: huggingface_hub checks that the repo exists
        assert bob.create_repo("alice/public", repo_type="dataset", exist_ok=True).repo_id == "alice/public"
        with pytest.raises(HfHubHTTPError) as exc:
            bob.create_repo("alice/new", repo_type="dataset", exist_ok=True)
        assert exc.value.response.status_code == 403
