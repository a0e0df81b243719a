"""Embed datasets bigger than memory: in-process by default, on Ray Data to scale out.

>>> from hub.datasets import embed_dataset, load
>>> s = embed_dataset("photos/**/*.jpg", "out/", encoder="tiny-clip")            # doctest: +SKIP
>>> s = embed_dataset("items.jsonl", "out/", encoder=["image=tiny-clip", "text=minilm-l6"],
...                   engine="ray", workers=8)                                    # doctest: +SKIP
>>> tables = load("out/")          # space -> pyarrow.Table (id, modality, embedding, error)  # doctest: +SKIP

``mhub embed-dataset SOURCE DEST -e ENCODER`` is the same from the command line.
"""

from ._api import DatasetSummary, embed_dataset, scan_ids
from ._config import ENV_FAULT, Route, RunConfig
from ._sources import FileSource, Rows, TableSource, open_source
from ._store import MANIFEST, UNROUTED, load, metadata_of, partitions, verify

__all__ = [
    "DatasetSummary",
    "ENV_FAULT",
    "FileSource",
    "MANIFEST",
    "Route",
    "Rows",
    "RunConfig",
    "TableSource",
    "UNROUTED",
    "embed_dataset",
    "load",
    "metadata_of",
    "open_source",
    "partitions",
    "scan_ids",
    "verify",
]
