"""Encoded test media shared by the server and chat tests: base64, PNG bytes, a WAV tone."""

from __future__ import annotations

import base64
import io

import numpy as np


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def wav(seconds: float, freq: float, rate: int = 16000) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
