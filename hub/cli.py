"""The ``mhub`` command line: plugins, embed, demo."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ._hub import Hub, _as_path
from .errors import HubError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they parse (numbers, true/false, null)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="modality-hub")
def main() -> None:
    """modality-hub: embed any input (text, image, audio, graph, 3D) as LLM tokens."""


@main.command()
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


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--modality", "-m", help="Modality of the inputs (default: detected per input).")
@click.option("--encoder", "-e", help="Encoder name (default: the modality's default). See `mhub plugins`.")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Encoder option (repeatable).")
@click.option("--pooled", is_flag=True, help="Pool tokens into one vector per input.")
@click.option("--normalize", is_flag=True, help="L2-normalise pooled vectors.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write FILE.npy or FILE.json.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--skip-errors", is_flag=True, help="Skip inputs that fail and report them, instead of stopping.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def embed(inputs, modality, encoder, options, pooled, normalize, output, batch_size, skip_errors, as_json) -> None:
    """Embed INPUTS (file paths or text) and print a summary per input.

    An input that names an existing file is read as that file (its type picks
    the modality); anything else is text.
    """
    import numpy as np

    h = Hub()
    opts = _parse_options(options)
    items = [(_as_path(x) or x) for x in inputs]
    groups: dict[str, list[int]] = {}
    rows: list[dict[str, Any]] = [{"input": x} for x in inputs]
    try:
        for i, item in enumerate(items):
            try:
                mod = modality or (h.registry.encoder_spec(encoder).modality if encoder else h.detect(item))
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
        _fail(exc)
    if output is not None:
        ok = [i for i in range(len(items)) if i in vectors]
        if output.suffix == ".npy":
            if pooled:
                np.save(output, np.stack([vectors[i] for i in ok]))
            else:
                width = max(vectors[i].shape[0] for i in ok)
                dims = {vectors[i].shape[1] for i in ok}
                if len(dims) > 1:
                    _fail(HubError("inputs of different dims cannot share one .npy; use --pooled with one modality, or .json"))
                arr = np.zeros((len(ok), width, dims.pop()), dtype=np.float32)
                for r, i in enumerate(ok):
                    arr[r, : vectors[i].shape[0]] = vectors[i]
                np.save(output, arr)
        elif output.suffix == ".json":
            key = "pooled" if pooled else "tokens"
            output.write_text(json.dumps([{**rows[i], key: vectors[i].tolist()} for i in ok]))
        else:
            _fail(HubError(f"--output must end in .npy or .json, got {output.name!r}"))
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


@main.command()
@click.option("--repeat", default=8, show_default=True, type=click.IntRange(min=1), help="Items per timing batch.")
@click.option("--pack/--no-pack", default=True, show_default=True,
              help="Answer text queries across modalities from the starter pack (built on first run, then cached).")
@click.option("--budget", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
              help="Starter pack size (tiny: seconds, for tests; its answers are not meaningful).")
def demo(repeat: int, pack: bool, budget: str) -> None:
    """Embed a sample of every installed modality, plug each into a tiny LLM, and query the starter pack."""
    h = Hub()
    mods = h.modalities()
    if not mods:
        _fail(HubError("no modality plugins installed; run `make install` or pip install modality-hub-text"))
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
    if pack:
        failures += _demo_pack(h, budget)
    broken = [p for p in h.plugins() if not p.ok]
    for p in broken:
        click.secho(f"plugin {p.name} failed to load: {p.error}", fg="yellow")
    if failures:
        sys.exit(1)


DEMO_QUERIES = ("seven", "a wheel graph", "a torus")


def _demo_pack(h: Hub, budget: str) -> int:
    """Text queries against the starter pack: the nearest held-out image, audio clip, graph and 3D shape."""
    from . import starter

    click.secho(f"\nstarter pack ({budget}): one shared space, text as the anchor", bold=True)
    try:
        pack = starter.build_starter_pack(budget=budget, hub=h)
    except HubError as exc:
        click.echo(f"starter pack unavailable: {exc}")
        return 1
    out = pack.directory / "demo"
    for text in DEMO_QUERIES:
        answer = starter.query(pack, text, k=1)
        hits = ", ".join(f"{m}: {hit[0][1]} ({hit[0][2]:.2f})" for m, hit in answer.items())
        path = starter.draw_query(pack, text, out / f"{text.replace(' ', '-')}.png", answer=answer)
        click.echo(f"{text!r:<20} → {hits}  [{path}]")
    return 0


def _demo_plug(h: Hub, mods: list[str], backbone: str = "tiny-llama") -> int:
    """Plug each modality into a tiny backbone, generate a few tokens, unplug; one row each."""
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


@main.command("export")
@click.argument("modality")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--encoder", "-e", help="Encoder name (default: the modality's default).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Encoder option (repeatable).")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False), help="Multimodal LM bundle whose projector to fuse.")
@click.option("--with-projector", is_flag=True, help="Fuse the bundle's projector for MODALITY into the graph.")
@click.option("--pooled", is_flag=True, help="Fuse pooling: the graph outputs one vector per item.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--triton", is_flag=True, help="Also write a Triton Inference Server model repository.")
def export_cmd(modality, out_dir, encoder, options, bundle, with_projector, pooled, dtype, opset, triton) -> None:
    """Export MODALITY's encoder to OUT_DIR/model.onnx with a manifest and a parity report."""
    from . import onnx as hub_onnx

    if with_projector and not bundle:
        _fail(HubError("--with-projector needs --bundle (the projector comes from a saved multimodal LM bundle)"))
    try:
        manifest = hub_onnx.export(modality, out_dir, encoder=encoder, options=_parse_options(options), bundle=bundle,
                                   with_projector=with_projector, pooled=pooled, dtype=dtype, opset=opset, triton=triton)
    except HubError as exc:
        _fail(exc)
    worst = max(manifest.parity.cases, key=lambda c: c.max_abs_diff)
    click.echo(f"wrote {out_dir}/model.onnx ({manifest.encoder}, opset {manifest.opset}, {manifest.dtype}); parity "
               f"{'passed' if manifest.parity.passed else 'FAILED'} over {len(manifest.parity.cases)} cases, "
               f"max abs diff {worst.max_abs_diff:.2e}, min cosine {min(c.min_cosine for c in manifest.parity.cases):.6f}")


