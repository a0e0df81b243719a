"""``mhub plugins`` and ``mhub embed``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .._hub import Hub, _as_path
from ..errors import HubError
from ._common import fail, parse_options


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins, their modalities and encoders, and plugin errors."""
    h = Hub()
    reg = h.registry
    infos = reg.plugins()
    data = {
        "plugins": [
            {"name": p.name, "distribution": p.distribution, "version": p.version, "ok": p.ok, "error": p.error,
             "modalities": list(p.modalities), "encoders": list(p.encoders), "backbones": list(p.backbones)}
            for p in infos
        ],
        "modalities": {},
    }
    for m in h.modalities():
        mod = reg.modality(m)
        encs = []
        for name in h.encoders(modality=m):
            spec = reg.encoder_spec(name)
            owner = reg.plugin_of("encoder", name)
            encs.append({"name": name, "weights": spec.weights, "pretrained": spec.pretrained,
                         "license": spec.license, "distribution": owner.distribution, "version": owner.version,
                         "default": name == mod.default_encoder, "description": spec.description})
        owner = reg.plugin_of("modality", m)
        data["modalities"][m] = {"distribution": owner.distribution, "version": owner.version,
                                 "default_encoder": mod.default_encoder, "extensions": list(mod.extensions),
                                 "accepts": list(mod.accepts), "encoders": encs}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not infos:
        click.echo("No plugins installed. Try: pip install modality-hub-text modality-hub-image")
    for m, info in data["modalities"].items():
        click.secho(f"{m}  ({info['distribution']} {info['version']})", bold=True)
        for e in info["encoders"]:
            flags = ("default " if e["default"] else "") + ("" if e["pretrained"] else "untrained ")
            click.echo(f"  {e['name']:<20} {flags:<18} {e['weights'] or '-'}")
    failed = [p for p in data["plugins"] if not p["ok"]]
    if failed:
        click.secho("\nPlugin errors (the rest of the hub works):", fg="yellow", bold=True)
        for p in failed:
            where = f"{p['distribution']} {p['version']}" if p["distribution"] else "in-process"
            click.echo(f"  {p['name']} ({where}): {p['error']}")



@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--modality", "-m", help="Modality of the inputs (default: detected per input).")
@click.option("--encoder", "-e", help="Encoder name, or a directory written by `mhub align` (default: the modality's default). See `mhub plugins`.")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Encoder option (repeatable).")
@click.option("--pooled", is_flag=True, help="Pool tokens into one vector per input.")
@click.option("--normalize", is_flag=True, help="L2-normalise pooled vectors.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write FILE.npy or FILE.json.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--skip-errors", is_flag=True, help="Skip inputs that fail and report them, instead of stopping.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--cache", is_flag=True, help="Reuse and store embeddings in <cache dir>/embeddings.sqlite (`mhub cache info`).")
def embed(inputs, modality, encoder, options, pooled, normalize, output, batch_size, skip_errors, as_json,
          cache) -> None:
    """Embed INPUTS (file paths or text) and print a summary per input.

    An input that names an existing file is read as that file (its type picks
    the modality); anything else is text.
    """
    import numpy as np

    h = Hub(cache=cache or None)
    opts = parse_options(options)
    items = [(_as_path(x) or x) for x in inputs]
    groups: dict[str, list[int]] = {}
    rows: list[dict[str, Any]] = [{"input": x} for x in inputs]
    try:
        for i, item in enumerate(items):
            try:
                mod = modality or (h.encoder_modality(encoder) if encoder else h.detect(item))
            except HubError as exc:
                if not skip_errors:
                    raise
                rows[i]["error"] = str(exc)
                continue
            groups.setdefault(mod, []).append(i)
        vectors: dict[int, Any] = {}
        for mod, idx in groups.items():
            te = h.embed([items[i] for i in idx], modality=mod, encoder=encoder, batch_size=batch_size,
                         on_error="skip" if skip_errors else "raise", options=opts)
            enc = h.encoder(encoder, modality=mod, **opts)
            for err in te.errors:
                rows[idx[err.index]]["error"] = err.reason
            pooled_t = te.pooled(normalize=normalize)
            for r, j in enumerate(te.indices):
                i = idx[j]
                rows[i].update(modality=mod, encoder=enc.name, tokens=int(te.lengths[r]), dim=te.dim, space=te.space)
                vectors[i] = pooled_t[r].numpy() if pooled else te[r].numpy()
    except HubError as exc:
        fail(exc)
    if output is not None:
        ok = [i for i in range(len(items)) if i in vectors]
        if output.suffix == ".npy":
            if pooled:
                np.save(output, np.stack([vectors[i] for i in ok]))
            else:
                width = max(vectors[i].shape[0] for i in ok)
                dims = {vectors[i].shape[1] for i in ok}
                if len(dims) > 1:
                    fail(HubError("inputs of different dims cannot share one .npy; use --pooled with one modality, or .json"))
                arr = np.zeros((len(ok), width, dims.pop()), dtype=np.float32)
                for r, i in enumerate(ok):
                    arr[r, : vectors[i].shape[0]] = vectors[i]
                np.save(output, arr)
        elif output.suffix == ".json":
            key = "pooled" if pooled else "tokens"
            output.write_text(json.dumps([{**rows[i], key: vectors[i].tolist()} for i in ok]))
        else:
            fail(HubError(f"--output must end in .npy or .json, got {output.name!r}"))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            name = row["input"] if len(row["input"]) <= 40 else row["input"][:37] + "..."
            if "error" in row:
                click.echo(f"{name:<42} error: {row['error']}")
            else:
                click.echo(f"{name:<42} {row['modality']:<6} {row['encoder']:<18} tokens={row['tokens']:<5} dim={row['dim']}")
    if any("error" in r for r in rows):
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(plugins)
    cli.add_command(embed)
