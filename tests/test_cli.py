"""The command line on expected failures: one or two lines (the cause, then the fix) at the end of stderr, an exit
code != 0 and no traceback; ``--debug`` (before or after the command, or FINEPHRASE_DEBUG=1) adds the traceback.
Every case runs the real CLI in a subprocess; the Hub cases run against the offline test Hub (tests/hub_server.py)
configured the way the real Hub answers a read token (403), an unknown token (401) or a namespace the token may
not write to (403). Also: `finephrase card`, and `run --fresh --push-to` on a tiny real run.
"""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pytest
from hub_server import DEFAULT_USER, HubTestServer, hf_client_env, hub_repo_id, hub_server  # noqa: F401
from test_card import make_output

from conftest import FAST_GENERATOR, run_cli

HUB_EXIT = 5  # finephrase.hub.HubError.exit_code


def error_message(stderr: str) -> str:
    """The error message at the end of stderr: one or two lines, the first starting with ``error: ``."""
    assert "Traceback" not in stderr, stderr[-6000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert starts, stderr[-3000:]
    message = lines[starts[-1]:]
    assert 1 <= len(message) <= 2, stderr[-3000:]  # the cause, then the fix
    return "\n".join(message)


def failure(proc, code: int | None = None) -> str:
    """The error message of a failed command, after checking how it failed."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    if code is not None:
        assert proc.returncode == code, proc.stderr[-3000:]
    return error_message(proc.stderr)


@pytest.fixture
def main(monkeypatch):
    """finephrase's main() in this process (no interpreter start-up); what it changes globally is undone."""
    from loguru import logger

    from finephrase.cli import main as cli

    core = logger._core  # main() installs a loguru patcher (quiet expected tracebacks) and may set FINEPHRASE_DEBUG
    patcher = getattr(core, "patcher", None)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    yield cli.main
    if hasattr(core, "patcher"):
        core.patcher = patcher


@pytest.fixture
def own_hub(tmp_path):
    """Start a test Hub with its own configuration (so the session's Hub keeps the default one)."""
    servers: list[HubTestServer] = []

    def start(**config) -> HubTestServer:
        server = HubTestServer(tmp_path / f"hub-{len(servers)}", **config).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ------------------------------------------------------------------------------------------------ recipes, files


def test_bad_recipes_and_missing_files(tmp_path, make_recipe):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: demo\nsource: [unclosed\n")
    message = failure(run_cli("run", str(bad_yaml), check=False), code=2)
    assert str(bad_yaml) in message and "invalid YAML at line" in message

    unknown = make_recipe({"generator": {"concurrrency": 4}}, name="unknown.yaml")
    message = failure(run_cli("run", str(unknown), check=False), code=2)
    assert f"{unknown}: generator.concurrrency: unknown key" in message

    message = failure(run_cli("run", str(tmp_path / "nope.yaml"), check=False), code=2)
    assert f"{tmp_path / 'nope.yaml'}: recipe file not found" in message

    missing_source = make_recipe({"source": {"path": str(tmp_path / "no-such-corpus.jsonl.gz")}}, name="src.yaml")
    message = failure(run_cli("run", str(missing_source), check=False), code=2)
    assert "source.path" in message and "no-such-corpus.jsonl.gz" in message and "does not exist" in message

    message = failure(run_cli("prompts", "render", "finephrase/faq", "--doc", str(tmp_path / "doc.txt"), check=False),
                      code=2)
    assert f"{tmp_path / 'doc.txt'}: no such file or directory" in message and "check the path" in message



def test_missing_output_folders(tmp_path, capsys, main):
    assert main(["push", str(tmp_path / "no-output"), f"{DEFAULT_USER}/x"]) == 2
    assert "no-output: no such folder" in error_message(capsys.readouterr().err)
    assert main(["card", str(tmp_path / "no-output")]) == 2
    assert "no such output folder" in error_message(capsys.readouterr().err)


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys, main):
    missing = str(tmp_path / "nope.yaml")
    for args in (["--debug", "run", missing], ["run", missing, "--debug"]):
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback (most recent call last)" in proc.stderr and "RecipeError" in proc.stderr, args
        assert proc.stderr.rstrip().splitlines()[-1] == f"error: {missing}: recipe file not found"

    monkeypatch.setenv("FINEPHRASE_DEBUG", "1")
    assert main(["run", missing]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.delenv("FINEPHRASE_DEBUG")
    with pytest.raises(SystemExit) as exc:
        main(["run", missing, "--no-such-flag"])
    assert exc.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_every_finephrase_error_survives_a_worker_process():
    """A task's exception reaches the launching process pickled (datatrove's pool, workers > 1). An exception
    class that cannot be rebuilt from its args (a custom __init__ without __reduce__) kills the pool's result
    thread and the run hangs forever: every FinephraseError must make the round trip."""
    import importlib
    import pkgutil

    import finephrase
    from finephrase.errors import FinephraseError

    for mod in pkgutil.walk_packages(finephrase.__path__, "finephrase."):
        try:
            importlib.import_module(mod.name)
        except ImportError:  # an optional dependency (e.g. the embedded server's)
            pass
    todo, seen = [FinephraseError], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo += cls.__subclasses__()
        try:
            e = cls("the cause\nthe fix")
        except TypeError:
            pytest.fail(f"{cls.__module__}.{cls.__name__} cannot be built from a message: it needs a __reduce__")
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is cls and str(back) == str(e)
    assert len(seen) >= 8


def test_card_command(tmp_path):
    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False)
    proc = run_cli("card", str(out), "--repo-id", f"{DEFAULT_USER}/my-faqs")
    assert f"wrote {out / 'README.md'}" in proc.stdout.replace("\n", "")
    card = (out / "README.md").read_text()
    assert f'load_dataset("{DEFAULT_USER}/my-faqs", "faq"' in card and "config_name: faq" in card
    (out / ".finephrase" / "plan.json").rename(tmp_path / "plan.json")
    message = failure(run_cli("card", str(out), check=False), code=2)
    assert "no .finephrase/plan.json" in message and "output folder of a run" in message


# ------------------------------------------------------------------------------------------------ the Hub


def test_push_without_write_access(tmp_path, own_hub):
    hub = own_hub(allowed_namespaces=[])  # the token may write to its user's namespace only
    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False)
    env = hub.client_env(hf_home=tmp_path / "hf")
    message = failure(run_cli("push", str(out), "someone-else/data", env=env, check=False), code=HUB_EXIT)
    assert "may not write to dataset repository someone-else/data (HTTP 403" in message
    assert "a write token (not read-only) of an account that may write to 'someone-else'" in message
    assert "datasets/someone-else/data" not in hub.stats()["repos"] or \
        hub.stats()["repos"]["datasets/someone-else/data"]["commits"] == 0
    # the prompts CLI goes through the same handling
    from finephrase.prompts import PACKAGED_PROMPTS_DIR

    message = failure(run_cli("prompts", "push", str(PACKAGED_PROMPTS_DIR / "finephrase"), "someone-else/prompts",
                              env=env, check=False))
    assert "someone-else/prompts" in message
    # and the user's own namespace works
    run_cli("push", str(out), f"{DEFAULT_USER}/data", env=env)


