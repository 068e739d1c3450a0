"""``OUTPUT/report.html``: a real run writes it, ``finephrase report`` rewrites it, and a real browser uses it.

One real run (module scope: the embedded llama.cpp server with SmolLM2-135M, the demo filters and dedup) of two
prompts: ``finephrase/faq`` (48 new tokens: it is cut, so its rows finish by ``length`` and are flagged
``failed:truncated``) and a local ``title`` prompt whose rules keep a cut answer unflagged (``drop_truncated:
false``). One
source document carries a planted string. The page is then opened in headless Chromium (Debian's ``chromium``,
driven by Playwright over the DevTools protocol) from ``file://``: no console error, no request leaves the page,
the funnel and the distributions are drawn (Chart.js objects, non-blank canvases), and the filters and the search
show exactly the rows the parquet files say they should. A screenshot is kept under the test's tmp folder.

The same run's console (stdout a pipe) is checked for the live progress of :mod:`finephrase.progress`; ``-v`` and
a pseudo-terminal are checked on copies of its finished output (every stage is skipped: seconds, not a new run).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FAST_GENERATOR, TITLE_PROMPT, run_cli, write_recipe

PLANTED = "Quillfeather-7731 zephyrine"
N_DOCS = 6


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, demo_data):
    tmp = tmp_path_factory.mktemp("report")
    from conftest import first_demo_docs

    docs = first_demo_docs(demo_data, N_DOCS)
    docs[1]["text"] = f"{PLANTED} is the name of this example.\n" + docs[1]["text"]
    (tmp / "src").mkdir()
    with gzip.open(tmp / "src" / "docs.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    (tmp / "title.yaml").write_text(TITLE_PROMPT)
    recipe = write_recipe(tmp / "recipe.yaml", {"generator": FAST_GENERATOR, "source": {"path": str(tmp / "src")},
                                                "prompts": ["finephrase/faq", str(tmp / "title.yaml")]})
    out = tmp / "out"
    proc = run_cli("run", str(recipe), "--output", str(out))
    return {"out": out, "proc": proc, "planted_id": docs[1]["id"], "tmp": tmp}


def _rows(out: Path, config: str) -> list[dict]:
    return pq.read_table(out / "data" / config).to_pylist()


def _page_data(html: str) -> dict:
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.DOTALL)
    return json.loads(m.group(1))


# --- the file ---------------------------------------------------------------------------------------------------


def test_a_run_writes_a_self_contained_report(report_run):
    out = report_run["out"]
    assert "report.html" in report_run["proc"].stdout  # the run says where it is
    html = (out / "report.html").read_text(encoding="utf-8")
    # nothing is fetched: no external script, stylesheet, image or font
    assert not re.search(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=", html, re.IGNORECASE)
    assert "Chart.js v4" in html and "default-src 'none'" in html
    data = _page_data(html)
    report = json.loads((out / ".finephrase" / "report.json").read_text())
    assert [c["name"] for c in data["configs"]] == ["faq", "title"]  # the mix has no source beside it: not sampled
    for c in data["configs"]:
        rows = _rows(out, c["name"])
        assert c["rows"] == len(rows) == next(r["rows"] for r in report["configs"] if r["name"] == c["name"])
        assert c["shown"] == len(rows) == sum(s["config"] == c["name"] for s in data["samples"])
    # the funnel is the run report's counts
    counts = report["counts"]
    funnel = {s["step"]: s for s in data["funnel"]}
    assert funnel["read"]["kept"] == counts["documents_read"] == N_DOCS
    assert funnel["faq: output rules"]["kept"] == counts["prompts"]["faq"]["rows"]
    assert funnel["faq: output rules"]["flagged"] == counts["prompts"]["faq"]["flagged"]
    assert data["charts"]["funnel"]["data"]["labels"] == [s["step"] for s in data["funnel"]]


def test_report_matches_the_card(report_run):
    """Generator, throughput and prompt hashes: the same numbers as the dataset card."""
    out = report_run["out"]
    html = (out / "report.html").read_text(encoding="utf-8")
    card = (out / "README.md").read_text(encoding="utf-8")
    throughput = re.search(r"\| throughput \| ([0-9.]+) generated tokens/s", card).group(1)
    assert re.search(rf'<td id="throughput">{re.escape(throughput)} generated tokens/s', html)
    for name in ("faq", "title"):
        sha = _rows(out, name)[0]["prompt_sha256"]
        assert sha in card and f'<code class="sha256">{sha}</code>' in html
    assert "Rewrite the document as a comprehensive FAQ" in html  # the prompt verbatim
    assert "/tmp/" not in re.sub(r"<script.*?</script>", "", html, flags=re.DOTALL)  # no local path in the text


def test_the_push_publishes_the_report(report_run):
    from finephrase.hub import local_files

    out = report_run["out"]
    page = {f.path_in_repo: f for f in local_files(str(out))}["report.html"]
    assert page.source == str(out / "report.html") and page.size == (out / "report.html").stat().st_size


def test_report_command_bounds_the_samples(report_run, tmp_path):
    """``finephrase report`` rewrites the page; ``--samples`` bounds the rows shown per config, and they are the same
    source documents in every config."""
    out = tmp_path / "copy"
    shutil.copytree(report_run["out"], out)
    (out / "report.html").unlink()
    proc = run_cli("report", str(out), "--samples", "2")
    assert str(out / "report.html") in proc.stdout.replace("\n", "")
    data = _page_data((out / "report.html").read_text(encoding="utf-8"))
    by_config = {c["name"]: {s["source_id"] for s in data["samples"] if s["config"] == c["name"]}
                 for c in data["configs"]}
    assert all(len(ids) == 2 for ids in by_config.values()), by_config
    common = set.intersection(*[{r["source_id"] for r in _rows(out, c)} for c in by_config])
    if len(common) >= 2:
        assert by_config["faq"] == by_config["title"]


def test_report_stays_small_at_100k_rows(report_run, tmp_path):
    """100k rows in a config (the run's rows, repeated with new ids): the page shows 200 of them and stays small;
    the distributions count all of them."""
    out = tmp_path / "big"
    shutil.copytree(report_run["out"], out)
    table = pq.read_table(out / "data" / "faq")
    n = 100_000
    big = table.take([i % table.num_rows for i in range(n)])
    big = big.set_column(big.schema.get_field_index("source_id"), "source_id",
                         pa.array([f"doc-{i}" for i in range(n)]))
    for f in (out / "data" / "faq").glob("*.parquet"):
        f.unlink()
    pq.write_table(big, out / "data" / "faq" / "00000.parquet", row_group_size=5000)
    run_cli("report", str(out))
    html = (out / "report.html").read_text(encoding="utf-8")
    data = _page_data(html)
    faq = next(c for c in data["configs"] if c["name"] == "faq")
    assert faq["rows"] == n and faq["shown"] == 200
    assert sum(data["charts"]["completion_tokens"]["data"]["datasets"][0]["data"]) == n
    assert len(html) < 8_000_000, len(html)


# --- in a browser -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("no chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True,
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    "--disable-background-networking"])
        yield b
        b.close()


def _visible(page) -> list[tuple[str, str]]:
    return [tuple(x) for x in page.eval_on_selector_all("#sample-list article",
                                                      "els => els.map(e => [e.dataset.config, e.dataset.id])")]


def _blank(page, key: str) -> bool:
    return page.evaluate("""key => {
        const c = document.getElementById('chart-' + key);
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) return false;
        return true; }""", key)


def test_the_page_in_chromium(report_run, browser, tmp_path):
    out = report_run["out"]
    rows = {c: _rows(out, c) for c in ("faq", "title")}
    everything = sorted((c, r["id"]) for c, rs in rows.items() for r in rs)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto((out / "report.html").as_uri())
    page.wait_for_load_state("load")
    assert errors == []
    assert [u for u in requests if not u.startswith("file://")] == []

    # the funnel and the distributions: Chart.js charts with the report's numbers, drawn
    kept = page.evaluate("Chart.getChart('chart-funnel').data.datasets[0].data")
    assert kept[0] == N_DOCS
    for key in ("funnel", "lengths", "ratio", "completion_tokens", "source_tokens", "finish_reason", "flags",
                "quality_score", "language_score"):
        assert page.evaluate(f"!!Chart.getChart('chart-{key}')"), key
        assert not _blank(page, key), key

    assert sorted(_visible(page)) == everything
    # by config
    page.select_option("#f-config", "title")
    assert sorted(_visible(page)) == sorted(("title", r["id"]) for r in rows["title"])
    page.select_option("#f-config", "")
    # by flag: exactly the rows whose checks carry it (and not every row: the filter must change what is shown)
    flagged = sorted((c, r["id"]) for c, rs in rows.items() for r in rs if "failed:truncated" in (r["checks"] or ""))
    assert 0 < len(flagged) < len(everything)
    page.select_option("#f-flag", "failed:truncated")
    assert sorted(_visible(page)) == flagged
    page.select_option("#f-flag", "-")
    assert sorted(_visible(page)) == sorted((c, r["id"]) for c, rs in rows.items() for r in rs if not r["checks"])
    page.select_option("#f-flag", "")
    # by finish reason
    page.select_option("#f-finish", "length")
    assert sorted(_visible(page)) == sorted((c, r["id"]) for c, rs in rows.items() for r in rs
                                            if r["finish_reason"] == "length")
    page.select_option("#f-finish", "")
    # search: the planted string is in one source document
    page.fill("#f-search", PLANTED.split()[0])
    planted = sorted((c, r["id"]) for c, rs in rows.items() for r in rs if r["source_id"] == report_run["planted_id"])
    assert planted and sorted(_visible(page)) == planted
    assert page.locator("#sample-list mark").first.inner_text() == PLANTED.split()[0]
    assert f"{len(planted)} of {len(everything)} sampled rows match" in page.inner_text("#sample-count")
    page.fill("#f-search", "")
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert errors == []
    page.close()


# --- the console of a run (finephrase.progress) ------------------------------------------------------------------

ESCAPE = re.compile(r"\x1b[\[\]()]")
SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def test_a_run_on_a_pipe_prints_progress_lines_not_the_log(report_run):
    """The fixture's run had a pipe for stdout: plain progress lines (no escape code), each stage's end, the
    rephrase stage's documents and requests; datatrove's log went to the run's files; <= 40 lines in all."""
    proc, out = report_run["proc"], report_run["out"]
    assert not ESCAPE.search(proc.stdout) and not ESCAPE.search(proc.stderr)
    lines = proc.stdout.splitlines()
    for stage in ("filter", "minhash-signatures", "rephrase", "rows", "mix"):
        assert any(re.match(rf"✓ {stage} +\d+/\d+ tasks", line) for line in lines), (stage, proc.stdout)
    assert any(re.search(r"^> rephrase .*documents \d+/\d+ · requests \d+ done", line) for line in lines), proc.stdout
    assert "finephrase run: " in proc.stdout  # the summary table stays
    console = (proc.stdout + proc.stderr).splitlines()
    assert len(console) <= 40, "\n".join(console)
    assert "Launching pipeline for rank=0" not in proc.stderr  # datatrove's INFO lines: in the log file
    log = (out / ".finephrase" / "logs" / "console.log").read_text()
    assert "Launching pipeline for rank=0" in log and "Model call" in log
    progress = json.loads((out / ".finephrase" / "progress" / "rephrase-00000.json").read_text())
    assert progress["documents"] == json.loads((out / ".finephrase" / "report.json").read_text())[
        "counts"]["rephrase_documents"]
    assert progress["ok"] == progress["requests"] > 0 and progress["replicas_healthy"] == progress["replicas"] > 0


