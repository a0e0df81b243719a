"""`mhub serve --bundle`: chat time to first token and tokens/s at 1, 4 and 16 concurrent clients.

    python benchmarks/serve_chat.py [--quick] [--max-tokens 32] [--threads N] [--json benchmarks/results/serve_chat.json]
    python benchmarks/serve.py --chat [--quick]        (the same, from the serve benchmark)

The tiny bundle: the transformers adapter's demo backbone (tiny-llama) with the image and audio
modalities' demo encoders (tiny-clip, tiny-whisper) through MLP projectors, built in a temporary
directory.  ``mhub serve --bundle`` runs in its own process on a free 127.0.0.1 port and is always
stopped.  Every request is streamed (``stream: true``, ``include_usage``) and carries one image and
one audio clip; greedy decoding, ``max_tokens`` new tokens at most (the untrained model may stop
earlier at EOS; tokens are counted from ``usage``).  Closed loop: each client sends its next request
when its last one ended; fixed request counts.

Measured per level: TTFT (request sent → first content chunk) p50 / p90, aggregate completion
tokens/s, and per-request decode tokens/s (tokens after the first / time after the first).
Baseline in the same run: the same composition generated in-process through the same token hook
(``backbone.generate_stream``), no HTTP, one at a time, on a worker thread as the server does: its
TTFT and tokens/s; the table gives the server's numbers as ratios to it.  No target yet (issue 13).

``--threads N`` sets torch's intra-op threads in both (``OMP_NUM_THREADS`` for the server process,
``torch.set_num_threads`` here).  On a small, busy machine the tiny model's per-token ops are too
small for two OpenMP threads: speeds then swing by 10x with how quickly sleeping threads wake,
and ``--threads 1`` gives steadier numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import HOST, Proc, free_port  # noqa: E402

LEVELS = (1, 4, 16)
NAME = "tiny-bundle"


def build_bundle(directory: Path) -> tuple[Any, bytes, bytes]:
    """The tiny bundle from the registry's demo parts; returns (lm, png bytes, wav bytes)."""
    import soundfile as sf
    import torch

    from hub import Hub

    h = Hub()
    torch.manual_seed(0)
    lm = h.attach(h.registry.backbone_spec(h.registry.list_backbones()[0]).demo_source)
    for modality in ("image", "audio"):
        lm.plug(modality, encoder=h.registry.modality(modality).demo_encoder, projector="mlp")
    lm.save(directory)
    buf = io.BytesIO()
    h.registry.modality("image").sample().save(buf, format="PNG")
    rate = 16000
    t = np.arange(rate) / rate
    audio = io.BytesIO()
    sf.write(audio, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return h.load(directory), buf.getvalue(), audio.getvalue()


def messages(png: bytes, wav: bytes, i: int) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "text", "text": f"Request {i}: describe "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
        {"type": "text", "text": " and compare it with "},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}]}]


