"""``mhub export`` and ``mhub bench``: ONNX export and torch-vs-ONNX Runtime timings."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import HubError
from ._common import fail, parse_options


@click.command("export")
@click.argument("modality")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--encoder", "-e", help="Encoder name (default: the modality's default).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Encoder option (repeatable).")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False), help="Multimodal LM bundle whose projector to fuse.")
@click.option("--with-projector", is_flag=True, help="Fuse the bundle's projector for MODALITY into the graph.")
@click.option("--pooled", is_flag=True, help="Fuse pooling: the graph outputs one vector per item.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="int8: linear layers' weights quantized, calibrated on the modality's examples.")
@click.option("--optimize/--no-optimize", default=True, show_default=True,
              help="Rewrite the graph with ONNX Runtime's fused kernels (Attention, SkipLayerNormalization, BiasGelu).")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--triton", is_flag=True, help="Also write a Triton Inference Server model repository.")
def export_cmd(modality, out_dir, encoder, options, bundle, with_projector, pooled, dtype, optimize, opset, triton) -> None:
    """Export MODALITY's encoder to OUT_DIR/model.onnx with a manifest and a parity report.

    Serve it with hub.onnx.OnnxEncoder(OUT_DIR) or Hub().embed(items, runtime="onnx", onnx_dir=OUT_DIR);
    with --pooled, one vector per item.
    """
    from .. import onnx as hub_onnx

    if with_projector and not bundle:
        fail(HubError("--with-projector needs --bundle (the projector comes from a saved multimodal LM bundle)"))
    try:
        manifest = hub_onnx.export(modality, out_dir, encoder=encoder, options=parse_options(options), bundle=bundle,
                                   with_projector=with_projector, pooled=pooled, dtype=dtype, opset=opset,
                                   optimize=optimize, triton=triton)
    except HubError as exc:
        fail(exc)
    worst = max(manifest.parity.cases, key=lambda c: c.max_abs_diff)
    click.echo(f"wrote {out_dir}/model.onnx ({manifest.encoder}, opset {manifest.opset}, {manifest.dtype}); parity "
               f"{'passed' if manifest.parity.passed else 'FAILED'} over {len(manifest.parity.cases)} cases, "
               f"max abs diff {worst.max_abs_diff:.2e}, min cosine {min(c.min_cosine for c in manifest.parity.cases):.6f}")
    if manifest.fused_ops:
        click.echo("fused: " + ", ".join(f"{op} x{n}" for op, n in manifest.fused_ops.items()))
    if manifest.quantization:
        q = manifest.quantization
        click.echo(f"int8: {q['quantized']} linear layers quantized, {len(q['kept_float'])} kept in float")


@click.command()
@click.option("--modality", "-m", "modalities", multiple=True, help="Modality to measure (repeatable; default: all).")
@click.option("--runtime", default="torch,onnx", show_default=True, help="Comma-separated runtimes: torch, onnx.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--items", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", "--passes", default=5, show_default=True, type=click.IntRange(min=1),
              help="Timed passes, interleaved; the median is reported, the per-pass ratio spread is the noise band.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON list of cases (encoder, options, size, batch_size, items), e.g. real-size configs with "
                   "random weights: benchmarks/bench_cases.json.")
@click.option("--size", type=click.Choice(["tiny", "real", "all"]), default="all", show_default=True,
              help="With --config: only its tiny presets, or only its real-size configurations.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows as JSON.")
def bench(modalities, runtime, batch_size, items, repeats, config, size, json_path) -> None:
    """Items/s and latency of torch eager vs ONNX Runtime per modality, on the same inputs in one run,
    through Hub.embed(..., runtime=...): median of N interleaved passes, with the noise band."""
    from .._hub import Hub
    from ..onnx import bench as hub_bench

    runtimes = tuple(r.strip() for r in runtime.split(",") if r.strip())
    try:
        cases = hub_bench.load_cases(config) if config else None
        if cases is not None and size != "all":
            cases = [c for c in cases if c.size == size]
        rows = hub_bench.run(modalities=list(modalities) or None, runtimes=runtimes, batch_size=batch_size,
                             items=items, repeats=repeats, json_path=json_path, hub=Hub(), cases=cases)
    except HubError as exc:
        fail(exc)
    if any(row.get("error") for row in rows):
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(export_cmd)
    cli.add_command(bench)
