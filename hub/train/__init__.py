"""Learning the shared space: self-supervised pretraining and alignment.

* :func:`pretrain` (:mod:`hub.train.pretrain`) trains an encoder without labels,
  **contrastive** (SimCLR: two augmented views of each item, registered augmentations
  chained at random, pooled tokens → a small MLP head → NT-Xent) or **masked**
  (MAE / SimMIM style, through the encoder's ``masked_batch``).
* :func:`align` (:mod:`hub.train.align`) trains a projector from a modality's encoder
  into an anchor space: **infonce** (CLIP-style) or **caption** (LLaVA stage one).

Both train in the caller's process with torch, show a tqdm bar with the loss, and
write resumable checkpoints as safetensors + JSON (:mod:`hub.train.checkpoints`):
``out_dir/checkpoint/`` holds ``<module>.safetensors`` per trained module,
``optimizer.safetensors`` and ``state.json``.  Every random choice derives from
``(seed, epoch)`` (:mod:`hub.train.loop`).
"""

from .align import (
    ALIGN_FORMAT,
    ALIGN_MANIFEST,
    AlignConfig,
    AlignManifest,
    AlignResult,
    align,
    aligned_encoder,
    is_aligned_dir,
)
from .heads import LogitScale, MaskedDecoder, ProjectionHead
from .losses import chamfer_distance, clip_loss, nt_xent
from .masked import MaskedBatch, masked_count, masked_fn
from .pretrain import OBJECTIVES, PretrainConfig, TrainResult, pretrain

__all__ = [
    "ALIGN_FORMAT",
    "ALIGN_MANIFEST",
    "AlignConfig",
    "AlignManifest",
    "AlignResult",
    "LogitScale",
    "MaskedBatch",
    "MaskedDecoder",
    "OBJECTIVES",
    "PretrainConfig",
    "ProjectionHead",
    "TrainResult",
    "align",
    "aligned_encoder",
    "is_aligned_dir",
    "chamfer_distance",
    "clip_loss",
    "masked_count",
    "masked_fn",
    "nt_xent",
    "pretrain",
]