@main.command()
@click.option("--modality", "-m", "modalities", multiple=True, help="Modality to measure (repeatable; default: all).")
@click.option("--runtime", default="torch,onnx", show_default=True, help="Comma-separated runtimes: torch, onnx.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--items", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows as JSON.")
def bench(modalities, runtime, batch_size, items, repeats, json_path) -> None:
    """Items/s and latency of torch eager vs ONNX Runtime per modality, on the same inputs in one run."""
    from . import bench as hub_bench

    runtimes = tuple(r.strip() for r in runtime.split(",") if r.strip())
    try:
        rows = hub_bench.run(modalities=list(modalities) or None, runtimes=runtimes, batch_size=batch_size,
                             items=items, repeats=repeats, json_path=json_path)
    except HubError as exc:
        _fail(exc)
    if any(row.get("error") for row in rows):
        sys.exit(1)


def _read_items(paths: tuple[str, ...]) -> list[Path]:
    """Files, and the files inside directories (sorted), as item paths."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    if not out:
        raise HubError("no input files")
    return out


@main.command()
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
        result = Hub().pretrain(modality, _read_items(inputs), encoder=encoder, objective=objective, epochs=epochs,
                                batch_size=batch_size, lr=lr, seed=seed, out_dir=out_dir)
        saved = result.save(Path(out_dir) / "encoder")
    except HubError as exc:
        _fail(exc)
    click.echo(f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; encoder saved to {saved} "
               f"(load with --option weights={saved})")


@main.command()
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
        result = Hub().align(modality, rows, encoder=encoder, encoder_options=_parse_options(options),
                             projector=projector, objective=objective, backbone=backbone,
                             train_encoder=train_encoder, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             out_dir=Path(out_dir) / "checkpoints")
        saved = result.save(out_dir)
    except HubError as exc:
        _fail(exc)
    click.echo(f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; aligned projector saved to {saved}")


@main.command("starter-pack")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where to build it (default: the hub's cache).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--budget", type=click.Choice(["full", "tiny"]), default="full", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even when a cached pack of the same build exists.")
def starter_pack(out_dir, seed, budget, force) -> None:
    """Build the offline starter pack: digits, spoken words (espeak-ng), graph families and 3D primitives,
    pretrained where needed and aligned to text (all-MiniLM-L6-v2)."""
    from . import starter

    try:
        pack = starter.build_starter_pack(out_dir, seed=seed, budget=budget, force=force)
    except HubError as exc:
        _fail(exc)
    click.echo(f"starter pack in {pack.directory}: {', '.join(pack.modalities)}")


@main.command("eval")
@click.option("--pack", "pack_dir", type=click.Path(file_okay=False), help="A built pack (default: build or load the cached one).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--budget", type=click.Choice(["full", "tiny"]), default="full", show_default=True)
@click.option("--ablation", is_flag=True, help="Also build the pack without pretraining for graph and 3D and compare.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Copy the report here too.")
def eval_cmd(pack_dir, seed, budget, ablation, json_path) -> None:
    """Zero-shot classification and emergent cross-modal retrieval on held-out starter-pack items."""
    from . import starter

    try:
        pack = starter.build_starter_pack(pack_dir, seed=seed, budget=budget)
        report = starter.evaluate(pack, progress=True)
        if ablation:
            report["ablation"] = starter.ablation(seed, budget=budget, pack=pack)
    except HubError as exc:
        _fail(exc)
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


def _parse_plug(value: str) -> tuple[str, str | None, str]:
    """``MODALITY=ENCODER[:PROJECTOR]`` → (modality, encoder or None, projector kind or directory)."""
    modality, sep, rest = value.partition("=")
    if not sep or not modality:
        raise click.BadParameter(f"expected MODALITY=ENCODER[:PROJECTOR], got {value!r}", param_hint="--plug")
    encoder, _, projector = rest.partition(":")
    return modality, encoder or None, projector or "mlp"


@main.command()
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
        _fail(exc)


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.argument("out_bundle", type=click.Path(file_okay=False))
def convert(checkpoint, out_bundle) -> None:
    """Convert a transformers LLaVA or Qwen2-Audio CHECKPOINT directory into a bundle at OUT_BUNDLE."""
    try:
        lm = Hub().from_transformers(checkpoint)
        out = lm.save(out_bundle)
    except HubError as exc:
        _fail(exc)
    plugged = ", ".join(f"{m}: {p['encoder']} + {p['projector']} projector" for m, p in lm.plugged.items())
    click.echo(f"wrote {out} (backbone {lm.backbone.name}; {plugged})")


if __name__ == "__main__":  # pragma: no cover
    main()
