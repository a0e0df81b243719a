"""`POST /v1/chat/completions` and the admin endpoints against a real uvicorn server on 127.0.0.1.

On the tiny bundle (tiny-llama + tiny-clip image + tiny-whisper audio through MLP projectors):
answers equal ``lm.generate`` with the same seed token for token; streaming concatenates to the
non-streamed answer; the official ``openai`` client works; 400s name what is wrong; a client that
disconnects mid-stream frees the model; plug → chat → unplug at run time.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("hub_transformers")

from hub.serve import BackgroundServer, ServeConfig, create_app  # noqa: E402
from media import b64, png, wav  # noqa: E402  (tests/media.py)
from hub.serve.chat import ChatService  # noqa: E402
from hub.serve.chat_messages import plain_prompt  # noqa: E402
from hub.serve.chat_schemas import ChatConfig  # noqa: E402

KEY = "test-key"
NAME = "tiny-bundle"
SAMPLING = {"temperature": 0.8, "top_p": 0.9}


# -- helpers ---------------------------------------------------------------------------------------
# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory, hub) -> Path:
    lm = hub.attach("tiny-llama")
    lm.plug("image", encoder="tiny-clip", projector="mlp")
    lm.plug("audio", encoder="tiny-whisper", projector="mlp")
    return lm.save(tmp_path_factory.mktemp("chat") / "bundle")


@pytest.fixture(scope="module")
def ref(bundle, hub):
    """The same bundle loaded in the test process: what the server must reproduce."""
    return hub.load(bundle)


@contextmanager
def running(bundle, hub, *, key: str | None = KEY, **chat):
    service = ChatService(hub.load(bundle), NAME, ChatConfig(**chat))
    with BackgroundServer(create_app([], ServeConfig(api_key=key), chat=service)) as server:
        server.service = service
        yield server


@pytest.fixture(scope="module")
def server(bundle, hub):
    with running(bundle, hub) as s:
        yield s


@pytest.fixture(scope="module")
def media(hub):
    return {"image": png(hub.registry.modality("image").sample()), "audio": wav(0.5, 440.0)}


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(data)}}


def audio_part(data: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": "wav"}}


def graph_part(**graph) -> dict:
    return {"type": "graph", "graph": {"edge_index": [[0, 1, 2], [1, 2, 0]], **graph}}


def chat(server, body: dict, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/v1/chat/completions", json={"model": NAME, **body}, headers=headers,
                      timeout=120, **kw)


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def stream(server, body: dict) -> tuple[list[dict], list[str]]:
    """The chunks of a streamed answer and every raw ``data:`` line (ending with [DONE])."""
    chunks, lines = [], []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={"model": NAME, "stream": True, **body},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
                if line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
    return chunks, lines


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def metric(server, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def multimodal_messages(media) -> list[dict]:
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Describe "}, image_part(media["image"]),
                                         {"type": "text", "text": " and compare it with "}, audio_part(media["audio"])]}]


MULTIMODAL_PROMPT = plain_prompt([("system", "Be brief."), ("user", "Describe <image> and compare it with <audio>")])


# -- equality with the library ----------------------------------------------------------------------
def test_image_and_audio_chat_equals_lm_generate(server, ref, media):
    assert MULTIMODAL_PROMPT == "system: Be brief.\nuser: Describe <image> and compare it with <audio>\nassistant:"
    items = {"image": [media["image"]], "audio": [media["audio"]]}
    for options in ({"seed": 1234, **SAMPLING}, {"temperature": 0}):
        r = chat(server, {"messages": multimodal_messages(media), "max_tokens": 24, **options})
        got = answer(r)
        sampling = options.get("temperature") != 0
        if sampling:
            torch.manual_seed(options["seed"])
        gen = {"do_sample": True, "top_k": 0, **SAMPLING} if sampling else {}
        assert got == ref.generate(MULTIMODAL_PROMPT, max_new_tokens=24, items=items, **gen)
        # token for token: the ids the backbone makes from the same composition and seed
        if sampling:
            torch.manual_seed(options["seed"])
        comp = ref.compose([MULTIMODAL_PROMPT], **items)
        ids = ref.backbone.generate(comp.inputs_embeds, comp.attention_mask, 24, **gen)[0]
        assert ref.backbone.decode(ids) == got
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == NAME
        assert body["choices"][0]["finish_reason"] == ("stop" if ids[-1] == ref.backbone.eos_token_id else "length")
        usage = body["usage"]
        assert usage["completion_tokens"] == len(ids)
        assert usage["prompt_tokens"] == comp.inputs_embeds.shape[1] == sum(usage["prompt_tokens_by_modality"].values())
        spans = {m: e - s for m, s, e in comp.spans[0]}
        assert usage["prompt_tokens_by_modality"] == {"text": usage["prompt_tokens"] - sum(spans.values()), **spans}
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # a different seed samples a different answer (the seed is really used)
    other = answer(chat(server, {"messages": multimodal_messages(media), "max_tokens": 24, "seed": 99, **SAMPLING}))
    again = answer(chat(server, {"messages": multimodal_messages(media), "max_tokens": 24, "seed": 99, **SAMPLING}))
    assert other == again != got


def test_streaming_concatenates_to_the_answer(server, media):
    body = {"messages": multimodal_messages(media), "max_tokens": 30, "seed": 5, **SAMPLING}
    whole = chat(server, body).json()
    chunks, lines = stream(server, {**body, "stream_options": {"include_usage": True}})
    assert lines[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == NAME for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) >= 2  # sent as it is made, not one chunk at the end
    assert text_of(chunks) == whole["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]

    # a stop string: the answer is cut before it, streamed or not, with finish_reason "stop"
    text = whole["choices"][0]["message"]["content"]
    stop = next(text[i:i + 2] for i in range(len(text) // 3, len(text) - 2) if text[i:i + 2].strip()
                and text.find(text[i:i + 2]) == i)
    cut = chat(server, {**body, "stop": [stop]}).json()
    assert cut["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": text[:text.find(stop)]},
                                 "finish_reason": "stop", "logprobs": None}
    assert cut["usage"]["completion_tokens"] < whole["usage"]["completion_tokens"]  # generation stopped early
    chunks, _ = stream(server, {**body, "stop": stop})
    assert text_of(chunks) == text[:text.find(stop)]


def test_openai_client(server, media):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    assert NAME in [m.id for m in client.models.list().data]
    kwargs = {"model": NAME, "messages": multimodal_messages(media), "max_tokens": 16, "seed": 7, **SAMPLING}
    done = client.chat.completions.create(**kwargs)
    assert done.choices[0].message.role == "assistant" and done.usage.prompt_tokens > 0
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
             if c.choices]
    assert "".join(parts) == done.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="not plugged"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": [graph_part()]}])


# -- errors -------------------------------------------------------------------------------------------
def test_400s_name_what_is_wrong(server, ref, media):
    def err(body, status=400):
        r = chat(server, body)
        assert r.status_code == status, r.text
        return r.json()["error"]

    e = err({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is "}, graph_part()]}]})
    assert e["param"] == "messages[0].content[1]" and e["code"] == "modality_not_plugged"
    assert "image (<image>)" in e["message"] and "audio (<audio>)" in e["message"]

    # too long: by how much, counted with the items
    words = "cat " * 600
    e = err({"messages": [{"role": "user", "content": [{"type": "text", "text": words}, image_part(media["image"])]}]})
    head, tail = plain_prompt([("user", words + "<image>")]).split("<image>")
    b = ref.backbone
    want = len(b.prefix_ids()) + len(b.tokenize(head)) + 17 + len(b.tokenize(tail))
    assert f"composes to {want} tokens" in e["message"] and f"by {want - b.max_context}" in e["message"]
    assert e["code"] == "context_length_exceeded" and "image 17" in e["message"]
    e = err({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 600})
    assert e["param"] == "max_tokens" and re.search(r"over .* context window of 512 by \d+", e["message"])

    # bad parts, each named
    e = err({"messages": [{"role": "user", "content": [image_part(b"not a png")]}]})
    assert e["param"] == "messages[0].content[0]" and "not a readable image" in e["message"]
    e = err({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]})
    assert "never fetched" in e["message"]
    e = err({"messages": [{"role": "user", "content": [{"type": "text"}]}]})
    assert e["param"] == "messages[0].content[0]" and e["code"] == "invalid_part"
    e = err({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]})
    assert e["code"] == "invalid_part"
    e = err({"messages": [{"role": "assistant", "content": [image_part(media["image"])]}]})
    assert "user messages" in e["message"]
    e = err({"messages": [{"role": "user", "content": "look at <image> please"}]})
    assert e["code"] == "placeholder_in_text" and e["param"] == "messages[0].content"
    e = err({"messages": [{"role": "tool", "content": "x"}]})
    assert "tool calls are not supported" in e["message"]
    assert err({"messages": []})["param"] == "messages"
    # parameters
    assert err({"messages": [{"role": "user", "content": "hi"}], "n": 2})["param"] == "n"
    assert "refused rather than ignored" in err({"messages": [{"role": "user", "content": "hi"}],
                                                 "frequency_penalty": 0.5})["message"]
    assert err({"messages": [{"role": "user", "content": "hi"}], "best_of": 2})["code"] == "unknown_parameter"
    assert err({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]})["param"] == "stop"
    assert err({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404)["code"] == "model_not_found"
    # accepted and ignored / neutral values pass
    ok = chat(server, {"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "hi"}],
                       "max_completion_tokens": 3, "n": 1, "user": "u", "frequency_penalty": 0, "logprobs": False,
                       "response_format": {"type": "text"}, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3
    assert chat(server, {"messages": [{"role": "user", "content": "hi"}]}, key=None).status_code == 401


def test_queue_full_429(bundle, hub):
    with running(bundle, hub, max_queue=1) as server:
        first = _open_stream(server.port, {"model": NAME, "messages": [{"role": "user", "content": "a story"}],
                                           "max_tokens": 400, "temperature": 0, "stream": True})
        waiting = threading.Thread(target=chat, args=(server, {"messages": [{"role": "user", "content": "hi"}],
                                                               "max_tokens": 2, "temperature": 0}))
        try:
            _read_until_content(first)  # the model is busy with the first request
            waiting.start()
            deadline = time.monotonic() + 10
            while metric(server, "mhub_chat_queue_depth") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            r = chat(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
        finally:
            first.close()
            if waiting.is_alive():
                waiting.join(30)


# -- disconnects --------------------------------------------------------------------------------------
def _open_stream(port: int, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def _read_until_content(sock: socket.socket) -> bytes:
    seen = b""
    while b'"content": "' not in seen.split(b'"role": "assistant", "content": ""', 1)[-1]:
        data = sock.recv(4096)
        assert data, seen
        seen += data
    assert seen.startswith(b"HTTP/1.1 200")
    return seen


def test_disconnect_mid_stream_frees_the_model(server):
    before = metric(server, "mhub_chat_requests_total", '{outcome="cancelled"}')
    body = {"model": NAME, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 450,
            "temperature": 0, "stream": True}
    sock = _open_stream(server.port, body)
    _read_until_content(sock)
    sock.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 20
    while metric(server, "mhub_chat_requests_total", '{outcome="cancelled"}') == before:
        assert time.monotonic() < deadline, "the server never noticed the disconnect"
        time.sleep(0.05)
    assert metric(server, "mhub_chat_running") == 0 and metric(server, "mhub_chat_queue_depth") == 0
    made = metric(server, "mhub_chat_completion_tokens_total", '{outcome="cancelled"}')
    assert 0 < made < 450  # stopped at its next token, not run to the end
    r = chat(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200


# -- plug and unplug at run time ------------------------------------------------------------------------
def test_plug_chat_unplug(server):
    text_only = {"messages": [{"role": "user", "content": "What is in the picture?"}], "max_tokens": 12,
                 "temperature": 0}
    with_graph = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is "}, graph_part()]}],
                  "max_tokens": 6, "temperature": 0}
    baseline = answer(chat(server, text_only))
    assert chat(server, with_graph).status_code == 400
    admin = f"{server.url}/v1/admin"
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{admin}/plug", json={"modality": "graph", "encoder": "gin"}).status_code == 401

    r = httpx.post(f"{admin}/plug", json={"modality": "graph", "encoder": "gin", "projector": "mlp"}, headers=auth,
                   timeout=60)
    assert r.status_code == 200, r.text
    assert set(r.json()["plugged"]) == {"image", "audio", "graph"}
    card = next(m for m in httpx.get(f"{server.url}/v1/models", headers=auth).json()["data"] if m["id"] == NAME)
    assert card["kind"] == "chat" and card["plugged"]["graph"]["encoder"] == "gin"
    assert answer(chat(server, text_only)) == baseline
    r = chat(server, with_graph)
    assert r.status_code == 200, r.text
    # an item the encoder refuses (wrong feature width) is a 400 naming its part
    bad = {"messages": [{"role": "user", "content": [graph_part(x=[[1.0], [2.0], [3.0]])]}]}
    e = chat(server, bad).json()["error"]
    assert e["param"] == "messages[0].content[0]" and "in_channels" in e["message"]
    assert r.json()["usage"]["prompt_tokens_by_modality"]["graph"] > 0

    r = httpx.post(f"{admin}/unplug", json={"modality": "graph"}, headers=auth, timeout=60)
    assert r.status_code == 200 and set(r.json()["plugged"]) == {"image", "audio"}
    e = chat(server, with_graph).json()["error"]
    assert e["code"] == "modality_not_plugged" and "graph" in e["message"]
    assert answer(chat(server, text_only)) == baseline
    card = next(m for m in httpx.get(f"{server.url}/v1/models", headers=auth).json()["data"] if m["id"] == NAME)
    assert set(card["plugged"]) == {"image", "audio"}

    bad = httpx.post(f"{admin}/unplug", json={"modality": "graph"}, headers=auth).json()["error"]
    assert bad["code"] == "modality_not_plugged"
    bad = httpx.post(f"{admin}/plug", json={"modality": "graph", "encoder": "no-such-encoder"}, headers=auth)
    assert bad.status_code == 400 and "no-such-encoder" in bad.json()["error"]["message"]


def test_admin_needs_a_key_unless_allowed(bundle, hub):
    with running(bundle, hub, key=None) as server:
        r = httpx.post(f"{server.url}/v1/admin/unplug", json={"modality": "audio"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
        assert "audio" in server.service.engine.plugged
    with running(bundle, hub, key=None, allow_admin=True) as server:
        r = httpx.post(f"{server.url}/v1/admin/unplug", json={"modality": "audio"})
        assert r.status_code == 200 and set(r.json()["plugged"]) == {"image"}


def test_cli_serves_a_bundle(bundle, monkeypatch):
    from click.testing import CliRunner

    import hub.serve.runner as runner
    from hub.cli import main

    apps = []
    monkeypatch.setattr(runner, "serve", lambda app, **kw: apps.append((app, kw)))
    result = CliRunner().invoke(main, ["serve", "--bundle", str(bundle), "--bundle-name", "b", "--allow-admin",
                                       "--port", "9"])
    assert result.exit_code == 0, result.output
    app, kw = apps[0]
    assert kw["port"] == 9
    with BackgroundServer(app) as server:
        models = httpx.get(f"{server.url}/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["b"]  # chat only: no embedding model loaded
        r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": "b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200, r.text
    assert "--bundle" in CliRunner().invoke(main, ["serve", "--help"]).output


TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_template_when_the_tokenizer_has_one(bundle, hub, ref, media):
    """With a chat template the placeholders sit where the parts were, and the template's BOS is not doubled."""
    with running(bundle, hub) as server:
        server.service.engine.tokenizer.chat_template = TEMPLATE
        r = chat(server, {"messages": multimodal_messages(media), "max_tokens": 10, "temperature": 0})
        prompt = "<|system|>Be brief.\n<|user|>Describe <image> and compare it with <audio>\n<|assistant|>"
        items = {"image": [media["image"]], "audio": [media["audio"]]}
        assert answer(r) == ref.generate(prompt, max_new_tokens=10, items=items)
        comp = ref.compose([prompt], **items)
        assert r.json()["usage"]["prompt_tokens"] == comp.inputs_embeds.shape[1]  # one BOS, not two
