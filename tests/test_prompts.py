"""The prompt library: every packaged prompt renders and validates, hashes, the sandbox, the
`finephrase prompts` CLI and publishing prompt sets on the Hub (offline test Hub server)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import DEMO_DATA, ROOT, run_cli
from hub_server import hub_repo_id, hub_server  # noqa: F401  (pytest fixtures)

from finephrase.errors import PromptError
from finephrase.plan import recipe_prompts
from finephrase.prompts import (
    PACKAGED_PROMPTS_DIR,
    list_packaged_prompts,
    load_chunk_context,
    load_prompt,
    load_prompt_file,
    prompt_sha256,
    validate_template,
)

PACKAGED = list_packaged_prompts()
GOOD = """\
name: glossary
set: mine
version: "1.0"
source: {title: my own prompt, year: 2026}
description: Lists the terms the document defines.
template: |-
  Write a glossary of the terms defined in the document.

  Document:
  {{ document }}
generation: {max_new_tokens: 256, temperature: 0.7, top_p: 0.9}
output_rules:
  format: list
"""


@pytest.fixture(scope="module")
def real_doc() -> dict:
    with gzip.open(DEMO_DATA / "docs.jsonl.gz", "rt") as f:
        return json.loads(next(iter(f)))


def write(tmp_path: Path, text: str, name: str = "glossary.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------ the packaged library
def test_library_is_complete():
    refs = {p.ref for p in PACKAGED}
    assert {"wrap/easy", "wrap/medium", "wrap/hard", "wrap/qa", "nemotron-cc/wikipedia", "nemotron-cc/diverse_qa",
            "nemotron-cc/distill", "nemotron-cc/extract_knowledge", "nemotron-cc/knowledge_list", "finephrase/faq",
            "finephrase/math", "finephrase/table", "finephrase/tutorial", "rewire/guided_rewrite",
            "beyondweb/summarize", "beyondweb/continue"} <= refs
    assert not any(p.set.startswith("_") for p in PACKAGED), "_context/ holds chunk wordings, not prompts"
    assert load_chunk_context().name == "kimi_k2_chunk"


@pytest.mark.parametrize("prompt", PACKAGED, ids=[p.ref for p in PACKAGED])
def test_packaged_prompt_renders_a_real_document(prompt, real_doc, demo_data):
    text = real_doc["text"][:3000]
    messages = prompt.render(text)
    assert messages[-1]["role"] == "user" and text in messages[-1]["content"]
    assert messages[-1]["content"].count(text) == 1
    if prompt.system:
        assert messages[0] == {"role": "system", "content": prompt.system}
    validate_template(prompt.template, prompt.path)
    assert prompt.source.get("title") and prompt.description
    # loading again gives the same identity
    assert load_prompt(prompt.ref).sha256 == prompt.sha256


def test_cli_validates_the_whole_library():
    proc = run_cli("prompts", "validate", str(PACKAGED_PROMPTS_DIR))
    assert proc.stdout.count("ok ") == len(PACKAGED) + 1  # + the chunk-context file


# ------------------------------------------------------------------ hashes
def test_hash_stable_across_processes_and_normalized():
    code = ("from finephrase.prompts import list_packaged_prompts; import json; "
            "print(json.dumps({p.ref: p.sha256 for p in list_packaged_prompts()}))")
    other = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                      check=True).stdout)
    assert other == {p.ref: p.sha256 for p in PACKAGED}
    p = load_prompt("finephrase/faq")
    # whitespace at line ends and CRLF do not change the identity; content does
    assert prompt_sha256(p.system, p.template.replace("\n", "  \r\n"), p.generation) == p.sha256
    assert prompt_sha256(p.system, p.template + " Be brief.", p.generation) != p.sha256
    assert prompt_sha256("You are helpful.", p.template, p.generation) != p.sha256
    assert prompt_sha256(p.system, p.template, {**p.generation, "temperature": 0.5}) != p.sha256
    # metadata (description, rules) is not part of the identity
    assert replace(p, description="other", output_rules={}).sha256 == p.sha256


def test_hash_changes_with_file_content(tmp_path):
    a = load_prompt_file(write(tmp_path, GOOD))
    b = load_prompt_file(write(tmp_path, GOOD.replace("Write a glossary", "Write a short glossary")))
    c = load_prompt_file(write(tmp_path, GOOD.replace("description: Lists", "description: Names")))
    assert a.sha256 != b.sha256 and a.sha256 == c.sha256


# ------------------------------------------------------------------ sandbox and validation
@pytest.mark.parametrize("template", [
    "{{ ''.__class__ }} {{ document }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }} {{ document }}",
    "{{ document.__class__.__init__.__globals__ }}",
    "{% set x = document.__class__ %}{{ document }}",
])
def test_sandbox_refuses_python_internals(template):
    with pytest.raises(PromptError, match="sandbox|unknown variable|does not render"):
        validate_template(template, "t.yaml")


def test_sandbox_refused_through_the_cli(tmp_path):
    bad = write(tmp_path, GOOD.replace("Write a glossary", "{{ ''.__class__ }} Write a glossary"))
    proc = run_cli("prompts", "validate", str(bad), check=False)
    assert proc.returncode == 1
    assert f"{bad}:7:" in proc.stderr and "sandbox" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("edit,line,problem", [
    (lambda t: t.replace("  {{ document }}\n", "  (no document here)\n"), 6, "no {{ document }} placeholder"),
    (lambda t: t.replace("output_rules:", "temprature: 0.7\noutput_rules:"), 12, "unknown field 'temprature'"),
    (lambda t: t.replace("  Document:\n", "  Document: {{ }}\n"), 9, "bad Jinja"),
    (lambda t: t.replace("Write a glossary", "Write {{ documnet }} a glossary"), 6, "unknown variable"),
    (lambda t: t.replace("  {{ document }}\n", "  {{ document }} {{ document }}\n"), 6, "exactly once"),
    (lambda t: t.replace("  format: list", "  format: poem"), 13, "output_rules.format"),
    (lambda t: t.replace("  format: list", "  format: list\n  drop_everything: true"), 14, "unknown output rule"),
    (lambda t: t.replace("  format: list", "  require_prefix: true"), 13, "needs strip_prefixes"),
    (lambda t: t.replace("  format: list", "  extract: [a, b]"), 13, "output_rules.extract"),
    (lambda t: t.replace("name: glossary", "name: other"), 1, "does not match the file name"),
    (lambda t: t.replace("description: Lists the terms the document defines.\n", ""), None, "missing required field"),
    (lambda t: t.replace("set: mine", "set: [mine"), 3, "invalid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence at line 2)"),
])
def test_validate_names_file_line_and_problem(tmp_path, edit, line, problem):
    bad = write(tmp_path, edit(GOOD))
    with pytest.raises(PromptError) as e:
        load_prompt_file(bad)
    assert problem in str(e.value)
    assert str(e.value).startswith(f"{bad}:{line}:" if line else f"{bad}:")


def test_validate_cli_reports_every_bad_file_and_exits_1(tmp_path):
    good = write(tmp_path, GOOD)
    bad1 = write(tmp_path, GOOD.replace("name: glossary", "name: one").replace("  {{ document }}\n", "  x\n"), "one.yaml")
    bad2 = write(tmp_path, GOOD.replace("name: glossary", "name: two").replace("format: list", "fromat: list"), "two.yaml")
    proc = run_cli("prompts", "validate", str(good), str(bad1), str(bad2), check=False)
    assert proc.returncode == 1
    assert f"ok  {good}" in proc.stdout
    assert f"{bad1}:6: template has no {{{{ document }}}} placeholder" in proc.stderr
    assert f"{bad2}:13: unknown output rule(s) ['fromat']" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert run_cli("prompts", "validate", str(good)).returncode == 0
    assert run_cli("prompts", "validate", str(tmp_path / "missing.yaml"), check=False).returncode == 1


# ------------------------------------------------------------------ show / render / list
def test_show_and_list():
    proc = run_cli("prompts", "show", "nemotron-cc/wikipedia")
    p = load_prompt("nemotron-cc/wikipedia")
    assert p.sha256 in proc.stdout and p.template.splitlines()[0] in proc.stdout and "require_prefix" in proc.stdout
    listing = run_cli("prompts", "list", "--set", "wrap").stdout
    assert "wrap/qa" in listing and "finephrase/faq" not in listing


def test_render_prints_the_exact_request(real_doc):
    proc = run_cli("prompts", "render", "finephrase/faq", "--doc", str(DEMO_DATA / "docs.jsonl.gz"),
                   "--context-length", "1024", "--max-new-tokens", "200", "--model", "my-model")
    request = json.loads(proc.stdout)
    prompt = load_prompt("finephrase/faq")
    assert set(request) == {"messages", "max_tokens", "temperature", "top_p", "model"}
    assert request["max_tokens"] == 200 and request["temperature"] == 1.0 and request["model"] == "my-model"
    content = request["messages"][-1]["content"]
    assert content.startswith(prompt.template.split("{{")[0])
    assert real_doc["text"][:500] in content and len(content) < len(real_doc["text"]), "truncated to the budget"
    assert "truncated" in proc.stderr
    # the same request Rephrase builds
    from finephrase.cli.prompts import build_requests

    payloads, _ = build_requests(prompt, real_doc["text"], model="my-model", context_length=1024,
                                 generation_params={"max_new_tokens": 200})
    assert payloads[0] == request


def test_render_with_a_recipe_and_chunked(tmp_path):
    recipe = ROOT / "pipelines" / "kimi-k2.yaml"
    proc = run_cli("prompts", "render", "wrap/medium", "--doc", str(DEMO_DATA / "docs.jsonl.gz"), "--recipe",
                   str(recipe), "--all")
    requests = json.loads(proc.stdout)
    assert len(requests) > 1 and all(r["model"] == "SmolLM2-135M-Instruct" for r in requests)
    assert "part 2 of" in requests[1]["messages"][-1]["content"]
    assert requests[0]["max_tokens"] == 256 and "chunked into" in proc.stderr


# ------------------------------------------------------------------ the Hub: push, pull, hf:// references
def test_push_pull_round_trip_is_byte_identical(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    env = hub_server.client_env(hf_home=tmp_path / "hf")
    src = PACKAGED_PROMPTS_DIR / "nemotron-cc"
    push = run_cli("prompts", "push", str(src), hub_repo_id, env=env)
    sha = push.stdout.split("revision: ")[1].split()[0]
    assert len(sha) == 40
    pull = run_cli("prompts", "pull", f"{hub_repo_id}@main", "--to", str(tmp_path / "pulled"), env=env)
    assert f"revision: {sha}" in pull.stdout
    for f in sorted(src.glob("*.yaml")):
        assert (tmp_path / "pulled" / f.name).read_bytes() == f.read_bytes()
    card = (tmp_path / "pulled" / "README.md").read_text()
    assert "nemotron-cc" in card and load_prompt("nemotron-cc/wikipedia").sha256[:16] in card
    assert f"hf://datasets/{hub_repo_id}/" in card
    proc = run_cli("prompts", "validate", str(tmp_path / "pulled"), check=False)
    assert proc.returncode == 0, proc.stderr


def test_load_hf_prompt_records_revision(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    from finephrase.prompts.hub import push_prompt_set

    folder = tmp_path / "mine"
    folder.mkdir()
    write(folder, GOOD)
    first = push_prompt_set(folder, hub_repo_id)["commit"]
    write(folder, GOOD.replace("Write a glossary", "Write a detailed glossary"))
    second = push_prompt_set(folder, hub_repo_id)["commit"]
    assert first != second

    old = load_prompt(f"hf://datasets/{hub_repo_id}/glossary@{first}")
    new = load_prompt(f"hf://datasets/{hub_repo_id}/glossary")  # main
    assert old.revision == first and new.revision == second
    assert old.origin == f"hf://datasets/{hub_repo_id}/glossary@{first}"
    assert "detailed" not in old.template and "detailed" in new.template
    assert old.sha256 == load_prompt_file(write(tmp_path, GOOD)).sha256
    assert load_prompt(f"hf://datasets/{hub_repo_id}/glossary@main").revision == second
    assert old.to_dict()["revision"] == first

    with pytest.raises(PromptError, match="no prompt file 'nope.yaml'.*glossary"):
        load_prompt(f"hf://datasets/{hub_repo_id}/nope@main")
    with pytest.raises(PromptError, match="revision 'v9' not found"):
        load_prompt(f"hf://datasets/{hub_repo_id}/glossary@v9")
    with pytest.raises(PromptError, match="not found"):
        load_prompt("hf://datasets/testuser/no-such-repo/glossary")


def test_recipe_with_hf_prompt(tmp_path, make_recipe, demo_data, hub_server, hub_repo_id):  # noqa: F811
    from finephrase.prompts.hub import push_prompt_set
    from finephrase.recipe import load_recipe

    sha = push_prompt_set(PACKAGED_PROMPTS_DIR / "wrap", hub_repo_id)["commit"]
    recipe = load_recipe(make_recipe({"prompts": [f"hf://datasets/{hub_repo_id}/qa@{sha}", "finephrase/faq"]}))
    prompts = recipe_prompts(recipe)
    assert prompts[0].revision == sha and prompts[0].sha256 == load_prompt("wrap/qa").sha256
    assert prompts[1].revision is None


def test_hf_prompt_with_its_own_chunk_context(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    from finephrase.prompts import chunk_context_for
    from finephrase.prompts.hub import push_prompt_set

    folder = tmp_path / "set"
    folder.mkdir()
    ctx = load_chunk_context()
    (folder / "mywords.yaml").write_text(Path(ctx.path).read_text().replace("name: kimi_k2_chunk", "name: mywords")
                                         .replace("max_chunks: 16", "max_chunks: 3"))
    write(folder, GOOD.replace("output_rules:", "context: chunked\nchunk_context: mywords\noutput_rules:"))
    push = push_prompt_set(folder, hub_repo_id)
    assert sorted(push["files"]) == ["glossary.yaml", "mywords.yaml"]
    prompt = load_prompt(f"hf://datasets/{hub_repo_id}/glossary@{push['commit']}")
    assert prompt.context == "chunked" and chunk_context_for(prompt).max_chunks == 3


@pytest.mark.parametrize("prompt", PACKAGED, ids=[p.ref for p in PACKAGED])
def test_render_fast_path_equals_jinja(prompt, real_doc):
    """Prompt.render splices the document into a pre-rendered frame: it must equal the Jinja rendering."""
    from finephrase.prompts.render import CHUNK_VARIABLES
    from finephrase.prompts.render import compile_template as _compile

    assert prompt._document_frame is not None
    for doc in (real_doc["text"], "", "{{ not a template }}", "a\n\n\nb  ", "x" * 50_000):
        jinja = _compile(prompt.template).render(**{**CHUNK_VARIABLES, "document": doc})
        assert prompt.render(doc)[-1]["content"] == jinja


def test_render_keeps_jinja_for_templates_that_transform_the_document():
    for template in ("Rewrite: {{ document | upper }}", "{{ document[:10] }}", "{{ document | trim }} ok",
                     "{% if document | length > 30 %}long{% endif %} {{ document }}"):
        p = replace(load_prompt("finephrase/faq"), template=template)
        assert p._document_frame is None, template
        doc = "  some Document text that is long enough  "
        assert p.render(doc)[-1]["content"] != "" and p.render("x")[-1]["content"] != p.render(doc)[-1]["content"]
