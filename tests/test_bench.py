"""hub.onnx.bench (torch eager vs ONNX Runtime, same inputs) and the GPU benchmark script's no-CUDA exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hub.onnx.bench import format_table, load_cases, presets, run
from hub.errors import InvalidInputError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]


def test_run_torch_vs_onnx_on_the_same_inputs(hub, tmp_path, capsys, monkeypatch):
    calls = []
    embed = type(hub).embed

    def spy(self, items, *args, **kwargs):  # the public path, both runtimes
        calls.append(kwargs.get("runtime"))
        return embed(self, items, *args, **kwargs)

    monkeypatch.setattr(type(hub), "embed", spy)
    out = tmp_path / "bench" / "rows.json"
    rows = run(["text"], encoders=["tiny-bert"], batch_size=2, items=4, repeats=3, json_path=out, hub=hub,
               progress=False)
    assert [(r["modality"], r["encoder"], r["runtime"]) for r in rows] == [
        ("text", "tiny-bert", "torch"), ("text", "tiny-bert", "onnx")]
    torch_row, onnx_row = rows
    assert not torch_row["error"] and not onnx_row["error"], rows
    # 1 warm-up batch + 3 passes x 2 batches per runtime, all through Hub.embed(runtime=...)
    assert calls.count("torch") == 1 + 3 * 2 and calls.count("onnx") == 1 + 3 * 2
    for r in rows:
        assert r["items"] == 4 and r["batch_size"] == 2 and r["tokens_per_item"] > 2 and r["passes"] == 3
        assert r["items_per_s"] == pytest.approx(4 / r["s_per_pass"])
        assert 0 < r["ms_per_batch_p50"] <= r["ms_per_batch_p90"]
    assert torch_row["speedup_vs_torch"] == 1.0 and torch_row["beyond_noise"] is None
    assert onnx_row["ratio_lo"] <= onnx_row["speedup_vs_torch"] <= onnx_row["ratio_hi"]  # median inside the band
    assert onnx_row["beyond_noise"] == (onnx_row["ratio_lo"] > 1.0)
    assert 0 <= onnx_row["max_abs_diff"] <= 1e-4  # same inputs, same batches: fp32 parity
    assert onnx_row["min_cosine"] >= 0.9999
    assert onnx_row["export_s"] > 0 and onnx_row["providers"] == ["CPUExecutionProvider"]

    saved = json.loads(out.read_text())
    assert saved["rows"] == rows
    meta = saved["meta"]
    assert meta["torch"] == torch.__version__ and meta["onnxruntime"] and meta["torch_threads"] >= 1
    assert meta["cpu"] and meta["items"] == 4 and meta["batch_size"] == 2 and meta["passes"] == 3
    assert len(meta["load_average"]) == 3
    table = capsys.readouterr().out
    assert "tiny-bert" in table and "onnx" in table and "speedup" in table and "band" in table


def test_cases_carry_options_sizes_and_their_own_batches(hub, tmp_path):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"cases": [
        {"modality": "graph", "encoder": "gin", "size": "real", "label": "gin 48-d", "options": {"hidden_channels": 48},
         "batch_size": 3, "items": 3},
        {"modality": "text", "encoder": "tiny-bert"},
    ]}))
    rows = run(["graph"], cases=load_cases(cases), repeats=1, hub=hub, progress=False, print_table=False)
    assert [(r["encoder"], r["runtime"], r["size"]) for r in rows] == [("gin", "torch", "real"), ("gin", "onnx", "real")]
    assert all(r["options"] == {"hidden_channels": 48} and r["batch_size"] == 3 and r["items"] == 3 for r in rows)
    assert not rows[1]["error"] and rows[1]["max_abs_diff"] <= 1e-4
    assert "gin 48-d" in format_table(rows)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"modality": "text", "encoder": "tiny-bert", "sise": "real"}]))
    with pytest.raises(InvalidInputError, match="case 0: sise"):
        load_cases(bad)


def test_shipped_cases_name_registered_encoders_with_valid_options(hub):
    from hub._registry import validate_options

    cases = load_cases(ROOT / "benchmarks" / "bench_cases.json")
    assert {c.modality for c in cases if c.size == "real"} >= {"text", "image", "audio", "graph", "3d"}
    for c in cases:
        spec = hub.registry.encoder_spec(c.encoder)
        assert spec.modality == c.modality
        validate_options(spec.options, dict(c.options), c.encoder)  # raises on a typo


def test_cli_bench_with_a_config(tmp_path):
    from click.testing import CliRunner

    from hub.cli import main

    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"modality": "text", "encoder": "tiny-bert", "items": 2, "batch_size": 2},
                                 {"modality": "text", "encoder": "minilm-l6", "size": "real", "items": 2}]))
    out = tmp_path / "rows.json"
    res = CliRunner().invoke(main, ["bench", "--config", str(cases), "--size", "tiny", "--passes", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["encoder"], r["runtime"]) for r in rows] == [("tiny-bert", "torch"), ("tiny-bert", "onnx")]
    assert rows[1]["speedup_vs_torch"] > 0 and "band" in res.output


def test_torch_only_has_no_export(hub):
    rows = run(["text"], runtimes=("torch",), encoders=["tiny-bert"], batch_size=4, items=4, repeats=1, hub=hub,
               progress=False, print_table=False)
    assert [r["runtime"] for r in rows] == ["torch"] and rows[0]["export_s"] is None


def test_bad_arguments_are_refused(hub):
    with pytest.raises(InvalidInputError, match="unknown runtime.*torch, onnx"):
        run(["text"], runtimes=("tensorrt",), hub=hub, print_table=False)
    with pytest.raises(InvalidInputError, match="batch_size must be a positive int"):
        run(["text"], batch_size=0, hub=hub, print_table=False)


def test_presets_and_error_rows(hub):
    assert presets(hub, "text")[0] == "tiny-bert"  # the untrained preset always runs
    assert presets(hub, "image") == [hub.registry.modality("image").demo_encoder]  # tiny-clip: one preset
    table = format_table([{"modality": "text", "encoder": "minilm-l6", "runtime": "onnx", "error": "weights not available"}])
    assert "error: weights not available" in table


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "onnx_gpu.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_gpu_script_help():
    proc = _script("--help")
    assert proc.returncode == 0 and "--out" in proc.stdout and "ViT-B/16" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_gpu_script_exits_2_without_cuda(tmp_path):
    proc = _script("--out", str(tmp_path))
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "onnxruntime-gpu" in proc.stderr
    assert not (tmp_path / "onnx_gpu.json").exists()
