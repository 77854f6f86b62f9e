"""GPU training figures in one run: pairs/s, MFU and peak memory against the contrastive batch size.

On one CUDA device, in bf16, for two models built from their configs with random weights (the
shapes are what matter for speed; nothing is downloaded):

- ``vit_b16_bert``: eclip's dual encoder with a ViT-B/16 image tower (transformers ``ViTConfig``
  defaults: width 768, 12 layers, 12 heads, patch 16, 224 px) and a BERT-base text tower
  (``BertConfig`` defaults), mean-pooled, projected to 512;
- ``clip_vit_b16``: CLIP ViT-B/16 (vision as above; text width 512, 12 layers, 8 heads, 77 tokens),
  saved as a transformers ``CLIPModel`` directory and opened the way a user starts from a
  checkpoint (``eclip.model.load_model``); and the same model in open_clip (``open_clip.CLIP``
  with the ``ViT-B-16`` config), run by the python of a side environment (``--open-clip-python``).
  open_clip's ViT + BERT would be a ``CustomTextCLIP`` whose text tower comes from the Hugging Face
  hub, so the side-by-side comparison is on CLIP ViT-B/16 only.

eclip's step is the trainer's own parts: ``Embedder`` + ``WholeBatchStep`` (one micro-batch) or
``MultiStreamStep`` (several), the catalog-aware ``ContrastiveLoss`` (catalog ids in pairs, rows
chunked), ``Precision`` (bf16 autocast, clipping, AdamW). open_clip's is ``ClipLoss`` and, above one
micro-batch, the feature caching of open_clip_train's ``--accum-freq`` (embed every micro-batch
without gradients, then re-embed each with gradients and back-propagate the loss over the whole
batch).

Per (implementation, model), in a fresh process:

1. throughput at ``--batch`` (one micro-batch, no streams): ``--warmup`` steps, then ``--steps`` timed
   steps (synchronised with the device); pairs/s as median, min and max over the timed steps;
2. FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + loss + backward pass (the
   optimizer's element-wise work is not counted, nor are norms, softmax and activations: the usual
   matrix-product count). Attention is counted as full (non-causal) products. The model's forward
   pass alone is counted too and compared with a closed form (:func:`analytic_forward_flops`);
3. MFU = counted FLOPs per step / median step time / the device's dense bf16 peak
   (:data:`PEAK_BF16_TFLOPS`, or ``--peak-tflops``);
4. peak memory (``torch.cuda.max_memory_allocated``, reset before each size) against the
   contrastive batch size (``--sizes``, default 1k, 4k, 16k, 64k) in micro-batches of ``--micro``
   (streams = size / micro) with the loss chunked to ``--chunk`` rows. The inputs sit on the device
   as the trainer puts them there (float32 pixels: 37 GiB at 64k for 224 px), reported separately.
   MFU here counts model FLOPs (the towers' FLOPs per pair from step 2 times the batch, plus the
   loss's, which grow as B^2), not the second forward pass of the streams.

``--budget-s`` (default 420) bounds the whole run: each (implementation, model) process gets an
equal share of the time left, a size whose predicted time does not fit in its share is skipped with
a note, and a process still running 30 s after its share is stopped (its rows so far are kept), so
the script ends within about 8 minutes. A size that runs out of device memory is reported as such. Output: a JSON file (``--out``) and Markdown tables on stdout.

    python benchmarks/gpu_train.py --out gpu.json --open-clip-python /path/to/ocvenv/bin/python
    python benchmarks/gpu_train.py --device cpu --tiny --out tiny.json   # the CPU check (seconds)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets, which print the
# sparse figure with a footnote that dense is half of it: H100 SXM / H200 SXM 1,979 sparse -> 989;
# H100 NVL / H200 NVL 1,671 -> 835; H100 PCIe 1,513 -> 756; A100 (SXM and PCIe) 312 dense;
# L40S 733 -> 366 (its datasheet prints 362.05 dense); L4 242 -> 121; A10 250 -> 125.
# The first entry whose key is in torch.cuda.get_device_name() wins, so longer names come first.
# AWS's A10G is not an A10 and has no datasheet figure here: give --peak-tflops.
PEAK_BF16_TFLOPS: list[tuple[str, float | None]] = [
    ("H200 NVL", 835.0), ("H200", 989.0),
    ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0), ("L4", 121.0),
    ("A10G", None), ("A10", 125.0),
]

MODELS = ("vit_b16_bert", "clip_vit_b16")
IMPLS = {"vit_b16_bert": ("eclip",), "clip_vit_b16": ("eclip", "open_clip")}

_VIT_B16 = {"width": 768, "layers": 12, "heads": 12, "mlp": 3072, "patch": 16, "image": 224}
_VIT_TINY = {"width": 64, "layers": 2, "heads": 2, "mlp": 256, "patch": 8, "image": 32}
SPECS: dict[bool, dict[str, dict]] = {
    False: {
        "vit_b16_bert": {"vision": _VIT_B16, "embed": 512,
                         "text": {"kind": "bert", "width": 768, "layers": 12, "heads": 12, "mlp": 3072,
                                  "vocab": 30522, "context": 77, "positions": 512}},
        "clip_vit_b16": {"vision": _VIT_B16, "embed": 512,
                         "text": {"kind": "clip", "width": 512, "layers": 12, "heads": 8, "mlp": 2048,
                                  "vocab": 49408, "context": 77, "positions": 77}},
    },
    True: {  # --tiny: 2 layers, width 64, 32 px
        "vit_b16_bert": {"vision": _VIT_TINY, "embed": 32,
                         "text": {"kind": "bert", "width": 64, "layers": 2, "heads": 2, "mlp": 256,
                                  "vocab": 1000, "context": 16, "positions": 64}},
        "clip_vit_b16": {"vision": _VIT_TINY, "embed": 32,
                         "text": {"kind": "clip", "width": 64, "layers": 2, "heads": 2, "mlp": 256,
                                  "vocab": 1000, "context": 16, "positions": 16}},
    },
}
# per --tiny: batch, micro, sizes, chunk, warmup, steps
DEFAULTS = {False: {"batch": 256, "micro": 256, "sizes": "1024,4096,16384,65536", "chunk": 4096,
                    "warmup": 3, "steps": 10},
            True: {"batch": 8, "micro": 8, "sizes": "16,32,64", "chunk": 16, "warmup": 1, "steps": 3}}
MIB = 2 ** 20
# sweep sizes above this run without warm-up steps: the micro-batches have the shapes of the
# smaller sizes', whose steps warmed the kernels up, and their steps take seconds
WARM_SWEEP_UP_TO = 4096
# seconds a worker may run past the budget (its step in flight) before it is stopped
GRACE_S = 30


# ------------------------------------------------------------------------------------ FLOP counts
def _attention_forward(q, k, v) -> int:
    """Matrix-product FLOPs of softmax(q k^T) v for [b, h, s, d] shapes (q k^T, then times v)."""
    b, h, sq, dq = q
    sk, dv = k[2], v[3]
    return 2 * b * h * sq * sk * dq + 2 * b * h * sq * sk * dv


def _attention_backward(grad_out, q, k, v) -> int:
    """The backward pass of the same: the scores again, then dP, dV, dQ and dK."""
    b, h, sq, dq = q
    sk, dv = k[2], v[3]
    return 2 * b * h * sq * sk * (dq + dv + dv + dq + dq)


def flop_mapping() -> dict:
    """FLOP formulas for the CPU's fused attention kernels, which torch's counter does not know
    (CUDA's flash / memory-efficient / cuDNN kernels it counts itself, with the same products)."""
    import torch
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return _attention_forward(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return _attention_backward(grad_out, query, key, value)

    mapping = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", forward),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", backward)):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry:
            mapping[op] = formula
    return mapping


