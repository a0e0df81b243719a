"""The mhub CLI, and plugins installed for real through their entry points."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hub.cli import main

ROOT = Path(__file__).resolve().parents[1]
MHUB = [sys.executable, "-m", "hub.cli"]


def mhub(*args, env=None, check=True):
    """Run mhub in-process (fast), or in a subprocess when ``env`` changes what is installed."""
    if env is None:
        res = CliRunner().invoke(main, list(args), catch_exceptions=False)
        out = subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)
    else:
        out = subprocess.run([*MHUB, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"mhub {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "cat.png"
    Image.new("RGB", (48, 40), (200, 120, 40)).save(path)
    return path


def test_help_on_every_command():
    for cmd in ([], ["plugins"], ["embed"], ["demo"]):
        assert "Usage:" in mhub(*cmd, "--help").stdout


def test_plugins_json_lists_modalities_encoders_and_distributions():
    data = json.loads(mhub("plugins", "--json").stdout)
    assert data["modalities"]["text"]["distribution"] == "modality-hub-text"
    assert data["modalities"]["image"]["distribution"] == "modality-hub-image"
    text = {e["name"]: e for e in data["modalities"]["text"]["encoders"]}
    assert text["minilm-l6"]["default"] and text["minilm-l6"]["pretrained"]
    assert text["tiny-bert"]["pretrained"] is False  # untrained presets are marked
    assert "tiny-clip" in {e["name"] for e in data["modalities"]["image"]["encoders"]}
    human = mhub("plugins").stdout
    assert "untrained" in human and "modality-hub-image" in human


def test_embed_text_json():
    rows = json.loads(mhub("embed", "hello world", "--json").stdout)
    assert rows == [{"input": "hello world", "modality": "text", "encoder": "minilm-l6", "tokens": 4, "dim": 384,
                     "space": "text/minilm-l6@sentence-transformers/all-MiniLM-L6-v2"}]


def test_embed_image_file_and_outputs(cat_png, tmp_path):
    out = mhub("embed", str(cat_png), "--encoder", "tiny-clip").stdout
    assert "image" in out and "tokens=17" in out and "dim=32" in out
    npy = tmp_path / "v.npy"
    mhub("embed", str(cat_png), str(cat_png), "-e", "tiny-clip", "--pooled", "--output", str(npy))
    assert np.load(npy).shape == (2, 32)
    js = tmp_path / "t.json"
    mhub("embed", "one", "two words", "-e", "tiny-bert", "--output", str(js))
    rows = json.loads(js.read_text())
    assert [len(r["tokens"]) for r in rows] == [r["tokens"] and len(r["tokens"]) for r in rows]
    assert [len(r["tokens"][0]) for r in rows] == [32, 32]


def test_embed_default_image_encoder_offline_explains_itself(cat_png):
    res = mhub("embed", str(cat_png), check=False)
    assert res.returncode == 2
    assert "openai/clip-vit-base-patch32" in res.stderr and "tiny-clip" in res.stderr
    assert "Traceback" not in res.stderr


def test_embed_skip_errors(tmp_path):
    res = mhub("embed", "fine", str(tmp_path) + "/", "-e", "tiny-bert", "--skip-errors", "--json", check=False)
    rows = json.loads(res.stdout)
    assert res.returncode == 1 and rows[0]["tokens"] > 0 and "directory" in rows[1]["error"]


def test_demo_prints_a_row_per_modality():
    out = mhub("demo", "--repeat", "2", "--no-pack").stdout
    assert "tokens/item" in out
    for modality in json.loads(mhub("plugins", "--json").stdout)["modalities"]:
        assert any(line.startswith(modality) for line in out.splitlines()), modality


@pytest.fixture(scope="module")
def fixture_plugins(tmp_path_factory):
    """The broken and clashing fixture plugins, pip-installed into a separate target directory."""
    target = tmp_path_factory.mktemp("site")
    for name in ("broken", "clash"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
             "--target", str(target), str(ROOT / "tests" / "fixtures" / "plugins" / name)],
            check=True, capture_output=True, timeout=300,
        )
    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def test_broken_plugins_are_listed_with_errors_while_the_rest_works(fixture_plugins):
    data = json.loads(mhub("plugins", "--json", env=fixture_plugins).stdout)
    plugins = {p["name"]: p for p in data["plugins"]}
    assert plugins["broken"]["distribution"] == "modality-hub-broken"
    assert "RuntimeError: this plugin is broken on purpose" in plugins["broken"]["error"]
    clash = plugins["zz-clash"]["error"]
    assert "modality 'text'" in clash and "modality-hub-text" in clash and "modality-hub-clash" in clash
    assert plugins["text"]["ok"] and data["modalities"]["text"]["distribution"] == "modality-hub-text"
    human = mhub("plugins", env=fixture_plugins).stdout
    assert "Plugin errors" in human and "broken on purpose" in human
    rows = json.loads(mhub("embed", "still works", "-e", "tiny-bert", "--json", env=fixture_plugins).stdout)
    assert rows[0]["tokens"] > 0


def test_example_plugin_is_installed_and_embeds():
    """examples/plugin is pip-installed into the venv by `make install`; found through its entry point."""
    data = json.loads(mhub("plugins", "--json").stdout)
    plugins = {p["name"]: p for p in data["plugins"]}
    assert plugins["example"]["distribution"] == "modality-hub-example"
    assert plugins["example"]["modalities"] == ["series"]
    code = ("import numpy as np; from hub import Hub; te = Hub().embed(np.arange(10, dtype=np.float32));"
            "print(te.modality, te.lengths.tolist(), te.dim)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["series", "[3]", "16"]


def test_generate_with_a_plugged_image(cat_png):
    pytest.importorskip("hub_transformers")
    out = mhub("generate", "--backbone", "tiny-llama", "--plug", "image=tiny-clip:mlp", "What is in <image>?",
               "--image", str(cat_png), "--max-new-tokens", "4")
    assert out.stdout.strip()  # untrained: some text, the plumbing is what is tested
    res = mhub("generate", "--backbone", "tiny-llama", "What is in <image>?", "--image", str(cat_png), check=False)
    assert res.returncode == 2 and "'image' is not plugged" in res.stderr
    res = mhub("generate", "--backbone", "tiny-llama", "--plug", "image=tiny-clip", "<image> and <image>",
               "--image", str(cat_png), check=False)
    assert res.returncode == 2 and "2 placeholder(s)" in res.stderr and "1 item(s) given" in res.stderr


def test_demo_plugs_and_unplugs_each_modality():
    pytest.importorskip("hub_transformers")
    out = mhub("demo", "--repeat", "1", "--no-pack").stdout
    assert "plug → generate → unplug on tiny-llama" in out
    section = out.split("plug → generate → unplug")[1]
    for modality in ("image", "audio", "graph", "3d"):
        assert any(line.startswith(modality) and "error" not in line for line in section.splitlines()), modality


def test_pretrain_and_align_commands(tmp_path):
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    lines = []
    for i in range(6):
        name = list(colours)[i % 2]
        path = tmp_path / "imgs" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (24, 24), colours[name]).save(path)
        lines.append(json.dumps({"item": f"imgs/{i}.png", "caption": f"a {name} square"}))
    out = mhub("pretrain", "image", str(tmp_path / "imgs"), "-e", "tiny-clip", "--batch-size", "4",
               "--out", str(tmp_path / "pre")).stdout
    assert "encoder saved to" in out and (tmp_path / "pre" / "encoder" / "model.safetensors").is_file()
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    out = mhub("align", "image", str(tmp_path / "pairs.jsonl"), "-e", "tiny-clip", "--epochs", "2",
               "--out", str(tmp_path / "aligned")).stdout
    assert "aligned projector saved to" in out and (tmp_path / "aligned" / "projector.safetensors").is_file()
    (tmp_path / "bad.jsonl").write_text('{"caption": "no item"}\n')
    res = mhub("align", "image", str(tmp_path / "bad.jsonl"), "-e", "tiny-clip", "--out", str(tmp_path / "x"), check=False)
    assert res.returncode == 2 and "bad.jsonl:1" in res.stderr


def test_demo_queries_the_starter_pack_and_eval_reports(tmp_path, monkeypatch):
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make install installs it)")
    monkeypatch.setenv("MODALITY_HUB_CACHE", str(tmp_path))
    out = mhub("demo", "--repeat", "1", "--budget", "tiny").stdout
    section = out.split("starter pack (tiny)")[1]
    lines = [line for line in section.splitlines() if line.startswith("'")]
    assert len(lines) == 3 and all(m in lines[0] for m in ("image:", "audio:", "graph:", "3d:"))
    assert list((tmp_path / "starter-pack-tiny" / "demo").glob("*.png"))
    out = mhub("eval", "--budget", "tiny", "--json", str(tmp_path / "eval.json")).stdout
    assert "audio->image" in out and json.loads((tmp_path / "eval.json").read_text())["zero_shot"]["graph"]["top1"] >= 0