def test_push_with_a_read_token_or_a_rejected_token(tmp_path, own_hub, make_recipe, demo_data):
    hub = own_hub(known_tokens={"hf_reader": DEFAULT_USER, "hf_writer": DEFAULT_USER},
                  token_roles={"hf_reader": "read"})
    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False)
    repo = f"{DEFAULT_USER}/data"

    message = failure(run_cli("push", str(out), repo, env=hub.client_env(token="hf_reader", hf_home=tmp_path / "h1"),
                              check=False), code=HUB_EXIT)
    assert "may not write" in message and "HTTP 403" in message

    message = failure(run_cli("push", str(out), repo, env=hub.client_env(token="hf_unknown", hf_home=tmp_path / "h2"),
                              check=False), code=HUB_EXIT)
    assert "the Hub rejected your token (HTTP 401" in message and "hf auth login" in message and "HF_TOKEN" in message

    no_token = {**hub.client_env(hf_home=tmp_path / "h3"), "HF_TOKEN": ""}
    message = failure(run_cli("push", str(out), repo, env=no_token, check=False), code=HUB_EXIT)
    assert "no Hugging Face token" in message and "hf auth login" in message

    # `run --push-to` checks the token before the run, not hours later
    recipe = make_recipe({"output": {"folder": str(tmp_path / "run-out")}})
    proc = run_cli("run", str(recipe), "--push-to", repo,
                   env=hub.client_env(token="hf_reader", hf_home=tmp_path / "h4"), check=False, timeout=120)
    message = failure(proc, code=HUB_EXIT)
    assert "read-only" in message and repo in message
    assert not (tmp_path / "run-out").exists()
    assert hub.stats()["repos"].get(f"datasets/{repo}", {}).get("commits", 0) == 0
    # ... and that the namespace is the user's or one of their organizations'
    proc = run_cli("run", str(recipe), "--push-to", "someone-else/data",
                   env=hub.client_env(token="hf_writer", hf_home=tmp_path / "h5"), check=False, timeout=120)
    message = failure(proc, code=HUB_EXIT)
    assert "'someone-else' is neither your user ('testuser') nor one of your organizations" in message
    assert "testuser/data" in message and not (tmp_path / "run-out").exists()