def count_flops(fn) -> tuple[object, int]:
    """``fn()``'s result and the FLOPs of the matrix products it ran (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=flop_mapping())
    with counter:
        result = fn()
    return result, int(counter.get_total_flops())


def _encoder_flops(tokens: int, width: int, layers: int, mlp: int) -> int:
    """Per sequence: q, k, v and output projections, the MLP, and the two attention products."""
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp) + 2 * 2 * tokens * tokens * width
    return layers * per_layer


def analytic_forward_flops(spec: dict, batch: int) -> int:
    """Closed-form matrix-product FLOPs of one forward pass of the two towers and projections."""
    vision, text, embed = spec["vision"], spec["text"], spec["embed"]
    patches = (vision["image"] // vision["patch"]) ** 2
    image = (2 * patches * 3 * vision["patch"] ** 2 * vision["width"]  # the patch convolution
             + _encoder_flops(patches + 1, vision["width"], vision["layers"], vision["mlp"])
             + 2 * vision["width"] * embed)
    words = (_encoder_flops(text["context"], text["width"], text["layers"], text["mlp"])
             + 2 * text["width"] * embed)
    return batch * (image + words)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


# ------------------------------------------------------------------------------------- the models
def _build_eclip(name: str, spec: dict, workdir: Path):
    """eclip's DualEncoder for ``name``: ViT + BERT from configs, or CLIP through load_model."""
    from eclip.model import DualEncoder, DualEncoderConfig, load_model, train_tokenizer

    vision, text = spec["vision"], spec["text"]
    tokenizer = train_tokenizer([f"word{i} item{i}" for i in range(50)], 100)
    if name == "vit_b16_bert":
        text_cfg = {"model_type": "bert", "vocab_size": text["vocab"], "hidden_size": text["width"],
                    "num_hidden_layers": text["layers"], "num_attention_heads": text["heads"],
                    "intermediate_size": text["mlp"], "max_position_embeddings": text["positions"]}
        image_cfg = {"model_type": "vit", "hidden_size": vision["width"],
                     "num_hidden_layers": vision["layers"], "num_attention_heads": vision["heads"],
                     "intermediate_size": vision["mlp"], "image_size": vision["image"],
                     "patch_size": vision["patch"]}
        config = DualEncoderConfig(text_tower="scratch", text_hf_config=text_cfg, image_tower="vit",
                                   image_hf_config=image_cfg, image_size=vision["image"],
                                   max_length=text["context"], embed_dim=spec["embed"], pretrained=False)
        return DualEncoder.build(config, tokenizer=tokenizer)
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": text["vocab"], "hidden_size": text["width"],
                     "num_hidden_layers": text["layers"], "num_attention_heads": text["heads"],
                     "intermediate_size": text["mlp"], "max_position_embeddings": text["positions"]},
        vision_config={"hidden_size": vision["width"], "num_hidden_layers": vision["layers"],
                       "num_attention_heads": vision["heads"], "intermediate_size": vision["mlp"],
                       "image_size": vision["image"], "patch_size": vision["patch"]},
        projection_dim=spec["embed"])
    directory = workdir / "clip_checkpoint"
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    side = vision["image"]  # CLIP's preprocessing: shortest edge, centre crop, bicubic, its mean/std
    preprocessor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
                    "size": {"shortest_edge": side}, "resample": 3, "do_center_crop": True,
                    "crop_size": {"height": side, "width": side}, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True,
                    "image_mean": [0.48145466, 0.4578275, 0.40821073],
                    "image_std": [0.26862954, 0.26130258, 0.27577711]}
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor), encoding="utf-8")
    return load_model(directory)


