#!/usr/bin/env bash
# Create .venv and install eclip (with the extras named in EXTRAS: `make test` passes "test", which
# brings the test tools and the optional engines, Ray and Milvus Lite; `make demo` needs none). torch
# is pinned through constraints.txt so that no step can pull a CUDA build. Re-running is cheap: it
# reinstalls only when pyproject.toml or the extras changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "eclip needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
EXTRAS=${EXTRAS-test}
stamp=.venv/.eclip-installed${EXTRAS:+-$EXTRAS}
want=$(cat pyproject.toml constraints.txt | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # --no-compile: the bytecode of the few modules a run imports is written at that first import
  # (about 3 s), not of every installed module now (about 30 s; docs/BENCHMARKS.md)
  .venv/bin/python -m pip install --quiet --no-compile -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
  echo "$want" > "$stamp"
fi
