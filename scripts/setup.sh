#!/usr/bin/env bash
# Create .venv and install eclip with its test tools. torch is pinned through constraints.txt so that
# no step can pull a CUDA build. Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "eclip needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.eclip-installed
want=$(cat pyproject.toml constraints.txt | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
