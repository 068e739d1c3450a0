"""Output rules: every rule on hand-built bad outputs and on real generations of the embedded model.

The real outputs come from SmolLM2-135M-Instruct (llama.cpp, the embedded generator) answering
packaged prompts for real documents of the demo corpus, generated once per session.
"""

from __future__ import annotations

import gzip
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import DEMO_DATA
from finephrase.prompts import load_prompt
from finephrase.pipeline.formatters.output_checks import check_output, clean_output, qa_pairs

WIKI = {"strip_prefixes": ["Here is a paraphrased version:"], "require_prefix": True}
REWIRE = {"extract": {"start": "<improved response starts>", "end": "<improved response ends>"}}


def demo_docs(n: int) -> list[dict]:
    docs = []
    with gzip.open(DEMO_DATA / "docs.jsonl.gz", "rt") as f:
        for line in f:
            d = json.loads(line)
            if len(d["text"]) > 1500:
                docs.append(d)
            if len(docs) == n:
                break
    return docs


@pytest.fixture(scope="session")
def lid():
    from datatrove.data import Document

    from finephrase.pipeline.filters.language import LocalFastTextLID, default_lid_model

    model = LocalFastTextLID(default_lid_model())

    def detect(text: str) -> str:
        (lang, _), _ = model.predict(Document(text=text[:4000], id=""))
        return lang

    return detect


@pytest.fixture(scope="session")
def real_outputs(demo_data):
    """A few real generations: (prompt, source text, text, finish_reason, completion_tokens)."""
    from finephrase.inference.servers.embedded import EmbeddedServers
    from finephrase.inference.client.tokens import TokenCounter

    docs = demo_docs(2)
    jobs = [(ref, d) for d in docs for ref in ("finephrase/faq", "finephrase/table", "nemotron-cc/wikipedia",
                                                "nemotron-cc/knowledge_list")]
    out = []
    with EmbeddedServers(replicas=2, threads=1, n_ctx=1024) as servers:
        tokens = TokenCounter(servers.gguf)

        def generate(i_job):
            i, (ref, doc) = i_job
            prompt = load_prompt(ref)
            source = tokens.truncate(doc["text"], 500)[0]
            body = {"messages": prompt.render(source), "max_tokens": 96, "temperature": 0.0, "seed": 0}
            req = urllib.request.Request(f"{servers.endpoints[i % 2]}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                answer = json.loads(r.read())
            choice = answer["choices"][0]
            return {"prompt": prompt, "source": source, "text": choice["message"]["content"],
                    "finish_reason": choice["finish_reason"], "completion_tokens": answer["usage"]["completion_tokens"]}

        with ThreadPoolExecutor(2) as pool:
            out = list(pool.map(generate, enumerate(jobs)))
    assert all(o["text"].strip() for o in out)
    return out


# ------------------------------------------------------------------ hand-built bad outputs
@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot rewrite this document.",
    "The document is about parsing. I cannot fulfill this request.",
    "Sure, here is the FAQ:\nI apologize, but I cannot do that.",
])
def test_refusals_dropped(text):
    r = check_output(text, {})
    assert not r.keep and r.reason == "refusal"
    assert check_output(text, {"drop_refusals": False}).keep


def test_meta_talk_stripped_or_dropped():
    r = check_output("Sure! Here is the FAQ you asked for:\n\n**What is it?**\nA module.\n\nI hope this helps!", {"format": "qa"})
    assert r.keep and r.text == "**What is it?**\nA module." and "stripped_meta_talk" in r.notes
    r = check_output("Here is the rewritten document:\nThe module provides helpers.", {})
    assert r.keep and r.text == "The module provides helpers."
    only = check_output("Certainly! Here's the table:", {})
    assert not only.keep and only.reason == "meta_talk" and only.text  # flagged rows keep what was said
    assert check_output("Surely the module is useful.", {}).text == "Surely the module is useful."


def test_prefix_stripped_and_required():
    ok = check_output("Here is a paraphrased version:\nThe cat sat on the mat.", WIKI)
    assert ok.keep and ok.text == "The cat sat on the mat." and ok.notes == ("stripped_prefix",)
    bold = check_output("**Here is a paraphrased version:** The cat sat.", WIKI)
    assert bold.keep and bold.text == "The cat sat."
    missing = check_output("The cat sat on the mat.", WIKI)
    assert not missing.keep and missing.reason == "missing_prefix"
    # without require_prefix a missing prefix is fine
    assert check_output("The cat sat.", {"strip_prefixes": WIKI["strip_prefixes"]}).keep


