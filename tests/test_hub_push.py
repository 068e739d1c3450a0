"""Publishing an output folder with the real huggingface_hub client against the offline test Hub
(tests/hub_server.py): push -> `hf download` -> `datasets.load_dataset` gives back exactly the local rows;
re-push is a no-op; an interrupted push resumes; a second run replaces its configs and keeps the others;
branches (created when missing); --private; the token never shows up anywhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from hub_server import hub_repo_id, hub_server  # noqa: F401  (pytest fixtures)
from test_card import local_rows, make_output

from finephrase.plan import recipe_prompts

SECRET = "hf_FinephraseSecretTok3nXYZ0123456789"
REPO_TYPE = "dataset"


def hf_download(server, repo_id: str, dest: Path, revision: str | None = None, token: str | None = None) -> Path:
    cmd = [str(Path(sys.executable).parent / "hf"), "download", repo_id,
           "--repo-type", "dataset", "--local-dir", str(dest)]
    if revision:
        cmd += ["--revision", revision]
    proc = subprocess.run(cmd, env=server.client_env(token=token, hf_home=dest.parent / f"{dest.name}-hf-home"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dest


def load_config(folder: Path, config: str) -> list[dict]:
    from datasets import load_dataset

    ds = load_dataset(str(folder), config, split="train")
    return sorted(ds.to_list(), key=lambda r: r["id"])


def remote_files(repo_id: str, revision: str | None = None) -> list[str]:
    from huggingface_hub import HfApi

    return sorted(HfApi().list_repo_files(repo_id, repo_type=REPO_TYPE, revision=revision))


def expected_files(output: Path) -> list[str]:
    files = [p.relative_to(output).as_posix() for p in (output / "data").rglob("*.parquet")]
    files += [p.relative_to(output).as_posix() for p in (output / "prompts").rglob("*.yaml")]
    files += ["report.html"] if (output / "report.html").exists() else []
    return sorted(files + ["README.md", "recipe.yaml", ".gitattributes"])


@pytest.fixture
def fast_retries(monkeypatch):
    from finephrase import hub

    monkeypatch.setattr(hub, "RETRY_BASE_S", 0.01)
    monkeypatch.setattr(hub, "MAX_RETRIES", 2)


def test_push_download_load_roundtrip_and_noop_repush(tmp_path, hub_server, hub_repo_id, monkeypatch, capsys, caplog):  # noqa: F811
    from huggingface_hub import DatasetCard
    from loguru import logger

    from finephrase.hub import push_output

    monkeypatch.setenv("HF_TOKEN", SECRET)  # read by huggingface_hub at each call
    logs: list[str] = []
    sink = logger.add(lambda m: logs.append(str(m)), level="DEBUG")
    caplog.set_level("DEBUG")
    try:
        out = make_output(tmp_path / "out", files_per_config=2)
        url = push_output(str(out), hub_repo_id)
        assert url.endswith(f"/datasets/{hub_repo_id}")
        # prompts were written into the output, .finephrase/ was not published
        assert (out / "prompts" / "finephrase" / "faq.yaml").exists()
        files = remote_files(hub_repo_id)
        assert files == expected_files(out)
        assert not any(f.startswith(".finephrase") for f in files)
        stats = hub_server.repo_stats(hub_repo_id)
        commits, lfs_uploads = stats["commits"], stats["lfs_uploads"]
        assert lfs_uploads == 7  # 3 prompts x 2 files + mix

        # hf download into a fresh folder -> load_dataset on every config gives back the local rows
        dest = hf_download(hub_server, hub_repo_id, tmp_path / "dl", token=SECRET)
        card = DatasetCard.load(dest / "README.md")
        card.validate(repo_type="dataset")
        names = [c["config_name"] for c in card.data.configs]
        assert names == ["all", "faq", "table", "math", "mix"]
        assert f'load_dataset("{hub_repo_id}", "faq"' in card.content
        for name in names:
            want = sorted((r for c in ("faq", "table", "math") for r in local_rows(out, c)), key=lambda r: r["id"]) \
                if name == "all" else local_rows(out, name)
            assert load_config(dest, name) == want, name

        # the same output again: nothing sent, no commit
        push_output(str(out), hub_repo_id)
        after = hub_server.repo_stats(hub_repo_id)
        assert after["commits"] == commits and after.get("commit_attempts") == stats.get("commit_attempts")
        assert after["lfs_uploads"] == lfs_uploads
    finally:
        logger.remove(sink)
    # the token is nowhere: output folder, downloaded copy, card, logs, stdout/stderr
    captured = capsys.readouterr()
    haystacks = ["\n".join(logs), caplog.text, captured.out, captured.err, card.content]
    for folder in (out, dest):
        haystacks += [p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file()]
    assert not any(SECRET in h for h in haystacks)


def test_cli_push_to_a_branch(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    from huggingface_hub import HfApi

    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False)
    env = hub_server.client_env(token=SECRET, hf_home=tmp_path / "hf-home")
    proc = run_cli("push", str(out), hub_repo_id, "--revision", "dev", "--private", env=env, timeout=300)
    assert f"{hub_repo_id}/tree/dev" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    assert HfApi().repo_info(hub_repo_id, repo_type=REPO_TYPE).private is True
    assert remote_files(hub_repo_id) == [".gitattributes"]  # main untouched
    assert remote_files(hub_repo_id, revision="dev") == expected_files(out)
    commits = hub_server.repo_stats(hub_repo_id)["commits"]
    run_cli("push", str(out), hub_repo_id, "--revision", "dev", env=env, timeout=300)  # branch exists: fine, no-op
    assert hub_server.repo_stats(hub_repo_id)["commits"] == commits
    dest = hf_download(hub_server, hub_repo_id, tmp_path / "dl", revision="dev", token=SECRET)
    assert load_config(dest, "faq") == local_rows(out, "faq")


def test_push_goes_to_the_runs_hub_repo_when_none_is_named(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    """``output.hub_repo`` is where a run is published: ``finephrase push OUTPUT`` pushes there; without it and
    without a repo id the push is a one-line error naming both ways to give one."""
    env = hub_server.client_env(token=SECRET, hf_home=tmp_path / "hf-home")
    unnamed = make_output(tmp_path / "unnamed", prompts=("finephrase/faq",), mix=False)
    proc = run_cli("push", str(unnamed), env=env, timeout=300, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no repository to push to" in proc.stderr and "output.hub_repo" in proc.stderr
    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False,
                      recipe_overrides={"output": {"folder": str(tmp_path / "out"), "hub_repo": hub_repo_id}})
    proc = run_cli("push", str(out), env=env, timeout=300)
    assert hub_repo_id in proc.stdout
    assert remote_files(hub_repo_id) == expected_files(out)


def test_interrupted_push_resumes_without_duplicates(tmp_path, hub_server, hub_repo_id, monkeypatch, fast_retries):  # noqa: F811
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from finephrase.errors import HubError
    from finephrase.hub import push_output

    out = make_output(tmp_path / "out", files_per_config=2)  # 7 parquet files -> 4 data commits of <= 2 files
    original = HfApi.create_commit
    made = []

    def failing_after_first(self, *args, **kwargs):
        info = original(self, *args, **kwargs)
        made.append(info)
        if len(made) == 1:  # the server fails from now on, mid-push
            hub_server.add_fault("commit", status=503, count=100, repo=hub_repo_id)
        return info

    monkeypatch.setattr(HfApi, "create_commit", failing_after_first)
    with pytest.raises(HubError) as exc:  # the Hub kept answering 503: one message, the HTTP error as its cause
        push_output(str(out), hub_repo_id, max_files=2)
    assert isinstance(exc.value.__cause__, HfHubHTTPError) and exc.value.__cause__.response.status_code == 503
    assert str(exc.value).startswith("the Hub is failing (HTTP 503") and "pushing again resumes" in str(exc.value)
    partial = remote_files(hub_repo_id)
    assert len([f for f in partial if f.startswith("data/")]) == 2 and "README.md" not in partial
    monkeypatch.setattr(HfApi, "create_commit", original)
    hub_server.clear_faults()

    # a lost answer (the commit IS made, the client sees 503) and a moved head (412) are retried safely
    hub_server.add_fault("commit", status=503, count=1, when="after", repo=hub_repo_id)
    hub_server.add_fault("commit", status=412, count=1, repo=hub_repo_id)
    push_output(str(out), hub_repo_id, max_files=2)
    assert remote_files(hub_repo_id) == expected_files(out)
    stats = hub_server.repo_stats(hub_repo_id)
    assert stats["lfs_uploads"] == 7  # no parquet file was sent twice
    # 1 commit before the failure + 3 data commits + 1 card/prompts/recipe commit (the lost answer is not redone)
    assert stats["commits"] == 5
    assert stats["committed_operations"] == len(expected_files(out)) - 1  # every file committed once
    dest = hf_download(hub_server, hub_repo_id, tmp_path / "dl")
    assert load_config(dest, "table") == local_rows(out, "table")


def test_second_run_replaces_its_configs_and_keeps_others(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    from huggingface_hub import DatasetCard

    from finephrase.hub import push_output

    first = make_output(tmp_path / "first", files_per_config=2, tag="run1")
    push_output(str(first), hub_repo_id)
    second = make_output(tmp_path / "second", prompts=("finephrase/faq", "finephrase/tutorial"), mix=False, tag="run2")
    push_output(str(second), hub_repo_id)

    files = remote_files(hub_repo_id)
    assert "data/faq/000_00001.parquet" not in files  # run 1's second faq file is gone
    assert {"data/faq/000_00000.parquet", "data/tutorial/000_00000.parquet", "data/table/000_00001.parquet",
            "data/math/000_00000.parquet", "data/mix/000_00000.parquet"} <= set(files)
    assert {"prompts/finephrase/tutorial.yaml", "prompts/finephrase/table.yaml"} <= set(files)
    dest = hf_download(hub_server, hub_repo_id, tmp_path / "dl")
    card = DatasetCard.load(dest / "README.md")
    card.validate(repo_type="dataset")
    names = [c["config_name"] for c in card.data.configs]
    assert names == ["all", "faq", "tutorial", "table", "math", "mix"]
    assert "kept from an earlier push" in card.content
    assert load_config(dest, "faq") == local_rows(second, "faq")
    assert load_config(dest, "tutorial") == local_rows(second, "tutorial")
    assert load_config(dest, "table") == local_rows(first, "table")
    assert load_config(dest, "mix") == local_rows(first, "mix")
    everything = sorted(local_rows(second, "faq") + local_rows(second, "tutorial") + local_rows(first, "table")
                        + local_rows(first, "math"), key=lambda r: r["id"])
    assert load_config(dest, "all") == everything
    # pushing the second run again changes nothing
    commits = hub_server.repo_stats(hub_repo_id)["commits"]
    push_output(str(second), hub_repo_id)
    assert hub_server.repo_stats(hub_repo_id)["commits"] == commits


def test_push_creates_a_missing_branch_of_an_existing_repo(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    """`--revision` names a branch to push to, created from main when missing (as users expect from the README's
    "created if needed"; huggingface_hub's upload_folder(revision=...) alone fails on a missing branch)."""
    from huggingface_hub import HfApi

    from finephrase.hub import push_output

    first = make_output(tmp_path / "first", prompts=("finephrase/table",), mix=False, tag="run1")
    push_output(str(first), hub_repo_id)
    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False, tag="run2")
    env = hub_server.client_env(hf_home=tmp_path / "hf-home")
    proc = run_cli("push", str(out), hub_repo_id, "--revision", "exp/faq-v2", env=env, timeout=300)
    assert f"{hub_repo_id}/tree/exp/faq-v2" in proc.stdout and "Traceback" not in proc.stderr
    branches = {b.name for b in HfApi().list_repo_refs(hub_repo_id, repo_type=REPO_TYPE).branches}
    assert branches == {"main", "exp/faq-v2"}
    on_branch = remote_files(hub_repo_id, revision="exp/faq-v2")
    assert "data/faq/000_00000.parquet" in on_branch and "data/table/000_00000.parquet" in on_branch  # from main
    assert "data/faq/000_00000.parquet" not in remote_files(hub_repo_id)  # main untouched

    # a tag is not a branch: refused with one line, nothing committed
    HfApi().create_tag(hub_repo_id, tag="v1", repo_type=REPO_TYPE)
    commits = hub_server.repo_stats(hub_repo_id)["commits"]
    proc = run_cli("push", str(out), hub_repo_id, "--revision", "v1", env=env, timeout=300, check=False)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
    assert "error: revision 'v1' is a tag of" in proc.stderr and "name a branch" in proc.stderr
    assert hub_server.repo_stats(hub_repo_id)["commits"] == commits


