"""GPU: a ViT-B/16-sized image encoder, torch eager vs ONNX Runtime CUDA (IO binding), batch 32.

    python benchmarks/onnx_gpu.py [--batch 32] [--iters 50] [--warmup 10] [--out benchmarks/results]

Needs an NVIDIA GPU, torch with CUDA and onnxruntime-gpu (``pip install 'modality-hub[gpu]'``); exits
with status 2 and says why when no CUDA device is present.  The encoder is random-init (nothing is
downloaded): transformers' ViTConfig at ViT-B/16 size (224 px, patch 16, 768-d, 12 layers, 12 heads,
MLP 3072) behind hub_image's HFVisionEncoder, so preprocessing and export are the hub's own.

Paths, all on the same 32 preprocessed images (the GPU work only; preprocessing is not timed):
  torch-fp32   eager fp32 (TF32 matmuls off: a true fp32 reference)
  torch-bf16   eager, weights and inputs in bfloat16
  ort-fp32     hub.onnx.export(dtype="fp32") + OnnxEncoder(device="cuda"), IO binding
  ort-fp16     hub.onnx.export(dtype="fp16") + OnnxEncoder(device="cuda"), IO binding
Each reports img/s, ms per batch, the speedup over torch bf16, the cosine to torch fp32 (smallest over
tokens and over pooled vectors) and the fraction of the GPU's dense bf16/fp16 peak that its img/s
means, with FLOPs per image counted from the model config.  Writes OUT/onnx_gpu.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

#: dense (no sparsity) bf16/fp16 tensor-core peak, TFLOPS; the first name fragment found in
#: torch.cuda.get_device_name() wins, so the more specific names come first
PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (and NVL per GPU at the same clock class)
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
]

VIT_B16 = dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=3072)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16/fp16 peak FLOP/s of ``device_name`` from :data:`PEAK_TFLOPS`, or ``None`` when unknown."""
    for fragment, tflops in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops * 1e12
    return None


def vit_flops_per_image(cfg: Any) -> float:
    """Forward FLOPs of one image (2 per multiply-add): patch embedding, then per layer QKV + output
    projections (4·d²), the MLP (2·d·mlp) and attention scores and mixing (2·T·d) for each of T tokens."""
    patches = (cfg.image_size // cfg.patch_size) ** 2
    tokens = patches + 1  # + CLS
    d, mlp, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    macs = patches * 3 * cfg.patch_size**2 * d + layers * tokens * (4 * d * d + 2 * d * mlp + 2 * tokens * d)
    return 2.0 * macs


def save_vit_b16(directory: Path, seed: int = 0, **overrides: int) -> Path:
    """Write a random-init ViT-B/16 (safetensors + image processor) that ``hf-vision`` loads with ``weights=directory``."""
    import torch
    import transformers
    from hub_image import HFVisionEncoder

    config = transformers.ViTConfig(**(VIT_B16 | overrides))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.ViTModel(config, add_pooling_layer=False).eval()
    square = {"height": config.image_size, "width": config.image_size}
    processor = getattr(transformers, "ViTImageProcessorPil", transformers.ViTImageProcessor)(size=square)
    HFVisionEncoder(model=model, processor=processor, family="vit").save_pretrained(str(directory))
    return directory


def cuda_or_exit() -> str:
    """The CUDA device name, or exit 2 with the reason."""
    try:
        import torch
    except ImportError:
        print("error: onnx_gpu.py needs torch with CUDA (pip install torch)", file=sys.stderr)
        sys.exit(2)
    if not torch.cuda.is_available():
        print("error: no CUDA device: torch.cuda.is_available() is False (torch "
              f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). This benchmark needs an NVIDIA GPU, "
              "torch with CUDA and onnxruntime-gpu (pip install 'modality-hub[gpu]'); run it on a GPU machine.",
              file=sys.stderr)
        sys.exit(2)
    return torch.cuda.get_device_name(0)


