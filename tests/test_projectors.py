"""Projectors: shapes, masks, padding invariance, save/load, importer parity, training."""

from __future__ import annotations

import json
import math
import typing

import pytest
import torch

from hub.errors import InvalidInputError, InvalidOptionsError, SpaceMismatchError, WeightsNotFoundError
from hub.lm.projectors import (
    PROJECTOR_KINDS,
    InvalidWeightsError,
    Projector,
    ProjectorConfig,
    build_projector,
)
from hub.tokens import TokenEmbeddings
from hub_transformers.importers import load_llava_projector, projector_from_llava, projector_from_qwen2_audio

IN, OUT = 12, 16
KIND_OPTIONS = {
    "linear": {},
    "mlp": {},
    "mlp3": {"depth": 3, "hidden_dim": 20},
    "pool": {"stride": 3},
    "pool_norm": {"stride": 2, "norm": True},
    "resampler": {"num_queries": 5, "heads": 4},
}
CASES = list(KIND_OPTIONS)


def make(case: str, **extra) -> Projector:
    kind = case.rstrip("0123456789").split("_")[0]
    return build_projector(kind, IN, OUT, **{**KIND_OPTIONS[case], **extra})


def expected_count(p: Projector, n: int) -> int:
    table = {
        "linear": lambda: n,
        "mlp": lambda: n,
        "pool": lambda: math.ceil(n / p.config.stride),
        "resampler": lambda: p.config.num_queries if n else 0,
    }
    return table[p.kind]()


