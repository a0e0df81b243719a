"""``mhub embed-dataset``: embed a dataset bigger than memory, in-process or on Ray Data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import HubError
from ._common import fail, parse_options


@click.command("embed-dataset")
@click.argument("source")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--encoder", "-e", "encoders", multiple=True, required=True, metavar="[MODALITY=]ENCODER",
              help="Encoder; repeat with MODALITY=ENCODER for a mixed dataset (-e image=tiny-clip -e text=minilm-l6).")
@click.option("--column", "-c", help="Column holding the items (text, or a path or bytes). Default: item or text.")
@click.option("--id-column", default="id", show_default=True, help="Column holding unique row ids.")
@click.option("--modality-column", default="modality", show_default=True,
              help="Optional column naming each row's modality (used when present).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one process that streams; ray: Ray Data actors (ray.init(), or RAY_ADDRESS / --address).")
@click.option("--workers", "-w", type=click.IntRange(min=1), default=2, show_default=True,
              help="Ray actors (--engine ray).")
@click.option("--address", help="Ray cluster address for ray.init(address=...) (default: RAY_ADDRESS or a local Ray).")
@click.option("--num-cpus", type=click.FloatRange(min=0.01), help="CPUs per Ray actor (default: the cluster's CPUs less one, shared; at most 1). Leave a CPU for Ray Data's read tasks.")
@click.option("--num-gpus", type=click.FloatRange(min=0), help="GPUs per Ray actor (default: a share when the cluster has GPUs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Rows per batch (one part file per space per batch).")
@click.option("--model-batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Items per forward pass.")
@click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True)
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Encoder option (single encoder; repeatable).")
@click.option("--tokens", is_flag=True, help="Also store token-level embeddings (num_tokens, tokens columns).")
@click.option("--normalize", is_flag=True, help="Store L2-normalised vectors.")
@click.option("--no-resume", is_flag=True, help="Start over: replace DEST's embeddings instead of skipping ids already there.")
@click.option("--dedupe", type=click.Choice(["first"]), help="Keep each duplicated id's first row instead of refusing.")
@click.option("--lance/--no-lance", default=None, help="Also write Lance datasets under DEST/lance (default: when pylance is installed).")
@click.option("--device", help="Device for the local engine (e.g. cuda).")
@click.option("--cache", is_flag=True,
              help="Use the on-disk embedding cache (MODALITY_HUB_CACHE/embeddings.sqlite): items already embedded are not run again.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def embed_dataset_cmd(source, dest, encoders, column, id_column, modality_column, engine, workers, address, num_cpus,
                      num_gpus, batch_size, model_batch_size, runtime, options, tokens, normalize, no_resume, dedupe,
                      lance, device, cache, as_json, quiet) -> None:
    """Embed SOURCE into DEST, a Parquet dataset partitioned by embedding space.

    SOURCE is a Parquet file or directory, a JSONL or CSV file, or a directory or
    glob of item files ('photos/**/*.jpg'; the id is the relative path). Each
    row's vector goes to DEST/space=<space>/ with columns id, modality, embedding,
    error. A rerun skips ids already in DEST. Exits 0 when every row embedded, 1
    when some rows have an error (the rest are written), 2 on an error that stops
    the run.
    """
    from ..datasets import embed_dataset

    try:
        summary = embed_dataset(
            source, dest, encoder=list(encoders), column=column, id_column=id_column,
            modality_column=modality_column or None, engine=engine, batch_size=batch_size,
            model_batch_size=model_batch_size, workers=workers, runtime=runtime, tokens=tokens,
            normalize=normalize, resume=not no_resume, dedupe=dedupe, options=parse_options(options),
            lance=lance, progress=not quiet and not as_json, device=device, num_cpus=num_cpus,
            num_gpus=num_gpus, address=address, cache=True if cache else None,
        )
    except HubError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        click.echo(f"{summary.rows_written} rows written to {summary.dest} in {summary.seconds:.1f} s "
                   f"({summary.items_per_s:.1f} rows/s, {summary.engine}); {summary.errors} with an error; "
                   f"{summary.already_done} already there; {summary.duplicates_dropped} duplicate rows dropped")
        for space, n in summary.spaces.items():
            click.echo(f"  {space}: {n} rows")
        for w in summary.warnings:
            click.secho(f"warning: {w}", fg="yellow", err=True)
        if not summary.complete:
            click.secho(f"warning: DEST holds {summary.rows_in_dest} rows for "
                        f"{summary.rows_in_source - summary.duplicates_dropped} unique source ids "
                        f"({summary.duplicate_ids_in_dest} duplicated)", fg="yellow", err=True)
    sys.exit(1 if summary.errors else 0)


def register(cli: click.Group) -> None:
    cli.add_command(embed_dataset_cmd)
