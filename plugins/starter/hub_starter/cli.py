"""``mhub starter-pack``, ``mhub eval`` and the starter pack's step of ``mhub demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hub import Hub
from hub.cli import fail
from hub.errors import HubError

from .determinism import BUILD_THREADS

@click.command("starter-pack")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where to build it (default: the hub's cache).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--budget", type=click.Choice(["full", "tiny"]), default="full", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even when a cached pack of the same build exists.")
@click.option("--isolated/--in-process", default=True, show_default=True,
              help="Build in a child process with the CPU instruction set and threads pinned (reproducible across "
                   "machines), or in this process (deterministic algorithms and threads only).")
@click.option("--threads", default=BUILD_THREADS, show_default=True, type=click.IntRange(1, 256),
              help="Intra-op threads of the build (recorded in pack.json; another count gives other weights).")
def starter_pack(out_dir, seed, budget, force, isolated, threads) -> None:
    """Build the offline starter pack: digits, spoken words (espeak-ng), graph families and 3D primitives,
    pretrained where needed and aligned to text (all-MiniLM-L6-v2)."""
    from .pack import build_starter_pack

    try:
        pack = build_starter_pack(out_dir, seed=seed, budget=budget, force=force, isolated=isolated, threads=threads)
    except HubError as exc:
        fail(exc)
    click.echo(f"starter pack in {pack.directory}: {', '.join(pack.modalities)}")


@click.command("eval")
@click.option("--pack", "pack_dir", type=click.Path(file_okay=False), help="A built pack (default: build or load the cached one).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--budget", type=click.Choice(["full", "tiny"]), default="full", show_default=True)
@click.option("--ablation", is_flag=True, help="Also build the pack without pretraining for graph and 3D and compare.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Copy the report here too.")
def eval_cmd(pack_dir, seed, budget, ablation, json_path) -> None:
    """Zero-shot classification and emergent cross-modal retrieval on held-out starter-pack items."""
    from . import evaluation as ev
    from .pack import build_starter_pack

    try:
        pack = build_starter_pack(pack_dir, seed=seed, budget=budget, isolated=True)
        report = ev.evaluate(pack, progress=True)
        if ablation:
            report["ablation"] = ev.ablation(seed, budget=budget, pack=pack, isolated=True)
    except HubError as exc:
        fail(exc)
    click.secho(f"{'zero-shot':<22} {'top-1':>6} {'top-5':>6} {'held out':>9}", bold=True)
    for m, r in report["zero_shot"].items():
        click.echo(f"{m:<22} {r['top1']:>6.3f} {r['top5']:>6.3f} {r.get('n', ''):>9}")
    for pair, r in report["retrieval"].items():
        click.echo(f"{pair:<22} {r['top1']:>6.3f} {r['top5']:>6.3f} {r.get('queries', ''):>9}")
    for m, r in report.get("ablation", {}).get("modalities", {}).items():
        click.echo(f"ablation {m:<13} pretrained {r['pretrained']['top1']:.3f} vs random init {r['random_init']['top1']:.3f}")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    click.echo(f"report: {pack.directory / 'eval'}")


DEMO_QUERIES = ("seven", "a wheel graph", "a torus")


def demo_pack(h: Hub, pack: bool = True, budget: str = "full") -> int:
    """Text queries against the starter pack: the nearest held-out image, audio clip, graph and 3D shape."""
    from . import evaluation as ev
    from .pack import build_starter_pack

    if not pack:
        return 0
    click.secho(f"\nstarter pack ({budget}): one shared space, text as the anchor", bold=True)
    try:
        built = build_starter_pack(budget=budget, hub=h, isolated=True)
    except HubError as exc:
        click.echo(f"starter pack unavailable: {exc}")
        return 1
    out = built.directory / "demo"
    for text in DEMO_QUERIES:
        answer = ev.query(built, text, k=1)
        hits = ", ".join(f"{m}: {hit[0][1]} ({hit[0][2]:.2f})" for m, hit in answer.items())
        path = ev.draw_query(built, text, out / f"{text.replace(' ', '-')}.png", answer=answer)
        click.echo(f"{text!r:<20} → {hits}  [{path}]")
    return 0


def register(cli: Any) -> None:
    """Add the commands to the ``mhub`` group and the cross-modal queries to ``mhub demo``."""
    cli.add_command(starter_pack)
    cli.add_command(eval_cmd)
    demo_cmd = cli.commands.get("demo")
    if demo_cmd is not None and hasattr(demo_cmd, "add_step"):
        demo_cmd.add_step(
            demo_pack,
            click.Option(["--pack/--no-pack"], default=True, show_default=True,
                         help="Answer text queries across modalities from the starter pack (built on first run, then cached)."),
            click.Option(["--budget"], type=click.Choice(["full", "tiny"]), default="full", show_default=True,
                         help="Starter pack size (tiny: seconds, for tests; its answers are not meaningful)."),
        )