def in_process(lm: Any, png: bytes, wav: bytes, n: int, max_tokens: int) -> dict[str, Any]:
    """Baseline: compose + generate_stream in this process, one at a time, on a worker thread as the server
    does (what the server does, minus HTTP).  On a loaded 2-core machine the same calls on the main thread
    ran ~10x slower (OpenMP intra-op threads), which would flatter the server."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_in_process, lm, png, wav, n, max_tokens).result()


def _in_process(lm: Any, png: bytes, wav: bytes, n: int, max_tokens: int) -> dict[str, Any]:
    import torch

    from hub.serve.chat_messages import plain_prompt

    ttft, rates, tokens, wall = [], [], 0, 0.0
    for i in range(n):
        prompt = plain_prompt([("user", f"Request {i}: describe <image> and compare it with <audio>")])
        marks: list[float] = []
        start = time.perf_counter()
        with torch.inference_mode():
            comp = lm.compose([prompt], image=[png], audio=[wav])
            ids = lm.backbone.generate_stream(comp.inputs_embeds, comp.attention_mask, max_tokens,
                                              lambda ids: marks.append(time.perf_counter()) and False,
                                              do_sample=False)[0]
        end = time.perf_counter()
        wall += end - start
        tokens += len(ids)
        ttft.append(marks[0] - start)
        if len(ids) > 1:
            rates.append((len(ids) - 1) / (end - marks[0]))
    return {"system": "in-process", "clients": 1, "requests": n, "ttft_p50_ms": 1000 * float(np.median(ttft)),
            "ttft_p90_ms": 1000 * float(np.percentile(ttft, 90)), "tokens_per_s": tokens / wall,
            "decode_tokens_per_s": float(np.median(rates)) if rates else None, "tokens": tokens, "errors": {}}


async def load(url: str, png: bytes, wav: bytes, clients: int, n: int, max_tokens: int) -> dict[str, Any]:
    """``clients`` closed-loop streaming clients send ``n`` requests in all."""
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    ttft: list[float] = []
    rates: list[float] = []
    tokens = 0
    errors: dict[str, int] = {}
    bar = tqdm(total=n, desc=f"chat x{clients}", unit="req", leave=False)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        async def worker() -> None:
            nonlocal tokens
            while not queue.empty():
                i = queue.get_nowait()
                body = {"model": NAME, "messages": messages(png, wav, i), "max_tokens": max_tokens, "temperature": 0,
                        "stream": True, "stream_options": {"include_usage": True}}
                start = time.perf_counter()
                first = last = None
                used = 0
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                        await r.aread()
                        bar.update()
                        continue
                    async for line in r.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            used = chunk["usage"]["completion_tokens"]
                            tokens += used
                        elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            last = time.perf_counter()
                            first = first or last
                if first is not None:
                    ttft.append(first - start)
                    if used > 1 and last > first:
                        rates.append((used - 1) / (last - first))
                bar.update()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    bar.close()
    return {"system": "mhub serve --bundle", "clients": clients, "requests": n,
            "ttft_p50_ms": 1000 * float(np.median(ttft)) if ttft else None,
            "ttft_p90_ms": 1000 * float(np.percentile(ttft, 90)) if ttft else None,
            "tokens_per_s": tokens / wall, "decode_tokens_per_s": float(np.median(rates)) if rates else None,
            "tokens": tokens, "errors": errors, "seconds": wall}


def run(quick: bool = False, max_tokens: int = 32, json_path: Path | None = None,
        threads: int | None = None) -> dict[str, Any]:
    import torch

    counts = {1: 4, 4: 8, 16: 16} if quick else {1: 12, 4: 32, 16: 64}
    env = {}
    if threads:
        torch.set_num_threads(threads)
        env["OMP_NUM_THREADS"] = str(threads)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "max_tokens": max_tokens, "counts": counts,
                           "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        lm, png, wav = build_bundle(bundle)
        in_process(lm, png, wav, 2, max_tokens)  # warm-up
        rows = [in_process(lm, png, wav, counts[1], max_tokens)]
        port = free_port()
        cmd = [sys.executable, "-c", "from hub.cli import main; main()", "serve", "--bundle", str(bundle),
               "--bundle-name", NAME, "--host", HOST, "--port", str(port), "--log-level", "warning",
               "--chat-queue", "64"]
        server = Proc("chat", cmd, port, "/health/ready", env=env)
        try:
            asyncio.run(load(server.url, png, wav, 1, 2, max_tokens))  # warm-up
            for clients in LEVELS:
                rows.append(asyncio.run(load(server.url, png, wav, clients, counts[clients], max_tokens)))
        finally:
            server.stop()
    base = rows[0]
    for r in rows:
        r["ttft_vs_in_process"] = r["ttft_p50_ms"] / base["ttft_p50_ms"] if r["ttft_p50_ms"] else None
        r["tokens_per_s_vs_in_process"] = r["tokens_per_s"] / base["tokens_per_s"]
    out["rows"] = rows

    def f(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    print(f"\nchat on the tiny bundle (1 image + 1 audio clip per request, greedy, max_tokens {max_tokens}), "
          f"{os.cpu_count()} CPUs, torch threads {out['torch_threads']}, requests {counts}")
    print(f"{'system':22} {'clients':>7} {'TTFT p50 ms':>11} {'p90 ms':>8} {'tok/s':>8} {'decode tok/s':>12} "
          f"{'TTFT x':>7} {'tok/s x':>7}  errors")
    for r in rows:
        print(f"{r['system']:22} {r['clients']:>7} {f(r['ttft_p50_ms']):>11} {f(r['ttft_p90_ms']):>8} "
              f"{f(r['tokens_per_s']):>8} {f(r['decode_tokens_per_s']):>12} {f(r['ttft_vs_in_process'], '.2f'):>7} "
              f"{f(r['tokens_per_s_vs_in_process'], '.2f'):>7}  {r['errors'] or ''}")
    print("x: ratio to the in-process baseline (same composition and token hook, no HTTP, one at a time)")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2))
        print(f"wrote {json_path}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, for development")
    ap.add_argument("--max-tokens", type=int, default=32, help="new tokens per request at most")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads in the server and here")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/serve_chat.json"))
    args = ap.parse_args()
    run(args.quick, args.max_tokens, args.json, args.threads)


if __name__ == "__main__":
    main()
