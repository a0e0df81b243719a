"""``mhub demo``: a sample of every modality, plug / generate / unplug, and the plugins' demo steps."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import click

from .._hub import Hub
from ..errors import HubError
from ._common import fail


class DemoCommand(click.Command):
    """``mhub demo``; plugins append steps (with their own options) through :meth:`add_step`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[tuple[Callable[..., int], tuple[str, ...]]] = []

    def add_step(self, step: Callable[..., int], *options: click.Option) -> None:
        """Run ``step(hub, **its_options) -> failures`` after the core demo; ``options`` join ``mhub demo``'s."""
        self.params.extend(options)
        self.steps.append((step, tuple(str(o.name) for o in options)))


@click.command(cls=DemoCommand)
@click.option("--repeat", default=8, show_default=True, type=click.IntRange(min=1), help="Items per timing batch.")
@click.pass_context
def demo(ctx: click.Context, repeat: int, **step_options: Any) -> None:
    """Embed a sample of every installed modality, plug each into a tiny LLM, then run the plugins' demo steps
    (the starter pack's cross-modal text queries, when modality-hub-starter is installed)."""
    h = Hub()
    mods = h.modalities()
    if not mods:
        fail(HubError("no modality plugins installed; run `make install` or pip install modality-hub-text"))
    header = f"{'modality':<9} {'encoder':<16} {'trained':<8} {'tokens/item':>11} {'dim':>5} {'ms/item':>8}  space"
    click.secho(header, bold=True)
    failures = 0
    for m in mods:
        mod = h.registry.modality(m)
        name = mod.demo_encoder or mod.default_encoder
        try:
            if mod.sample is None:
                raise HubError(f"modality {m!r} provides no sample()")
            item = mod.sample()
            enc = h.encoder(name, modality=m)
            h.embed([item], modality=m, encoder=name)  # warm-up
            start = time.perf_counter()
            te = h.embed([item] * repeat, modality=m, encoder=name, batch_size=repeat)
            ms = (time.perf_counter() - start) * 1000 / repeat
            trained = "yes" if enc.pretrained else "no"
            click.echo(f"{m:<9} {name:<16} {trained:<8} {int(te.lengths[0]):>11} {te.dim:>5} {ms:>8.2f}  {te.space}")
        except Exception as exc:  # noqa: BLE001 - one modality failing must not hide the others
            failures += 1
            click.echo(f"{m:<9} {name:<16} error: {exc}")
    if h.backbones():
        failures += _demo_plug(h, [m for m in mods if m != "text"])
    for step, names in ctx.command.steps:
        try:
            failures += int(step(h, **{k: v for k, v in step_options.items() if k in names}) or 0)
        except HubError as exc:
            failures += 1
            click.echo(f"demo step {step.__name__} failed: {exc}")
    broken = [p for p in h.plugins() if not p.ok]
    for p in broken:
        click.secho(f"plugin {p.name} failed to load: {p.error}", fg="yellow")
    if failures:
        sys.exit(1)


def _demo_plug(h: Hub, mods: list[str]) -> int:
    """Plug each modality into a tiny backbone, generate a few tokens, unplug; one row each."""
    specs = [h.registry.backbone_spec(n) for n in h.backbones()]
    backbone = next((s.demo_source for s in specs if s.demo_source), None)
    if backbone is None:
        click.echo("no backbone adapter offers an offline demo backbone (BackboneSpec.demo_source); skipping plug")
        return 0
    click.secho(f"\nplug → generate → unplug on {backbone} (untrained: the words are noise, the plumbing is real)", bold=True)
    click.secho(f"{'modality':<9} {'encoder':<16} {'projector':<9} {'prompt':>6} {'plug ms':>8} {'gen ms':>7} "
                f"{'unplug ms':>9} {'params freed':>12}  generated", bold=True)
    lm = h.attach(backbone)
    failures = 0
    for m in mods:
        mod = h.registry.modality(m)
        name = mod.demo_encoder or mod.default_encoder
        try:
            start = time.perf_counter()
            lm.plug(m, encoder=name, projector="mlp")
            plug_ms = (time.perf_counter() - start) * 1000
            info = lm.plugged[m]
            prompt = f"Describe {info['placeholder']} briefly:"
            sample = mod.sample()
            length = lm.compose([prompt], **{m: [sample]}).lengths[0]
            start = time.perf_counter()
            text = lm.generate(prompt, max_new_tokens=8, **{m: [sample]})
            gen_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            lm.unplug(m)
            unplug_ms = (time.perf_counter() - start) * 1000
            freed = info["encoder_params"] + info["projector_params"]
            click.echo(f"{m:<9} {name:<16} {'mlp':<9} {length:>6} {plug_ms:>8.1f} {gen_ms:>7.1f} {unplug_ms:>9.1f} "
                       f"{freed:>12,}  {text[:30]!r}")
        except Exception as exc:  # noqa: BLE001 - one modality failing must not hide the others
            failures += 1
            click.echo(f"{m:<9} {name:<16} error: {exc}")
    return failures


def register(cli: click.Group) -> None:
    cli.add_command(demo)