def test_verbose_prints_datatroves_log(report_run, tmp_path):
    """``-v`` on a finished output (every stage is skipped): datatrove's log on the console, as before."""
    out = tmp_path / "again"
    shutil.copytree(report_run["out"], out)
    proc = run_cli("run", str(out / "recipe.yaml"), "--output", str(out), "-v")
    assert "Not doing anything as all" in proc.stderr
    assert "✓ filter" not in proc.stdout and "finephrase run: " in proc.stdout


def test_a_terminal_gets_the_live_display(report_run, tmp_path):
    """Under a pseudo-terminal (``script``) on a finished output: the live region is drawn (escape codes), every
    stage shows as done by the earlier run, and the summary table ends the output."""
    if shutil.which("script") is None:
        pytest.skip("no `script` (util-linux)")
    import shlex
    import subprocess
    import sys

    out = tmp_path / "tty"
    shutil.copytree(report_run["out"], out)
    cmd = shlex.join([sys.executable, "-m", "finephrase.cli.main", "run", str(out / "recipe.yaml"), "--output", str(out)])
    proc = subprocess.run(["script", "-qefc", cmd, "/dev/null"], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "COLUMNS": "160"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    screen = proc.stdout
    assert ESCAPE.search(screen)  # drawn in place
    plain = SEQUENCE.sub("", screen)
    assert "rephrase" in plain and "(done by an earlier run)" in plain
    assert plain.rstrip().splitlines()[-1].startswith("report: ")
    assert plain.index("(done by an earlier run)") < plain.index("finephrase run: ")