def test_extract_rewire_response():
    raw = ("<thinking starts>The task is to explain X.<thinking ends>\n"
           "<improved response starts>\nX is a module that does Y.\n<improved response ends>")
    r = check_output(raw, REWIRE)
    assert r.keep and r.text == "X is a module that does Y." and "extracted" in r.notes
    no_marker = check_output("<thinking starts>I will think about it.", REWIRE)
    assert not no_marker.keep and no_marker.reason == "extract_failed"
    cut = check_output("<thinking starts>a<thinking ends><improved response starts>X is", REWIRE, finish_reason="length")
    assert not cut.keep and cut.reason == "truncated" and cut.text == "X is"
    assert "extract_unterminated" in cut.notes


def test_truncated_empty_length_ratio_and_token_bounds():
    assert check_output("cut mid", {}, finish_reason="length").reason == "truncated"
    assert check_output("cut mid", {"drop_truncated": False}, finish_reason="length").keep
    assert check_output("   \n ", {}).reason == "empty"
    src = "word " * 200
    assert check_output("tiny", {"length_ratio": [0.1, 5]}, source_text=src).reason == "length_ratio"
    assert check_output("x" * 6000, {"length_ratio": [0.1, 5]}, source_text=src).reason == "length_ratio"
    assert check_output("y " * 200, {"length_ratio": [0.1, 5]}, source_text=src).keep
    # a truncated source: the ratio is taken against what the model saw
    assert check_output("y " * 30, {"length_ratio": [0.5, 5]}, source_text=src * 10, source_chars=100).keep
    rules = {"min_tokens": 50, "max_tokens": 510}
    assert check_output("short", rules, completion_tokens=12).reason == "too_short"
    assert check_output("long", rules, completion_tokens=600).reason == "too_long"
    assert check_output("fine", rules, completion_tokens=200).keep


@pytest.mark.parametrize("fmt,good,bad", [
    ("table", "| Name | Value |\n|---|---|\n| a | 1 |\n\nQuestion: a? Answer: 1",
     "Name: a, value: 1.\n| only one row |"),
    ("qa", "**What is a list?**\nA mutable sequence.\n\n**What is a tuple?**\nAn immutable one.",
     "Lists are mutable. Tuples are not. What else is there?"),
    ("qa", "- Question: What is X? Answer: A module.\n- Question: Why? Answer: Speed.", "Question: What is X?"),
    ("math", "Problem: Ann has 3 apples and buys 4. How many?\nSolution: 3 + 4 = 7. The answer is 7.",
     "This document describes the history of the language in words only."),
    ("list", "- Python 3.11 is faster.\n- The enum module has StrEnum.\n- 3 new modules.", "One fact without a list."),
])
def test_format_rules(fmt, good, bad):
    assert check_output(good, {"format": fmt}).keep
    r = check_output(bad, {"format": fmt})
    assert not r.keep and r.reason == f"format_{fmt}"


def test_language_changed(lid):
    en = ("The enum module defines an enumeration type with iteration and comparison capabilities. It can be used "
          "to create well-defined symbols for values, instead of using literal integers or strings.")
    de = ("Das Modul enum definiert einen Aufzählungstyp mit Iterations- und Vergleichsfähigkeiten. Es kann verwendet "
          "werden, um wohldefinierte Symbole für Werte zu erzeugen, anstatt Ganzzahlen oder Zeichenketten zu nutzen.")
    assert check_output(en, {}, source_language="en", detect_language=lid).keep
    r = check_output(de, {}, source_language="en", detect_language=lid)
    assert not r.keep and r.reason == "language_changed"
    assert check_output(de, {"same_language": False}, source_language="en", detect_language=lid).keep
    assert check_output("Ja.", {}, source_language="en", detect_language=lid).keep  # too short to tell


def test_qa_pairs_counts_pairs_not_questions():
    assert qa_pairs("Q1: what?\nA1: that.\nQ2: why?\nA2: because.") == 2
    assert qa_pairs("What? Why? How?") == 0


# ------------------------------------------------------------------ real generations
def test_real_outputs_truncation_and_cleaning(real_outputs, lid):
    for o in real_outputs:
        rules = o["prompt"].output_rules
        r = check_output(o["text"], rules, finish_reason=o["finish_reason"], completion_tokens=o["completion_tokens"],
                         source_text=o["source"], source_language="en", detect_language=lid)
        if o["finish_reason"] == "length" and r.reason not in ("refusal", "meta_talk", "missing_prefix", "empty"):
            assert r.reason == "truncated"
        if r.keep:
            assert r.text and r.text in o["text"] or "stripped_prefix" in r.notes
        # with the finish/length rules off, the outcome is decided by the content rules alone
        relaxed = {**rules, "drop_truncated": False, "min_tokens": None, "max_tokens": None}
        r2 = check_output(o["text"], relaxed, source_text=o["source"])
        assert r2.reason != "truncated"
        if r2.reason and r2.reason.startswith("format_"):
            assert not check_output(r2.text, {"format": rules["format"]}).keep


