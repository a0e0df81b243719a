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
@click.option("--modality", "modalities", multiple=True, help="Build only these modalities (repeat; default: all).")
@click.option("--threads", default=BUILD_THREADS, show_default=True, type=click.IntRange(1, 256),
              help="Intra-op threads of the build (recorded in pack.json; another count gives other weights).")
def starter_pack(out_dir, seed, budget, force, isolated, modalities, threads) -> None:
    """Build the offline starter pack: digits, spoken words (espeak-ng), graph families and 3D primitives,
    pretrained where needed and aligned to text (all-MiniLM-L6-v2)."""
    from .pack import build_starter_pack

    try:
        pack = build_starter_pack(out_dir, seed=seed, budget=budget, force=force, isolated=isolated, threads=threads,
                                  modalities=list(modalities) or None)
    except HubError as exc:
        fail(exc)
    click.echo(f"starter pack in {pack.directory}: {', '.join(pack.modalities)}")


@click.command("eval")
@click.option("--pack", "pack_dir", type=click.Path(file_okay=False), help="A built pack (default: build or load the cached one).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--budget", type=click.Choice(["full", "tiny"]), default="full", show_default=True)
@click.option("--ablation", is_flag=True, help="Also build the pack without pretraining (the modalities that pretrain) and compare.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Copy the report here too.")
def eval_cmd(pack_dir, seed, budget, ablation, json_path) -> None:
    """Zero-shot classification and emergent cross-modal retrieval on held-out starter-pack items, zero-shot on
    shifted sets (other digit styles, voices, graph sizes, 3D distortions; never trained on), raw-feature
    logistic-regression baselines and, with --ablation, the same pipeline without pretraining."""
    from . import evaluation as ev
    from .pack import build_starter_pack

    try:
        pack = build_starter_pack(pack_dir, seed=seed, budget=budget, isolated=True)
        report = ev.evaluate(pack, progress=True)
        if ablation:
            report["ablation"] = ev.ablation(seed, budget=budget, pack=pack, isolated=True)
            report = ev.write_report(report, pack.directory / "eval")
    except HubError as exc:
        fail(exc)
    print_report(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    click.echo(f"report: {pack.directory / 'eval'} (eval.json, summary.png, retrieval.png)")


def _cell(value: Any) -> str:
    return f"{value:>8.3f}" if isinstance(value, (int, float)) else f"{'-':>8}"


def print_report(report: dict[str, Any]) -> None:
    """The side-by-side table of an ``evaluate`` report (with its ablation when there is one)."""
    from .draw import summary_rows

    click.secho(f"top-1, seed {report.get('seed')}: zero-shot (held out / shifted), logistic regression on raw "
                "features (held out / shifted), zero-shot without pretraining (held out / shifted)", bold=True)
    click.secho(f"{'':<14} {'held out':>8} {'shifted':>8} {'LR held':>8} {'LR shift':>8} {'no-pt':>8} {'no-pt sh':>8}",
                bold=True)
    ablation = report.get("ablation", {}).get("modalities", {})
    for name, row in summary_rows(report).items():
        no_pt_shift = ablation.get(name, {}).get("random_init", {}).get("shifted_top1")
        click.echo(f"{name:<14} " + " ".join(_cell(v) for v in [*row, no_pt_shift]))
    for m, r in report.get("shifted", {}).items():
        click.echo(f"shifted {m:<6} " + ", ".join(f"{k} {v:.3f}" for k, v in r.get("kinds", {}).items()))
    if report.get("build_seconds"):
        click.echo(f"build: {report['build_seconds']:.0f} s")


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
