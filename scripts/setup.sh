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
  # the demo's install (no extras) skips compiling bytecode: the few modules a demo imports are
  # compiled at that first import (about 3 s) instead of every installed module now (about 30 s);
  # the test install compiles (the suite's many processes ran slower without; docs/BENCHMARKS.md)
  compile=$([ -z "$EXTRAS" ] && echo --no-compile || true)
  .venv/bin/python -m pip install --quiet $compile -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
  echo "$want" > "$stamp"
fi
