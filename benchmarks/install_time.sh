#!/usr/bin/env bash
# What `make demo` installs (no extras), timed for two trees alternating: a fresh venv, then
# `pip install --quiet -c constraints.txt -e TREE`; wall seconds, the load average before and
# after, and the packages installed. Use clones, not a checkout others use (the editable install
# writes src/*.egg-info into the tree).
#   benchmarks/install_time.sh OLD_TREE NEW_TREE [REPEATS] [WORK_DIR]
# OLD_PIP_ARGS / NEW_PIP_ARGS: extra pip options for each side (e.g. NEW_PIP_ARGS=--no-compile with
# the same tree twice). After each install, the first import of what the demo imports is timed too
# (the bytecode pip did not compile is written then).
set -u
OLD_PIP_ARGS=${OLD_PIP_ARGS:-}; NEW_PIP_ARGS=${NEW_PIP_ARGS:-}
old=$1; new=$2; repeats=${3:-2}; work=${4:-/tmp/install_time}
mkdir -p "$work"
for ((r = 0; r < repeats; r++)); do
  if ((r % 2 == 0)); then order="old new"; else order="new old"; fi
  for t in $order; do
    tree=$old; [ "$t" = new ] && tree=$new
    v=$work/venv_$t; rm -rf "$v"
    l0=$(cut -d' ' -f1 /proc/loadavg); s=$(date +%s.%N)
    args=$OLD_PIP_ARGS; [ "$t" = new ] && args=$NEW_PIP_ARGS
    python3 -m venv "$v" && "$v/bin/python" -m pip install --quiet $args \
      -c "$tree/constraints.txt" -e "$tree" 2>&1 | grep -v "^WARNING: Location"
    e=$(date +%s.%N); l1=$(cut -d' ' -f1 /proc/loadavg)
    "$v/bin/python" -c "import eclip.demo, eclip.tasks.suite, eclip.train.trainer, eclip.model.load, sklearn.linear_model, faiss" 
    i=$(date +%s.%N)
    echo "repeat $r $t $(echo "$e - $s" | bc) s install, $(echo "$i - $e" | bc) s first import," \
      "load $l0 -> $l1 packages $("$v/bin/python" -m pip list 2>/dev/null | tail -n +3 | wc -l)"
  done
done
