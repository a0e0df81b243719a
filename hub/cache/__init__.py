"""An opt-in, on-disk embedding cache: items already embedded never run through a model again.

>>> from hub import Hub
>>> h = Hub(cache=True)                              # doctest: +SKIP  (<cache_dir>/embeddings.sqlite)
>>> te = h.embed(["a cat", "a dog"])                 # doctest: +SKIP  computed, stored
>>> te = h.embed(["a cat", "a dog"])                 # doctest: +SKIP  served from the store, bit-identical
>>> h.embed(items, cache=EmbeddingCache("x.sqlite", max_bytes=1 << 30, dtype="float16"))  # doctest: +SKIP

Keys cover the encoder's space, class and package version, a hash of its weights (or an ONNX
export's manifest hashes), its options, the runtime (torch / onnx + provider) and device type,
the dtype, the output kind and normalisation, the torch / transformers / numpy (and onnxruntime)
versions, and a hash of the *prepared* item -- so a path, bytes or a PIL image of one picture
share an entry.
"""

from ._embed import CachedCall, cached_embed, default_cache_path, keys_for, open_cache, resolve_cache
from ._key import decoder_versions, encoder_fingerprint, item_digest, library_versions, raw_digest, weights_sha256
from ._store import DB_NAME, DEFAULT_MAX_BYTES, CacheCorruptionWarning, CacheEntry, EmbeddingCache

__all__ = [
    "CachedCall",
    "EmbeddingCache",
    "CacheEntry",
    "CacheCorruptionWarning",
    "DB_NAME",
    "DEFAULT_MAX_BYTES",
    "cached_embed",
    "default_cache_path",
    "decoder_versions",
    "encoder_fingerprint",
    "item_digest",
    "keys_for",
    "library_versions",
    "open_cache",
    "raw_digest",
    "resolve_cache",
    "weights_sha256",
]