class EclipRunner:
    """eclip's training step on ``device``: the trainer's embedder, step strategies, loss, precision."""

    def __init__(self, name: str, spec: dict, device, precision: str, chunk: int | None, workdir: Path):
        # this checkout's eclip, also from a python whose environment does not install it
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        import torch
        from eclip.train.accumulate import Embedder, MultiStreamStep, WholeBatchStep
        from eclip.train.features import pixel_input
        from eclip.train.loss import ContrastiveLoss
        from eclip.train.precision import Precision

        self.model = _build_eclip(name, spec, workdir).to(device).train()
        self.embedder = Embedder(self.model, pixel_input)
        self.whole, self.streams = WholeBatchStep(), MultiStreamStep()
        self.loss_fn = ContrastiveLoss("catalog", chunk_size=chunk)
        self.precision = Precision(precision, device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.text_rows = self.model.text_tower.model.get_input_embeddings().num_embeddings

    def forward(self, unit: dict) -> None:
        import torch

        with torch.no_grad(), self.precision.autocast():
            self.embedder(unit)

    def grads(self, units: list[dict]) -> float:
        step = self.whole if len(units) == 1 else self.streams
        return step(self.embedder, units, self.loss_fn, self.precision)

    def step(self, units: list[dict]) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.grads(units)
        self.precision.step(self.optimizer, self.params, 1.0)
        return loss

    def loss_pass(self, image, text, scale, groups) -> None:
        self.loss_fn(image, text, scale, groups).backward()


class OpenClipRunner:
    """open_clip's CLIP ViT-B/16 (``ViT-B-16`` config, no weights), ``ClipLoss``, ``--accum-freq``
    style feature caching above one micro-batch; autocast like open_clip_train's ``amp_bf16``."""

    def __init__(self, name: str, spec: dict, device, precision: str, chunk: int | None, workdir: Path):
        import open_clip
        import torch
        from open_clip.loss import ClipLoss

        if name != "clip_vit_b16":
            raise SystemExit(f"open_clip runs only clip_vit_b16 here, not {name}")
        vision, text = spec["vision"], spec["text"]
        self.model = open_clip.CLIP(
            spec["embed"],
            vision_cfg={"image_size": vision["image"], "layers": vision["layers"], "width": vision["width"],
                        "patch_size": vision["patch"], "head_width": vision["width"] // vision["heads"],
                        "mlp_ratio": vision["mlp"] / vision["width"]},
            text_cfg={"context_length": text["context"], "vocab_size": text["vocab"], "width": text["width"],
                      "heads": text["heads"], "layers": text["layers"],
                      "mlp_ratio": text["mlp"] / text["width"]}).to(device).train()
        self.loss_fn = ClipLoss()
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.device = device
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.text_rows = text["vocab"]

    def _autocast(self):
        import torch
        from contextlib import nullcontext

        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def _embed(self, unit):
        out = self.model(unit["pixel_values"], unit["input_ids"])
        return out[0], out[1], out[2]

    def forward(self, unit: dict) -> None:
        import torch

        with torch.no_grad(), self._autocast():
            self._embed(unit)

    def grads(self, units: list[dict]) -> float:
        import torch

        if len(units) == 1:
            with self._autocast():
                image, text, scale = self._embed(units[0])
                loss = self.loss_fn(image, text, scale)
            loss.backward()
            return float(loss)
        with torch.no_grad(), self._autocast():
            cached = [self._embed(u)[:2] for u in units]
        for j, unit in enumerate(units):
            with self._autocast():
                image, text, scale = self._embed(unit)
                images = torch.cat([c[0] for c in cached[:j]] + [image] + [c[0] for c in cached[j + 1:]])
                texts = torch.cat([c[1] for c in cached[:j]] + [text] + [c[1] for c in cached[j + 1:]])
                loss = self.loss_fn(images, texts, scale)
            loss.backward()
        return float(loss)

    def step(self, units: list[dict]) -> float:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        loss = self.grads(units)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        return loss

    def loss_pass(self, image, text, scale, groups) -> None:
        self.loss_fn(image, text, scale).backward()


# --------------------------------------------------------------------------------- measurements
def make_units(spec: dict, size: int, micro: int, text_rows: int, device, seed: int = 0) -> list[dict]:
    """``size`` synthetic pairs in micro-batches on ``device``: float32 pixels, full-length token
    ids, catalog ids in pairs (two listings per catalog)."""
    import torch

    vision, text = spec["vision"], spec["text"]
    gen = torch.Generator(device=device).manual_seed(seed)
    units = []
    for start in range(0, size, micro):
        rows = min(micro, size - start)
        units.append({
            "pixel_values": torch.randn(rows, 3, vision["image"], vision["image"], generator=gen,
                                        device=device),
            "input_ids": torch.randint(1, text_rows, (rows, text["context"]), generator=gen, device=device),
            "attention_mask": torch.ones(rows, text["context"], dtype=torch.long, device=device),
            "group": (torch.arange(start, start + rows, device=device) // 2)})
    return units


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None


def _timed_steps(runner, units, device, count: int) -> tuple[list[float], float]:
    seconds, loss = [], float("nan")
    for _ in range(count):
        _sync(device)
        start = time.perf_counter()
        loss = runner.step(units)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds, loss


def _loss_flops(runner, batch: int, embed: int, device) -> int:
    """FLOPs of the loss alone, forward and backward, at ``batch`` rows."""
    import torch

    gen = torch.Generator(device=device).manual_seed(1)
    image = torch.nn.functional.normalize(torch.randn(batch, embed, generator=gen, device=device), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(batch, embed, generator=gen, device=device), dim=-1)
    image.requires_grad_()
    text.requires_grad_()
    scale = torch.tensor(14.0, device=device, requires_grad=True)
    groups = torch.arange(batch, device=device) // 2
    return count_flops(lambda: runner.loss_pass(image, text, scale, groups))[1]


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def worker(args) -> dict:
    """One (implementation, model) in this process: the throughput row, then the memory sweep."""
    import torch

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"no CUDA device: torch {torch.__version__} sees none "
                             "(--device cpu --tiny is the CPU check)")
        if device.index is None:  # torch.cuda.set_device wants an index: "cuda" is the current one
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    facts = {"name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
             "torch": torch.__version__, "cuda": torch.version.cuda}
    spec = SPECS[args.tiny][args.model]
    torch.manual_seed(0)
    rows: list[dict] = []
    base = {"impl": args.worker, "model": args.model, "precision": args.precision}

    def add(row: dict) -> None:
        """Keep ``row``, and write every row so far: a run stopped at the deadline keeps them."""
        rows.append(row)
        if args.worker_out:
            partial = Path(args.worker_out + ".part")
            partial.write_text(json.dumps({"device": facts, "rows": rows}), encoding="utf-8")
            os.replace(partial, args.worker_out)
    with tempfile.TemporaryDirectory(prefix="gpu_train_") as tmp:
        runner_class = EclipRunner if args.worker == "eclip" else OpenClipRunner
        runner = runner_class(args.model, spec, device, args.precision, args.chunk, Path(tmp))
    params = sum(p.numel() for p in runner.params)
    base["params_m"] = round(params / 1e6, 3)
    if args.flops_only:  # the FLOP accounting of the real shapes, without timing (any device)
        unit = make_units(spec, 1, 1, runner.text_rows, device)[0]
        add({**base, "kind": "flops", "batch": 1,
             "forward_flops_counted": count_flops(lambda: runner.forward(unit))[1],
             "forward_flops_analytic": analytic_forward_flops(spec, 1)})
        return {"device": facts, "rows": rows}
    model_mib = torch.cuda.memory_allocated(device) / MIB if device.type == "cuda" else None

    # 1-3: throughput, FLOPs, MFU at --batch (one micro-batch)
    units = make_units(spec, args.batch, args.batch, runner.text_rows, device)
    forward_flops = count_flops(lambda: runner.forward(units[0]))[1]
    runner.optimizer.zero_grad(set_to_none=True)
    step_flops = count_flops(lambda: runner.grads(units))[1]
    loss_flops = _loss_flops(runner, args.batch, spec["embed"], device)
    _reset_peak(device)
    for _ in range(args.warmup):
        runner.step(units)
    seconds, loss = _timed_steps(runner, units, device, args.steps)
    median = statistics.median(seconds)
    achieved = step_flops / median / 1e12
    tower_flops_per_pair = (step_flops - loss_flops) / args.batch
    add({**base, "kind": "throughput", "batch": args.batch, "micro": args.batch, "streams": 1,
                 "chunk": args.chunk, "steps": len(seconds), "step_s": seconds, "step_s_median": median,
                 "pairs_per_s": args.batch / median, "pairs_per_s_min": args.batch / max(seconds),
                 "pairs_per_s_max": args.batch / min(seconds),
                 "forward_flops_counted": forward_flops,
                 "forward_flops_analytic": analytic_forward_flops(spec, args.batch),
                 "flops_per_step": step_flops, "loss_flops": loss_flops,
                 "achieved_tflops": achieved,
                 "peak_mem_mib": _peak_mib(device), "model_mib": model_mib, "loss": loss})
    del units

    # 4: peak memory (and pairs/s, MFU) against the contrastive batch size
    last_rate = args.batch / median / 2  # streams run the forward pass twice
    out_of_memory = 0
    for size in sorted(args.sizes):
        row = {**base, "kind": "memory", "batch": size, "micro": args.micro,
               "streams": -(-size // args.micro), "chunk": args.chunk}
        warmup = args.sweep_warmup if size <= WARM_SWEEP_UP_TO else 0
        steps = warmup + args.sweep_steps
        predicted = steps * size / last_rate + 5
        left = args.deadline - time.time()
        if out_of_memory:
            add({**row, "skipped": f"batch {out_of_memory} ran out of memory"})
            continue
        if predicted > left:
            add({**row, "skipped": f"predicted {predicted:.0f} s, {max(left, 0):.0f} s of the "
                                           f"budget left"})
            continue
        units = None
        try:
            _reset_peak(device)
            units = make_units(spec, size, args.micro, runner.text_rows, device, seed=size)
            input_mib = sum(t.numel() * t.element_size() for u in units for t in u.values()) / MIB
            for _ in range(warmup):
                runner.step(units)
            seconds, loss = _timed_steps(runner, units, device, args.sweep_steps)
        except RuntimeError as err:
            if not _is_oom(err):
                raise
            out_of_memory = size
        if out_of_memory:  # after the except clause, so that its frames (and tensors) are gone
            peak = _peak_mib(device)
            units = None
            runner.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            add({**row, "error": "out of memory", "peak_mem_mib": peak})
            continue
        median = statistics.median(seconds)
        model_flops = tower_flops_per_pair * size + loss_flops * (size / args.batch) ** 2
        achieved = model_flops / median / 1e12
        add({**row, "steps": len(seconds), "step_s": seconds, "step_s_median": median,
                     "pairs_per_s": size / median, "model_flops_per_step": model_flops,
                     "achieved_tflops": achieved,
                     "peak_mem_mib": _peak_mib(device), "input_mib": input_mib, "loss": loss})
        last_rate = size / median
        del units
    return {"device": facts, "rows": rows}


# ------------------------------------------------------------------------------------- the driver
def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])
    except OSError:
        return None


def _run_worker(python: str, impl: str, model: str, args, deadline: float) -> dict:
    """One worker process; its device facts and rows, or a row saying why there are none."""
    with tempfile.TemporaryDirectory(prefix="gpu_train_rows_") as tmp:
        out = Path(tmp) / "rows.json"
        command = [python, str(Path(__file__).resolve()), "--worker", impl, "--model", model,
                   "--worker-out", str(out), "--deadline", str(deadline), "--device", args.device,
                   "--precision", args.precision, "--batch", str(args.batch), "--micro", str(args.micro),
                   "--sizes", ",".join(map(str, args.sizes)), "--chunk", str(args.chunk),
                   "--warmup", str(args.warmup), "--steps", str(args.steps),
                   "--sweep-warmup", str(args.sweep_warmup), "--sweep-steps", str(args.sweep_steps)]
        if args.tiny:
            command.append("--tiny")
        if args.flops_only:
            command.append("--flops-only")
        if args.threads:
            command += ["--threads", str(args.threads)]
        failed = {"impl": impl, "model": model, "kind": "throughput"}
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=max(deadline - time.time(), 0) + GRACE_S)
        except subprocess.TimeoutExpired:
            got = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {"rows": []}
            last = got["rows"][-1] if got["rows"] else failed
            got["rows"].append({**failed, "kind": last["kind"], "error": "stopped: ran past the budget "
                                f"after the row of batch {last.get('batch', '-')}"})
            return got
        got = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {"rows": []}
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            kind = got["rows"][-1]["kind"] if got["rows"] else "throughput"
            got["rows"].append({**failed, "kind": kind, "error": f"exit {done.returncode}: {last}"})
        return got


def _fmt(value, pattern: str = "{:.1f}", missing: str = "-") -> str:
    return missing if value is None else pattern.format(value)


def markdown(result: dict) -> str:
    """The run as Markdown: a header line, then a table per kind of row that the run has."""
    gib = (lambda mib: None if mib is None else mib / 1024)
    lines = [f"{result['device']} (torch {result['torch']}, CUDA {result['cuda'] or '-'}), {result['date']}, "
             f"bf16 peak {_fmt(result['peak_tflops'], '{:g}')} TFLOP/s ({result['peak_source']}); "
             f"load average {result['load_start']} at the start, {result['load_end']} at the end; "
             f"{result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget."]
    kinds = {kind: [r for r in result["rows"] if r.get("kind") == kind]
             for kind in ("flops", "throughput", "memory")}
    if kinds["flops"]:
        lines += ["", "| impl | model | params (M) | forward GFLOP per pair, counted | closed form |",
                  "|---|---|---|---|---|"]
        for r in kinds["flops"]:
            if "forward_flops_counted" not in r:
                lines.append(f"| {r['impl']} | {r['model']} | {r.get('error') or r.get('skipped')} | | |")
                continue
            lines.append(f"| {r['impl']} | {r['model']} | {r['params_m']:.1f} | "
                         f"{r['forward_flops_counted'] / 1e9:.3f} | "
                         f"{r['forward_flops_analytic'] / 1e9:.3f} |")
    if kinds["throughput"]:
        lines += ["", "| impl | model | params (M) | batch | pairs/s median (min-max) | forward FLOPs "
                  "counted / closed form | TFLOP per step | TFLOP/s | MFU | peak memory (GiB) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in kinds["throughput"]:
            if "error" in r or "skipped" in r:
                lines.append(f"| {r['impl']} | {r['model']} | | | {r.get('error') or r.get('skipped')} "
                             "| | | | | |")
                continue
            ratio = r["forward_flops_counted"] / r["forward_flops_analytic"]
            lines.append(
                f"| {r['impl']} | {r['model']} | {r['params_m']:.1f} | {r['batch']} | "
                f"{r['pairs_per_s']:.0f} ({r['pairs_per_s_min']:.0f}-{r['pairs_per_s_max']:.0f}) | "
                f"{ratio:.4f} | {r['flops_per_step'] / 1e12:.3g} | {r['achieved_tflops']:.3g} | "
                f"{_fmt(r['mfu'], '{:.1%}')} | {_fmt(gib(r['peak_mem_mib']), '{:.2f}')} |")
    if kinds["memory"]:
        lines += ["", "| impl | model | contrastive batch | micro x streams | loss chunk | peak memory "
                  "(GiB) | of which inputs (GiB) | step (s) | pairs/s | MFU (model FLOPs) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in kinds["memory"]:
            streams = f"{r['micro']} x {r['streams']}" if "streams" in r else "-"
            head = (f"| {r['impl']} | {r['model']} | {r.get('batch', '-')} | {streams} | "
                    f"{r.get('chunk', '-') if r['impl'] == 'eclip' else 'dense'}")
            if "skipped" in r or "error" in r:
                note = r.get("skipped") or r.get("error")
                lines.append(f"{head} | {_fmt(gib(r.get('peak_mem_mib')), '{:.2f}')} | | | {note} | |")
                continue
            lines.append(f"{head} | {_fmt(gib(r['peak_mem_mib']), '{:.2f}')} | {r['input_mib'] / 1024:.2f} "
                         f"| {r['step_s_median']:.2f} | {r['pairs_per_s']:.0f} "
                         f"| {_fmt(r['mfu'], '{:.1%}')} |")
    lines += [""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines)


def drive(args) -> dict:
    """Every (implementation, model) in its own process, within the budget; MFU from the peak."""
    start = time.time()
    deadline = start + args.budget_s
    facts: dict = {}
    notes: list[str] = []
    rows: list[dict] = []
    runs = []
    for model in args.models:
        for impl in IMPLS[model]:
            python = args.eclip_python if impl == "eclip" else args.open_clip_python
            if python is None:
                notes.append(f"{impl} {model}: not run (no --open-clip-python: give the python of an "
                             "environment with open_clip_torch and the same torch)")
            else:
                runs.append((impl, model, python))
    for k, (impl, model, python) in enumerate(runs):
        left = deadline - time.time()
        if left < 20:
            rows.append({"impl": impl, "model": model, "kind": "throughput",
                         "skipped": "no time left in the budget"})
            continue
        # an equal share of what is left, so that a slow run cannot take the others' time
        got = _run_worker(python, impl, model, args, time.time() + left / (len(runs) - k))
        if "device" in got:
            facts = facts or got["device"]
            if got["device"]["torch"] != facts["torch"]:
                notes.append(f"{impl} ran on torch {got['device']['torch']}, not {facts['torch']}")
        rows += got["rows"]
        for row in got["rows"]:
            print(json.dumps({key: v for key, v in row.items() if key != "step_s"}), flush=True)
    name = facts.get("name", "unknown (no worker ran)")
    peak, source = args.peak_tflops, "--peak-tflops"
    if peak is None:
        peak = peak_tflops(name) if name != "cpu" else None
        source = "datasheet table" if peak else "unknown: give --peak-tflops for MFU"
    for row in rows:
        if "achieved_tflops" in row:
            row["mfu"] = row["achieved_tflops"] / peak if peak else None
    if name == "cpu":
        notes.append("CPU run: peak memory is not measured (torch.cuda.max_memory_allocated needs "
                     "CUDA), and the timings are a check that the script works, not GPU figures.")
    if "clip_vit_b16" in args.models:
        notes.append("open_clip's ViT-B/16 + BERT-base (CustomTextCLIP with a Hugging Face text tower) "
                     "needs the hub; the side-by-side comparison is CLIP ViT-B/16 only.")
    return {"device": name, "torch": facts.get("torch"), "cuda": facts.get("cuda"),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": f"{platform.node()}, {os.cpu_count()} cores",
            "peak_tflops": peak, "peak_source": source,
            "command": " ".join(["python"] + sys.argv),
            "budget_s": args.budget_s, "elapsed_s": time.time() - start,
            "load_start": args.load_start, "load_end": _loadavg(), "tiny": args.tiny,
            "rows": rows, "notes": notes}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--tiny", action="store_true",
                        help="2 layers, width 64, 32 px images: a CPU check in seconds")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (default: both)")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count one pair's forward FLOPs (against the closed form) and the "
                        "parameters: checks the accounting of the real shapes on any device")
    parser.add_argument("--open-clip-python", help="python of a side environment with open_clip_torch; "
                        "without it open_clip is not run (and the output says so)")
    parser.add_argument("--eclip-python", default=sys.executable, help="python for eclip's runs")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's dense peak in TFLOP/s for MFU (default: from the table by name)")
    parser.add_argument("--threads", type=int,
                        help="torch threads of each run (default: 1 on the CPU, where tiny models run "
                        "fastest on one thread; torch's default on CUDA)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="wall-clock budget of the whole run; sizes that would not fit are skipped")
    for name, help_text in (("batch", "pairs per step of the throughput row (one micro-batch)"),
                            ("micro", "micro-batch (stream) size of the memory sweep"),
                            ("chunk", "eclip: loss rows per chunk"),
                            ("warmup", "warm-up steps of the throughput row"),
                            ("steps", "timed steps of the throughput row"),
                            ("sizes", "comma-separated contrastive batch sizes of the memory sweep")):
        parser.add_argument(f"--{name}", type=str if name == "sizes" else int,
                            help=f"{help_text} (default: {DEFAULTS[False][name]}; "
                                 f"--tiny: {DEFAULTS[True][name]})")
    parser.add_argument("--sweep-warmup", type=int, default=1, help="warm-up steps per sweep size up to "
                        f"{WARM_SWEEP_UP_TO} (larger sizes reuse the warm kernels)")
    parser.add_argument("--sweep-steps", type=int, default=1, help="timed steps per sweep size")
    # internal: one (implementation, model) in a fresh process
    parser.add_argument("--worker", choices=["eclip", "open_clip"], help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.tiny].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    try:
        args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    for name in ("batch", "micro", "chunk", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0 or args.sweep_warmup < 0 or args.sweep_steps < 1:
        parser.error("--warmup and --sweep-warmup must be >= 0, --sweep-steps >= 1")
    if any(size < 1 for size in args.sizes):
        parser.error("--sizes must be positive")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        if args.deadline is None:
            args.deadline = time.time() + args.budget_s
        result = worker(args)
        Path(args.worker_out).write_text(json.dumps(result), encoding="utf-8")
        return
    args.load_start = _loadavg()
    result = drive(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print()
    print(markdown(result))


if __name__ == "__main__":
    main()
