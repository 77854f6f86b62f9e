#!/usr/bin/env bash
# What `make demo` installs (no extras), timed for two trees alternating: a fresh venv, then
# `pip install --quiet -c constraints.txt -e TREE`; wall seconds, the load average before and
# after, and the packages installed. Use clones, not a checkout others use (the editable install
# writes src/*.egg-info into the tree).
#   benchmarks/install_time.sh OLD_TREE NEW_TREE [REPEATS] [WORK_DIR]
set -u
old=$1; new=$2; repeats=${3:-2}; work=${4:-/tmp/install_time}
mkdir -p "$work"
for ((r = 0; r < repeats; r++)); do
  if ((r % 2 == 0)); then order="old new"; else order="new old"; fi
  for t in $order; do
    tree=$old; [ "$t" = new ] && tree=$new
    v=$work/venv_$t; rm -rf "$v"
    l0=$(cut -d' ' -f1 /proc/loadavg); s=$(date +%s.%N)
    python3 -m venv "$v" && "$v/bin/python" -m pip install --quiet -c "$tree/constraints.txt" \
      -e "$tree" 2>&1 | grep -v "^WARNING: Location"
    e=$(date +%s.%N); l1=$(cut -d' ' -f1 /proc/loadavg)
    echo "repeat $r $t $(echo "$e - $s" | bc) s load $l0 -> $l1 packages" \
      "$("$v/bin/python" -m pip list 2>/dev/null | tail -n +3 | wc -l)"
  done
done
