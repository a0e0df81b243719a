"""``mhub pretrain`` and ``mhub align``: learning the shared space."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .._hub import Hub
from ..errors import HubError
from ._common import fail, parse_options, read_items


@click.command()
@click.argument("modality")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--encoder", "-e", help="Encoder to pretrain (default: the modality's default).")
@click.option("--objective", type=click.Choice(["contrastive", "masked"]), default="contrastive", show_default=True)
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=2))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Checkpoints and the trained encoder.")
def pretrain(modality, inputs, encoder, objective, epochs, batch_size, lr, seed, out_dir) -> None:
    """Self-supervised pretraining of MODALITY's encoder on INPUTS (files or directories); resumes from OUT."""
    try:
        result = Hub().pretrain(modality, read_items(inputs), encoder=encoder, objective=objective, epochs=epochs,
                                batch_size=batch_size, lr=lr, seed=seed, out_dir=out_dir)
        saved = result.save(Path(out_dir) / "encoder")
    except HubError as exc:
        fail(exc)
    click.echo(f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; encoder saved to {saved} "
               f"(load with --option weights={saved})")


@click.command()
@click.argument("modality")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False))
@click.option("--encoder", "-e", help="Encoder of MODALITY (default: its default).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Encoder option (repeatable).")
@click.option("--projector", default="mlp", show_default=True, type=click.Choice(["linear", "mlp", "resampler", "pool"]))
@click.option("--objective", type=click.Choice(["infonce", "caption"]), default="infonce", show_default=True)
@click.option("--backbone", help="Backbone for --objective caption (e.g. tiny-llama).")
@click.option("--train-encoder", is_flag=True, help="Also train the encoder (default: frozen).")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=2))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="The aligned projector (+ encoder).")
def align(modality, pairs, encoder, options, projector, objective, backbone, train_encoder, epochs, batch_size, lr,
          seed, out_dir) -> None:
    """Align MODALITY to text: PAIRS is a JSON-lines file of {"item": PATH, "caption": TEXT} (paths relative to it)."""
    try:
        base = Path(pairs).parent
        rows = []
        for n, line in enumerate(Path(pairs).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append((base / row["item"], str(row["caption"])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise HubError(f"{pairs}:{n}: expected {{\"item\": PATH, \"caption\": TEXT}} ({exc})") from None
        result = Hub().align(modality, rows, encoder=encoder, encoder_options=parse_options(options),
                             projector=projector, objective=objective, backbone=backbone,
                             train_encoder=train_encoder, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             out_dir=Path(out_dir) / "checkpoints")
        saved = result.save(out_dir)
    except HubError as exc:
        fail(exc)
    click.echo(f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; aligned projector saved to {saved}")


def register(cli: click.Group) -> None:
    cli.add_command(pretrain)
    cli.add_command(align)