def test_push_to_an_unreachable_hub(tmp_path, monkeypatch, capsys, main):
    """Retried, then one clean message (in-process: the retries' waits are shortened)."""
    from finephrase import hub

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(hub, "RETRY_BASE_S", 0.001)
    monkeypatch.setattr(hub, "MAX_RETRIES", 1)
    logged: list[tuple[str, str]] = []

    class Logger:  # hub's log lines, here (loguru's stderr sink in this process may be a closed capture)
        def __getattr__(self, level):
            return lambda message, *args, **kwargs: logged.append((level, message))

    monkeypatch.setattr(hub, "logger", Logger())
    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False)
    with hf_client_env(f"http://127.0.0.1:{port}", hf_home=tmp_path / "hf"):
        code = main(["push", str(out), f"{DEFAULT_USER}/data"])
    message = error_message(capsys.readouterr().err).splitlines()
    assert code == HUB_EXIT and len(message) == 2
    assert f"cannot reach the Hub at http://127.0.0.1:{port}" in message[0] and "HF_ENDPOINT" in message[1]
    assert logged == [("warning", "create the repository: ConnectError: [Errno 111] Connection refused, "
                                  "retrying in 0.0s (1/1)")]


# ------------------------------------------------------------------------------------------------ a real run


def test_run_fresh_and_push_to(tmp_path, make_recipe, demo_data, hub_server, hub_repo_id):  # noqa: F811
    """One tiny real run with both flags: --fresh deletes what an earlier run left in the output folder (a stale
    config would otherwise be published), --push-to alone publishes the result to the recipe's output.hub_repo
    (private, as the recipe says)."""
    from huggingface_hub import HfApi

    recipe = make_recipe({"generator": FAST_GENERATOR, "output": {"private": True, "hub_repo": hub_repo_id}})
    out = tmp_path / "out"
    (out / "data" / "stale").mkdir(parents=True)
    (out / "data" / "stale" / "000_00000.parquet").write_bytes(b"left by an earlier run")
    (out / "left-over.txt").write_text("left by an earlier run")
    env = hub_server.client_env(hf_home=tmp_path / "hf")
    proc = run_cli("run", str(recipe), "--output", str(out), "--limit", "2", "--fresh", "--push-to", env=env)
    assert f"pushed to {hub_server.url}/datasets/{hub_repo_id}" in proc.stdout.replace("\n", "")
    assert not (out / "left-over.txt").exists() and not (out / "data" / "stale").exists()
    assert (out / ".finephrase" / "report.json").exists()
    assert f'load_dataset("{hub_repo_id}"' in (out / "README.md").read_text()  # the card names where it went
    local = sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet"))
    files = HfApi().list_repo_files(hub_repo_id, repo_type="dataset")
    assert local and set(local) <= set(files) and {"README.md", "recipe.yaml"} <= set(files)
    assert not any(f.startswith("data/stale/") for f in files)
    assert HfApi().repo_info(hub_repo_id, repo_type="dataset").private is True  # output.private: true


def test_no_hub_state_leaks_out_of_a_test():
    """The hub_server fixture points the process at the test Hub for its test only (this test uses no Hub)."""
    import os

    from huggingface_hub import constants

    import hub_server as hs

    server = hs._SESSION_SERVER.get("server")
    if server is None:
        pytest.skip("no test Hub started in this session yet")
    assert os.environ.get("HF_ENDPOINT") != server.url
    assert constants.ENDPOINT != server.url
    assert Path(constants.HF_HOME) != Path(server.hf_home)