def timed(fn: Callable[[], Any], iters: int, warmup: int) -> tuple[float, Any]:
    """Seconds per call (mean over ``iters`` after ``warmup``), synchronizing the GPU around the timed loop."""
    import torch

    out = None
    for _ in range(warmup):
        out = fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=50, help="timed batches per path")
    ap.add_argument("--warmup", type=int, default=10, help="untimed batches per path first")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="directory for onnx_gpu.json")
    ap.add_argument("--keep-exports", action="store_true", help="keep the ONNX exports under OUT/onnx_gpu_exports")
    args = ap.parse_args()
    device_name = cuda_or_exit()

    import torch
    import torch.nn.functional as F

    from hub import Hub
    from hub.bench import machine_info
    from hub.onnx import OnnxEncoder

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    h = Hub()
    args.out.mkdir(parents=True, exist_ok=True)
    export_root = args.out / "onnx_gpu_exports" if args.keep_exports else Path(tempfile.mkdtemp(prefix="mhub-onnx-gpu-"))
    # registered as hf-vision with local weights, so the export manifest names preprocessing OnnxEncoder can rebuild
    options = {"weights": str(save_vit_b16(export_root / "vit-b16-torch").resolve())}
    exports = export_both(h, export_root, options)
    enc = h.encoder("hf-vision", **options)
    cfg = enc.model.config
    images = h.registry.modality("image").examples(args.batch, 0)
    pixels = enc.collate([enc.prepare(x, i) for i, x in enumerate(images)])["pixel_values"]  # (batch, 3, 224, 224)

    x32 = pixels.cuda()
    enc32 = enc.cuda().eval()
    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, torch.Tensor] = {}

    def torch_path(module, x) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.inference_mode():
                return module(pixel_values=x).tokens  # (batch, tokens, dim)

        return call

    paths: dict[str, Callable[[], Callable[[], torch.Tensor]]] = {
        "torch-fp32": lambda: torch_path(enc32, x32),
        "torch-bf16": lambda: torch_path(copy.deepcopy(enc32).to(torch.bfloat16), x32.to(torch.bfloat16)),
        "ort-fp32": lambda: _ort_path(OnnxEncoder(export_root / "vit-b16-fp32", device="cuda", hub=h), x32),
        "ort-fp16": lambda: _ort_path(OnnxEncoder(export_root / "vit-b16-fp16", device="cuda", hub=h), x32),
    }
    failed = False
    for name, make in paths.items():
        try:
            seconds, out = timed(make(), args.iters, args.warmup)
        except Exception as exc:  # noqa: BLE001 - e.g. ProviderError: report it, run the rest
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
            continue
        outputs[name] = out.float()
        results[name] = {"img_per_s": args.batch / seconds, "ms_per_batch": 1000 * seconds}

    flops = vit_flops_per_image(cfg)
    peak = peak_flops(device_name)
    ref = outputs.get("torch-fp32")
    bf16 = results.get("torch-bf16", {}).get("img_per_s")
    for name, r in results.items():
        if "error" in r:
            continue
        r["tflops"] = r["img_per_s"] * flops / 1e12
        r["fraction_of_peak"] = r["img_per_s"] * flops / peak if peak else None
        r["speedup_vs_torch_bf16"] = r["img_per_s"] / bf16 if bf16 else None
        if ref is not None:
            got = outputs[name]
            r["min_token_cosine"] = float(F.cosine_similarity(got, ref, dim=-1).min())
            r["min_pooled_cosine"] = float(F.cosine_similarity(got.mean(1), ref.mean(1), dim=-1).min())

    print(f"\nViT-B/16 (random init), batch {args.batch}, {device_name}, {flops / 1e9:.1f} GFLOPs/image, "
          f"peak {peak / 1e12 if peak else float('nan'):.0f} TFLOPS dense bf16/fp16")
    head = f"{'path':<11} {'img/s':>8} {'ms/batch':>9} {'vs bf16':>8} {'TFLOPS':>7} {'of peak':>8} {'min cos tok':>11} {'min cos pool':>12}"
    print(head + "\n" + "-" * len(head))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<11} error: {r['error']}")
            continue
        def f(key: str, fmt: str) -> str:
            return "-" if r.get(key) is None else format(r[key], fmt)
        print(f"{name:<11} {r['img_per_s']:>8.1f} {r['ms_per_batch']:>9.2f} {f('speedup_vs_torch_bf16', '7.2f'):>7}x "
              f"{r['tflops']:>7.1f} {f('fraction_of_peak', '8.1%'):>8} {f('min_token_cosine', '11.6f'):>11} "
              f"{f('min_pooled_cosine', '12.6f'):>12}")
    fp16 = results.get("ort-fp16", {})
    if "img_per_s" in fp16:
        ratio = f"{fp16['speedup_vs_torch_bf16']:.2f}x" if bf16 else "n/a"
        print(f"\nissue 5 target: ort-fp16 >= torch-bf16 img/s: {ratio}; "
              f"cosine >= 0.999 to torch fp32: {fp16.get('min_pooled_cosine', float('nan')):.6f} (pooled), "
              f"{fp16.get('min_token_cosine', float('nan')):.6f} (tokens)")

    meta = machine_info() | {"gpu": device_name, "peak_flops": peak, "flops_per_image": flops, "batch": args.batch,
                             "iters": args.iters, "warmup": args.warmup, "export_s": exports,
                             "model": {k: getattr(cfg, k) for k in VIT_B16}, "command": " ".join(sys.argv)}
    path = args.out / "onnx_gpu.json"
    path.write_text(json.dumps({"meta": meta, "rows": results}, indent=2, default=str))
    print(f"wrote {path}")
    if not args.keep_exports:
        shutil.rmtree(export_root, ignore_errors=True)
    sys.exit(1 if failed else 0)


def export_both(h, root: Path, options: dict[str, Any]) -> dict[str, float]:
    """fp32 and fp16 exports of ``hf-vision`` with ``options`` under ``root``; seconds each (parity checks included)."""
    from hub.onnx import export

    seconds = {}
    for dtype in ("fp32", "fp16"):  # on CPU, before the encoder moves to the GPU (parity checks run there too)
        start = time.perf_counter()
        export("image", root / f"vit-b16-{dtype}", encoder="hf-vision", options=options, dtype=dtype, hub=h)
        seconds[dtype] = time.perf_counter() - start
    return seconds


def _ort_path(onx, x):
    """One IO-bound ORT CUDA run on device tensors; returns the tokens (still on the GPU)."""
    if "CUDAExecutionProvider" not in onx.providers:  # OnnxEncoder raises before this; belt and braces
        raise RuntimeError(f"ONNX Runtime is not on CUDA: providers {onx.providers}")
    return lambda: onx.run(pixel_values=x).tokens


if __name__ == "__main__":
    main()