def batch(lengths: list[int], seed: int = 1, pad_value: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    tokens = torch.randn(len(lengths), width, IN, generator=g)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    if pad_value is not None:
        tokens = tokens.masked_fill(~mask.unsqueeze(-1), pad_value)
    return tokens, mask


def test_registry_matches_config_kinds():
    # kinds are registered through the register_projectors hook, each with its own pydantic config model
    assert set(PROJECTOR_KINDS) >= {"linear", "mlp", "resampler", "pool"}
    for kind, cls in PROJECTOR_KINDS.items():
        assert cls.kind == kind and issubclass(cls, Projector)
        literal = typing.get_args(cls.config_model.model_fields["kind"].annotation)
        assert literal == (kind,) and issubclass(cls.config_model, ProjectorConfig)


@pytest.mark.parametrize("case", CASES)
def test_shapes_masks_and_num_tokens(case):
    p = make(case).eval()
    lengths = [1, 2, 3, 4, 5, 7, 9]
    tokens, mask = batch(lengths)
    out, out_mask = p(tokens, mask)
    counts = [p.num_tokens(n) for n in lengths]
    assert counts == [expected_count(p, n) for n in lengths]
    assert out.shape == (len(lengths), max(counts), OUT) and out.dtype == torch.float32
    assert out_mask.dtype == torch.bool and out_mask.shape == out.shape[:2]
    assert out_mask.sum(1).tolist() == counts
    # real tokens come first, padded rows are exactly zero
    assert all(bool(out_mask[i, :c].all()) for i, c in enumerate(counts))
    assert bool((out[~out_mask] == 0).all())
    assert bool(torch.isfinite(out).all())
    assert p.num_tokens(0) == 0
    with pytest.raises(InvalidInputError):
        p.num_tokens(-1)


def test_pool_counts_not_divisible_by_stride():
    p = build_projector("pool", IN, OUT, stride=4)
    assert [p.num_tokens(n) for n in (1, 3, 4, 5, 8, 9, 13)] == [1, 1, 1, 2, 2, 3, 4]
    # the average is over real tokens only: a partial window averages its real ones
    tokens, mask = batch([6])
    out, out_mask = p(tokens, mask)
    assert out_mask.tolist() == [[True, True]]
    expect = p.linear(torch.stack([tokens[0, :4].mean(0), tokens[0, 4:6].mean(0)]))
    torch.testing.assert_close(out[0], expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_batch_equals_singles_and_padding_is_ignored(case):
    p = make(case).eval()
    lengths = [5, 1, 8, 3, 4]
    tokens, mask = batch(lengths)
    with torch.no_grad():
        out, out_mask = p(tokens, mask)
        garbage, _ = p(*batch(lengths, pad_value=float("nan")))  # NaN padding must not leak
        huge, _ = p(*batch(lengths, pad_value=1e6))
        for i, n in enumerate(lengths):
            single, single_mask = p(tokens[i : i + 1, :n], mask[i : i + 1, :n])
            k = p.num_tokens(n)
            assert single.shape[1] == k and bool(single_mask.all())
            torch.testing.assert_close(out[i, :k], single[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(garbage, out, rtol=0, atol=0)
    torch.testing.assert_close(huge, out, rtol=0, atol=0)


def test_resampler_item_without_tokens_is_masked_not_nan():
    p = make("resampler").eval()
    tokens, mask = batch([3, 2])
    mask[1] = False
    out, out_mask = p(tokens, mask)
    assert out_mask[0].all() and not out_mask[1].any()
    assert bool(torch.isfinite(out).all()) and bool((out[1] == 0).all())


@pytest.mark.parametrize("case", CASES)
def test_deterministic_construction(case):
    a, b = make(case), make(case)
    other = make(case, seed=1)
    sa, sb, so = a.state_dict(), b.state_dict(), other.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], so[k]) for k in sa)
    # the global RNG is left alone
    torch.manual_seed(123)
    first = torch.rand(3)
    torch.manual_seed(123)
    make(case)
    assert torch.equal(torch.rand(3), first)


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip(case, tmp_path):
    p = make(case, seed=7).eval()
    p.save(tmp_path / "proj")
    assert sorted(f.name for f in (tmp_path / "proj").iterdir()) == ["projector.json", "projector.safetensors"]
    q = Projector.load(tmp_path / "proj").eval()
    assert type(q) is type(p) and q.config == p.config
    tokens, mask = batch([4, 7, 2])
    with torch.no_grad():
        (a, am), (b, bm) = p(tokens, mask), q(tokens, mask)
    assert torch.equal(a, b) and torch.equal(am, bm)
    assert type(p).load(tmp_path / "proj").kind == p.kind


def test_load_errors(tmp_path):
    p = make("mlp")
    p.save(tmp_path / "ok")
    with pytest.raises(WeightsNotFoundError, match="projector.json is missing"):
        Projector.load(tmp_path / "nowhere")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "projector.json").write_text((tmp_path / "ok" / "projector.json").read_text())
    with pytest.raises(WeightsNotFoundError, match="projector.safetensors is missing"):
        Projector.load(tmp_path / "noweights")

    def tampered(name: str, **changes) -> str:
        d = tmp_path / name
        p.save(d)
        raw = json.loads((d / "projector.json").read_text())
        raw.update(changes)
        (d / "projector.json").write_text(json.dumps(raw))
        return d

    with pytest.raises(InvalidOptionsError, match="unknown projector kind 'conv'.*linear, mlp"):
        Projector.load(tampered("kind", kind="conv"))
    with pytest.raises(InvalidOptionsError, match="in_dim"):
        Projector.load(tampered("neg", in_dim=-3))
    with pytest.raises(InvalidOptionsError, match="extra"):
        Projector.load(tampered("extra", activation="relu"))
    with pytest.raises(InvalidWeightsError, match=r"linear_1.weight: expected \(16, 13\), got \(16, 12\)"):
        Projector.load(tampered("shape", in_dim=13))
    with pytest.raises(InvalidWeightsError, match="missing tensors.*linear_3"):
        Projector.load(tampered("depth", depth=3))
    with pytest.raises(InvalidWeightsError, match="unexpected tensors"):
        Projector.load(tampered("kindswap", kind="linear"))
    with pytest.raises(InvalidOptionsError, match="a 'mlp' projector, not 'pool'"):
        PROJECTOR_KINDS["pool"].load(tmp_path / "ok")

    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "projector.json").write_text("{not json")
    (tmp_path / "badjson" / "projector.safetensors").write_bytes(b"")
    with pytest.raises(InvalidOptionsError, match="not valid JSON"):
        Projector.load(tmp_path / "badjson")
    corrupt = tampered("corrupt")
    (corrupt / "projector.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InvalidWeightsError, match="not a readable safetensors file"):
        Projector.load(corrupt)


def test_invalid_kinds_and_options():
    with pytest.raises(InvalidOptionsError, match="unknown projector kind 'qformer'; valid kinds: linear, mlp"):
        build_projector("qformer", IN, OUT)
    with pytest.raises(InvalidOptionsError, match=r"does not take option\(s\) \['num_queries'\].*takes: bias, seed"):
        build_projector("linear", IN, OUT, num_queries=4)
    with pytest.raises(InvalidOptionsError, match="does not take"):
        build_projector("mlp", IN, OUT, dropout=0.1)
    with pytest.raises(InvalidOptionsError, match="heads=3 must divide the inner width 16"):
        build_projector("resampler", IN, OUT, heads=3)
    with pytest.raises(InvalidOptionsError, match="depth"):
        build_projector("mlp", IN, OUT, depth=0)
    with pytest.raises(InvalidOptionsError, match="stride"):
        build_projector("pool", IN, OUT, stride=0)
    with pytest.raises(InvalidOptionsError, match="out_dim"):
        build_projector("linear", IN, 0)
    assert build_projector("resampler", IN, OUT, heads=3, hidden_dim=24).config.inner_dim == 24
    assert isinstance(InvalidOptionsError("x"), ValueError)


def test_bad_inputs_raise_typed_errors():
    p = make("mlp")
    with pytest.raises(SpaceMismatchError, match="dim 12; got dim 9"):
        p(torch.randn(2, 3, 9), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match=r"mask must be \(batch, tokens\) = \(2, 3\); got \(2, 4\)"):
        p(torch.randn(2, 3, IN), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="float tokens"):
        p(torch.ones(2, 3, IN, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
    te = TokenEmbeddings(torch.randn(1, 3, 9), torch.ones(1, 3, dtype=torch.bool), "image", "image/enc@x")
    with pytest.raises(SpaceMismatchError, match="image/enc@x"):
        p.project(te, "backbone/tiny")


@pytest.mark.parametrize("case", ["linear", "pool", "resampler"])
def test_project_token_embeddings(case):
    p = make(case).eval()
    tokens, mask = batch([3, 6])
    te = TokenEmbeddings(tokens, mask, "audio", "audio/enc@x", indices=[4, 9])
    out = p.project(te, "backbone/tiny")
    assert out.space == "backbone/tiny" and out.modality == "audio" and out.indices == [4, 9]
    assert out.dim == OUT and out.lengths.tolist() == [p.num_tokens(3), p.num_tokens(6)]
    with torch.no_grad():
        torch.testing.assert_close(out.tokens, p(tokens, mask)[0], rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_trainable(case):
    p = make(case, seed=3).train()
    tokens, mask = batch([5, 3, 6], seed=4)
    target = torch.randn(3, p.num_tokens(6), OUT, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(p.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        out, out_mask = p(tokens, mask)
        return ((out - target) ** 2)[out_mask].mean()

    first = loss_fn()
    first.backward()
    grads = {n: q.grad for n, q in p.named_parameters()}
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads.values()), grads.keys()
    opt.step()
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.8 * first.item()


# -- parity with transformers' projectors ------------------------------------------------


def llava_projector(vision_feature_layer, bias: bool = True):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2),
        text_config=LlamaConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                                vocab_size=64),
        projector_hidden_act="gelu",
        vision_feature_layer=vision_feature_layer,
        multimodal_projector_bias=bias,
    )
    torch.manual_seed(11)
    return LlavaMultiModalProjector(config).eval()


@pytest.mark.parametrize("layer, bias", [(-2, True), ([-3, -1], True), (-1, False)])
def test_llava_projector_parity(layer, bias):
    theirs = llava_projector(layer, bias)
    in_dim = theirs.linear_1.in_features
    assert in_dim == 16 * (1 if isinstance(layer, int) else len(layer))
    # the state_dict names are LLaVA's, so the plain mapping is the identity
    ours = load_llava_projector(build_projector("mlp", in_dim, 24, bias=bias), theirs).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    features = torch.randn(3, 9, in_dim) * 3  # (images, patches, vision hidden)
    mask = torch.ones(3, 9, dtype=torch.bool)
    with torch.no_grad():
        expect = theirs(features)
        got, _ = ours(features, mask)
        assert (got - expect).abs().max().item() == 0.0
        via = projector_from_llava(theirs).eval()(features, mask)[0]
    assert torch.equal(via, expect)


def test_llava_projector_other_activation_refused():
    theirs = llava_projector(-2)
    from transformers.activations import ACT2FN

    theirs.act = ACT2FN["gelu_pytorch_tanh"]
    with pytest.raises(InvalidOptionsError, match="not exact GELU"):
        load_llava_projector(build_projector("mlp", 16, 24), theirs)


def qwen2_audio_parts():
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2Config
    from transformers.models.qwen2_audio.modeling_qwen2_audio import (
        Qwen2AudioEncoder,
        Qwen2AudioMultiModalProjector,
    )

    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2,
                                             encoder_ffn_dim=32, num_mel_bins=8, max_source_positions=8),
        text_config=Qwen2Config(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1, vocab_size=64),
    )
    torch.manual_seed(12)
    tower = Qwen2AudioEncoder(config.audio_config).eval()
    with torch.no_grad():  # LayerNorm inits to ones/zeros; make the parity test bite
        tower.layer_norm.weight.normal_()
        tower.layer_norm.bias.normal_()
    return tower, Qwen2AudioMultiModalProjector(config).eval()