def test_private_push_never_lands_in_a_public_repo(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    from huggingface_hub import HfApi

    from finephrase.errors import HubError
    from finephrase.hub import push_output

    HfApi().create_repo(hub_repo_id, repo_type=REPO_TYPE)  # public
    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False)
    with pytest.raises(HubError, match="exists and is public, and the push is private"):
        push_output(str(out), hub_repo_id, private=True)
    assert remote_files(hub_repo_id) == [".gitattributes"]
    HfApi().update_repo_settings(hub_repo_id, repo_type=REPO_TYPE, private=True)
    push_output(str(out), hub_repo_id, private=True)
    assert "data/faq/000_00000.parquet" in remote_files(hub_repo_id)


def test_nothing_to_push(tmp_path):
    from finephrase.errors import PushError
    from finephrase.hub import push_output

    (tmp_path / "empty").mkdir()
    with pytest.raises(PushError):
        push_output(str(tmp_path / "empty"), "testuser/never-created")


def test_local_prompt_file_is_published_and_found_again(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    import yaml

    from finephrase.hub import push_output
    from finephrase.prompts import PACKAGED_PROMPTS_DIR

    data = yaml.safe_load((PACKAGED_PROMPTS_DIR / "finephrase" / "faq.yaml").read_text())
    data.update(name="glossary", set="mine")
    custom = tmp_path / "my_prompts" / "glossary.yaml"
    custom.parent.mkdir()
    custom.write_text(yaml.safe_dump(data, sort_keys=False))
    out = make_output(tmp_path / "out", prompts=(str(custom),), mix=False)
    push_output(str(out), hub_repo_id)
    files = remote_files(hub_repo_id)
    assert "prompts/mine/glossary.yaml" in files and "data/glossary/000_00000.parquet" in files
    assert (out / "prompts" / "mine" / "glossary.yaml").read_text() == custom.read_text()
    # the published recipe names the prompt by an absolute path: scrubbed like the card
    from huggingface_hub import hf_hub_download

    recipe = open(hf_hub_download(hub_repo_id, "recipe.yaml", repo_type="dataset")).read()
    assert str(tmp_path) not in recipe and "<local>/glossary.yaml" in recipe
    # the original prompt file is gone: the copy in OUTPUT/prompts/ is used, and the card is the same
    commits = hub_server.repo_stats(hub_repo_id)["commits"]
    custom.unlink()
    push_output(str(out), hub_repo_id)
    assert hub_server.repo_stats(hub_repo_id)["commits"] == commits


def test_output_without_recipe_pushes_its_readme(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    """No recipe.yaml / run.json (e.g. pruned): the local README.md is published, kept configs merged in."""
    from huggingface_hub import DatasetCard

    from finephrase.hub import push_output
    from finephrase.recipe import load_recipe
    from finephrase.report.card import write_card

    first = make_output(tmp_path / "first", prompts=("finephrase/table",), mix=False, tag="run1")
    push_output(str(first), hub_repo_id)
    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False, tag="run2")
    recipe = load_recipe(out / "recipe.yaml")
    write_card(str(out), recipe, recipe_prompts(recipe), repo_id=hub_repo_id)
    (out / "recipe.yaml").unlink()
    push_output(str(out), hub_repo_id)
    dest = hf_download(hub_server, hub_repo_id, tmp_path / "dl")
    card = DatasetCard.load(dest / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["all", "faq", "table"]
    assert len(load_config(dest, "all")) == 6
    assert load_config(dest, "table") == local_rows(first, "table")


def test_two_tasks_pushing_at_once_keep_both(tmp_path, hub_server, hub_repo_id, monkeypatch):  # noqa: F811
    """Concurrent pushes of different configs to one repo: commits race (412 -> re-read the head, retry) and the
    last card still lists both."""
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import DatasetCard, HfApi

    from finephrase import hub
    from finephrase.hub import push_output

    monkeypatch.setattr(hub, "RETRY_BASE_S", 0.01)
    HfApi().create_repo(hub_repo_id, repo_type="dataset")
    a = make_output(tmp_path / "a", prompts=("finephrase/faq",), files_per_config=3, mix=False, tag="a")
    b = make_output(tmp_path / "b", prompts=("finephrase/table",), files_per_config=3, mix=False, tag="b")
    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(push_output, str(o), hub_repo_id, max_files=1) for o in (a, b)]:
            f.result()
    files = remote_files(hub_repo_id)
    assert {f"data/{c}/000_0000{i}.parquet" for c in ("faq", "table") for i in range(3)} <= set(files)
    card = DatasetCard.load(hf_download(hub_server, hub_repo_id, tmp_path / "dl") / "README.md")
    assert sorted(c["config_name"] for c in card.data.configs) == ["all", "faq", "table"]
