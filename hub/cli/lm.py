"""``mhub generate`` and ``mhub convert``: multimodal LMs from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from .._hub import Hub
from ..errors import HubError
from ._common import fail


def _parse_plug(value: str) -> tuple[str, str | None, str]:
    """``MODALITY=ENCODER[:PROJECTOR]`` → (modality, encoder or None, projector kind or directory)."""
    modality, sep, rest = value.partition("=")
    if not sep or not modality:
        raise click.BadParameter(f"expected MODALITY=ENCODER[:PROJECTOR], got {value!r}", param_hint="--plug")
    encoder, _, projector = rest.partition(":")
    return modality, encoder or None, projector or "mlp"


@click.command()
@click.argument("prompt")
@click.option("--backbone", "-b", help="Backbone: hub id, local directory or preset (e.g. tiny-llama).")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False), help="A saved multimodal LM bundle instead of --backbone.")
@click.option("--plug", "plugs", multiple=True, metavar="MODALITY=ENCODER[:PROJECTOR]",
              help="Plug a modality (repeatable); PROJECTOR is a kind (linear, mlp, resampler, pool) or a saved projector directory.")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Image file for an <image> placeholder (repeatable).")
@click.option("--audio", "audios", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Audio file for an <audio> placeholder (repeatable).")
@click.option("--item", "items", multiple=True, metavar="MODALITY=PATH", help="Any other item file, e.g. graph=g.graphml, 3d=chair.ply.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=1))
def generate(prompt, backbone, bundle, plugs, images, audios, items, max_new_tokens) -> None:
    """Generate text from PROMPT, a template with one placeholder (<image>, <audio>, ...) per item."""
    h = Hub()
    try:
        if (backbone is None) == (bundle is None):
            raise HubError("give exactly one of --backbone and --bundle")
        lm = h.load(bundle) if bundle else h.attach(backbone)
        for value in plugs:
            modality, encoder, projector = _parse_plug(value)
            lm.plug(modality, encoder=encoder, projector=projector)
        given: dict[str, list[Path]] = {}
        for path in images:
            given.setdefault("image", []).append(Path(path))
        for path in audios:
            given.setdefault("audio", []).append(Path(path))
        for value in items:
            modality, sep, path = value.partition("=")
            if not sep:
                raise click.BadParameter(f"expected MODALITY=PATH, got {value!r}", param_hint="--item")
            given.setdefault(modality, []).append(Path(path))
        click.echo(lm.generate(prompt, max_new_tokens=max_new_tokens, **given))
    except HubError as exc:
        fail(exc)


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.argument("out_bundle", type=click.Path(file_okay=False))
def convert(checkpoint, out_bundle) -> None:
    """Convert a transformers LLaVA or Qwen2-Audio CHECKPOINT directory into a bundle at OUT_BUNDLE."""
    try:
        lm = Hub().from_transformers(checkpoint)
        out = lm.save(out_bundle)
    except HubError as exc:
        fail(exc)
    plugged = ", ".join(f"{m}: {p['encoder']} + {p['projector']} projector" for m, p in lm.plugged.items())
    click.echo(f"wrote {out} (backbone {lm.backbone.name}; {plugged})")


def register(cli: click.Group) -> None:
    cli.add_command(generate)
    cli.add_command(convert)