def test_qwen2_audio_linear_parity():
    _, theirs = qwen2_audio_parts()
    ours = build_projector("linear", 16, 24)
    ours.load_torch_state(theirs.state_dict())
    assert set(ours.state_dict()) == {"linear.weight", "linear.bias"}
    features = torch.randn(2, 10, 16) * 2
    with torch.no_grad():
        got = ours(features, torch.ones(2, 10, dtype=torch.bool))[0]
        assert (got - theirs(features)).abs().max().item() == 0.0
        assert torch.equal(projector_from_qwen2_audio(theirs)(features, torch.ones(2, 10, dtype=torch.bool))[0],
                           theirs(features))


def test_qwen2_audio_pool_norm_linear_parity():
    """pool(stride 2) + norm + linear == Qwen2-Audio's avg_pooler → layer_norm → multi_modal_projector."""
    tower, theirs = qwen2_audio_parts()
    ours = projector_from_qwen2_audio(theirs, layer_norm=tower.layer_norm, stride=2).eval()
    assert ours.kind == "pool" and ours.config.norm and ours.num_tokens(8) == 4
    hidden = torch.randn(2, 8, 16)  # (batch, frames, d_model) before the tower's avg_pooler
    with torch.no_grad():
        pooled = tower.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1)
        expect = theirs(tower.layer_norm(pooled))
        got, got_mask = ours(hidden, torch.ones(2, 8, dtype=torch.bool))
    assert got_mask.all() and got.shape == expect.shape
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)