def test_real_outputs_with_prefix_extract_meta_talk(real_outputs):
    for o in real_outputs:
        body = clean_output(o["text"], {"drop_refusals": False}).text  # the model's own text, trimmed
        with_prefix = check_output(f"Here is a paraphrased version:\n{body}", {**WIKI, "drop_refusals": False})
        assert with_prefix.keep and with_prefix.text == body
        assert check_output(body, {**WIKI, "drop_refusals": False}).reason in ("missing_prefix", None)
        wrapped = (f"<thinking starts>I should rewrite it.<thinking ends>\n<improved response starts>\n{body}\n"
                   "<improved response ends>")
        got = check_output(wrapped, {**REWIRE, "drop_refusals": False})
        assert got.keep and got.text == body
        assert check_output(body, {**REWIRE}).reason == "extract_failed"
        chatty = check_output(f"Sure! Here is the rewritten text:\n\n{body}", {"drop_refusals": True})
        if chatty.keep:
            assert "stripped_meta_talk" in chatty.notes and body.endswith(chatty.text.rstrip()[-20:])


def test_real_outputs_language_and_bounds(real_outputs, lid):
    english = [o for o in real_outputs if len(o["text"]) >= 80 and lid(o["text"]) == "en"]
    assert english, "the model wrote no English output long enough to identify"
    for o in english:
        assert check_output(o["text"], {"drop_truncated": False}, source_language="en", detect_language=lid).reason != "language_changed"
        assert check_output(o["text"], {"drop_truncated": False}, source_language="fr",
                            detect_language=lid).reason in ("language_changed", "refusal", "meta_talk")
    for o in real_outputs:
        n = o["completion_tokens"]
        assert check_output(o["text"], {"drop_truncated": False, "drop_refusals": False, "min_tokens": n + 1},
                            completion_tokens=n).reason == "too_short"
        assert check_output(o["text"], {"drop_truncated": False, "drop_refusals": False, "max_tokens": n - 1},
                            completion_tokens=n).reason == "too_long"
        ratio = len(o["text"].strip()) / len(o["source"])
        assert check_output(o["text"], {"drop_truncated": False, "drop_refusals": False,
                                        "length_ratio": [ratio * 1.5, ratio * 3]},
                            source_text=o["source"]).reason == "length_ratio"


def test_rules_counted_in_stats(real_outputs):
    """FormatRows counts every drop/flag reason and every cleanup in datatrove's stats."""
    from datatrove.data import Document

    from finephrase.pipeline.formatters.rows import FormatRows

    wiki = load_prompt("nemotron-cc/wikipedia")
    faq = load_prompt("finephrase/faq")
    real = real_outputs[0]
    entry = {"prompt_tokens": 10, "completion_tokens": 60, "finish_reason": "stop", "generation_params": {}}
    docs = [
        Document(text=real["source"], id="a", metadata={"rollout_results": [{
            "wikipedia": {**entry, "text": f"Here is a paraphrased version:\n{real['text']}"},
            "faq": {**entry, "text": "I'm sorry, I cannot do that."}}]}),
        Document(text=real["source"], id="b", metadata={"rollout_results": [{
            "wikipedia": {**entry, "text": real["text"]},  # no prefix
            "faq": {**entry, "text": "Q: What is it?\nA: A module that", "finish_reason": "length"}}]}),
    ]
    step = FormatRows([wiki, faq], model="m")
    rows = list(step.run(iter(docs)))
    stats = {k: v.total for k, v in step.stats.stats.items()}
    assert stats["dropped/faq/refusal"] == 1 and stats["dropped/faq/truncated"] == 1
    assert stats["dropped/wikipedia/missing_prefix"] == 1
    assert stats["cleaned/wikipedia/stripped_prefix"] == 1
    kept = [r for r in rows if r.metadata["prompt"] == "wikipedia"]
    assert len(kept) <= 1 and all(not r.text.startswith("Here is") for r in kept)
    flag = FormatRows([wiki, faq], model="m", on_fail="flag")
    flagged = list(flag.run(iter(docs)))
    assert {r.id for r in flagged} == {"a/wikipedia", "a/faq", "b/wikipedia", "b/faq"}
    assert any("failed:missing_prefix" in (r.metadata["checks"] or "") for r in flagged)
