#!/usr/bin/env bash
# Verify the patches in docs/upstream/ against the installed datatrove 0.10.1.
#
#   docs/upstream/verify/verify.sh [PYTHON] [UPSTREAM_TESTS_DIR]
#
# PYTHON: an interpreter with datatrove 0.10.1 and its inference extras installed (default: .venv/bin/python).
# UPSTREAM_TESTS_DIR: optional, a folder holding datatrove's tests/ (e.g. `git archive v0.10.0 tests | tar -x`);
# when given, tests/pipeline/inference/test_inference.py and tests/pipeline/writers/test_disk_writer.py run
# against the pristine copy and against the fully patched copy.
#
# For each patch: a fresh copy of the installed package laid out as src/datatrove, `patch -p1 --dry-run`, then the
# real `patch -p1` (no .rej / no fuzz allowed), an import of the touched modules, and smoke.py (datatrove's own
# InferenceRunner against a loopback aiohttp server). Then all patches stacked in order: same checks plus
# hooks_check.py (every new public API). Work folder: $WORK (default /tmp/upstream-verify).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PATCHES="$(dirname "$HERE")"
PY="${1:-$(git -C "$HERE" rev-parse --show-toplevel)/.venv/bin/python}"
TESTS="${2:-}"
WORK="${WORK:-/tmp/upstream-verify}"
SITE="$("$PY" -c 'import datatrove, os; print(os.path.dirname(datatrove.__file__))')"
VERSION="$("$PY" -c 'from importlib.metadata import version; print(version("datatrove"))')"
echo "datatrove $VERSION from $SITE"
rm -rf "$WORK" && mkdir -p "$WORK"

fresh() {  # fresh copy of the installed package in $WORK/$1/src/datatrove
  mkdir -p "$WORK/$1/src"
  cp -r "$SITE" "$WORK/$1/src/"
  find "$WORK/$1" -name __pycache__ -prune -exec rm -rf {} +
}

apply() {  # apply patch $2 in $WORK/$1, failing on rejects or fuzz
  local out
  (cd "$WORK/$1" && patch -p1 --dry-run --fuzz=0 < "$2" > /dev/null)
  out="$(cd "$WORK/$1" && patch -p1 --fuzz=0 --no-backup-if-mismatch < "$2")"
  echo "$out" | sed 's/^/    /'
  if find "$WORK/$1" -name '*.rej' -o -name '*.orig' | grep -q .; then echo "rejects in $1"; exit 1; fi
}

check() {  # import + smoke against $WORK/$1
  PYTHONPATH="$WORK/$1/src" "$PY" -c '
import datatrove, datatrove.pipeline.inference.run_inference, datatrove.pipeline.inference.checkpointing
import datatrove.pipeline.inference.servers.base, datatrove.pipeline.writers.jsonl
print("    import ok:", datatrove.__file__)'
  local out
  out="$(cd "$HERE" && PYTHONPATH="$WORK/$1/src" timeout 300 "$PY" smoke.py 2>&1)" || { echo "$out" | tail -20; echo "smoke failed for $1"; exit 1; }
  echo "$out" | grep -v "| WARNING\|| INFO" | grep -E " ok|OK|raised|checkpoint files" | sed 's/^/    /'
}

echo "== pristine"
fresh pristine
check pristine
for p in "$PATCHES"/[0-9][0-9]-*.patch; do
  name="$(basename "$p" .patch)"
  echo "== $name (alone, on $VERSION)"
  fresh "$name"
  apply "$name" "$p"
  check "$name"
done

echo "== all patches stacked in order"
fresh stack
for p in "$PATCHES"/[0-9][0-9]-*.patch; do
  echo "  + $(basename "$p")"
  apply stack "$p"
done
check stack
out="$(cd "$HERE" && PYTHONPATH="$WORK/stack/src" timeout 300 "$PY" hooks_check.py 2>&1)" || { echo "$out" | tail -20; echo "hooks_check failed"; exit 1; }
echo "$out" | grep -v "| WARNING\|| INFO" | grep -E " ok|OK" | sed 's/^/    /'
echo "== RequestCache.flush under a steady stream of rows (pristine, then stacked)"
(cd "$HERE" && PYTHONPATH="$WORK/pristine/src" timeout 120 "$PY" hooks_check.py --flush-only 2>&1 | tail -1 | sed 's/^/    pristine: /')
(cd "$HERE" && PYTHONPATH="$WORK/stack/src" timeout 120 "$PY" hooks_check.py --flush-only 2>&1 | tail -1 | sed 's/^/    stacked:  /')

if [ -n "$TESTS" ]; then
  for v in pristine stack; do
    echo "== datatrove's own tests against $v"
    (cd "$TESTS" && PYTHONPATH="$WORK/$v/src" timeout 900 "$PY" -m pytest -q -p no:cacheprovider \
      tests/pipeline/inference/test_inference.py tests/pipeline/writers/test_disk_writer.py 2>&1 | tail -1 | sed 's/^/    /')
  done
fi
echo "VERIFY OK"
