"""The streaming video encoder: streaming equals one-shot, online softmax equals plain softmax,
per-video latents from the first step, gradients to the encoder only, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from hypernet.models.base import WindowVSR
from hypernet.models.encoder import (
    DegradationEncoder,
    LatentPooler,
    VideoEncoder,
    build_encoder,
    frame_times,
)
from hypernet.models.tokenizers import BaseActivationTokenizer, LRStats, RunningNorm, mean_and_std

SOURCES = ["conv", "base", "base_grid"]  # base_grid: the base's activations with 2x2 spatial tokens


def small_base() -> nn.Module:
    torch.manual_seed(123)
    return WindowVSR(channels=8, num_blocks=1)


def body_convs(base: nn.Module) -> list[str]:
    return [n for n, m in base.named_modules() if n.startswith("body") and isinstance(m, nn.Conv2d)]


def make_encoder(source: str, base: nn.Module | None = None, **kwargs) -> VideoEncoder:
    torch.manual_seed(0)
    if source == "base_grid":
        source = "base"
        kwargs.setdefault("grid", 2)
    if source == "base":
        base = base if base is not None else small_base()
        kwargs.update(base=base, layer_names=body_convs(base))
    options = dict(dim=16, num_latents=4, num_heads=2, num_blocks=1, conv_channels=8)
    options.update(kwargs)
    return VideoEncoder(source=source, **options)


def make_video(seed: int, *, frames: int = 6, size: int = 16, blur: bool = False, noise: float = 0.0):
    """(1, frames, 3, size, size): smooth random content, optionally blurred and noisy, like an LR video."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(frames, 3, size // 4, size // 4, generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    if blur:
        x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = x + noise * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)[None]


def calibrated(encoder: VideoEncoder) -> VideoEncoder:
    """Run one training-mode forward on other videos, so the running norms hold real statistics,
    then switch to eval mode."""
    encoder.train()
    with torch.no_grad():
        encoder(torch.cat([make_video(90, blur=True), make_video(91, noise=0.05)]))
    return encoder.eval()


# ----------------------------------------------------------------------------------------------
# streaming


@pytest.mark.parametrize("source", SOURCES)
def test_streaming_in_chunks_equals_one_shot(source):
    encoder = calibrated(make_encoder(source))
    n = 11
    video = torch.cat([make_video(1, frames=n), make_video(2, frames=n, blur=True, noise=0.03)])
    times = frame_times(n).expand(2, -1)
    with torch.no_grad():
        whole = encoder(video)
        assert whole.shape == (2, 4, 16)
        for sizes in ([1] * n, [3, 3, 3, 2], [7, 4], [2, 5, 1, 3]):  # last: sizes mixed in one stream
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            chunks = [(video[:, s : s + c], times[:, s : s + c]) for s, c in zip(starts, sizes, strict=True)]
            streamed = encoder.encode_stream(iter(chunks))
            torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
        # the same through init_state / update / finalize, with frame_times per chunk
        state = encoder.init_state(2)
        for start in range(0, n, 4):
            count = min(4, n - start)
            state = encoder.update(
                state, video[:, start : start + count], frame_times(n, start=start, count=count).expand(2, -1)
            )
        torch.testing.assert_close(encoder.finalize(state), whole, atol=1e-5, rtol=0)


def test_streaming_is_exact_up_to_rounding_in_double_precision():
    """In float64 the chunked and one-shot results agree to ~1e-12: any larger gap would be a
    real dependence on the chunking, not rounding."""
    encoder = calibrated(make_encoder("base")).double()
    video = torch.cat([make_video(1, frames=9), make_video(2, frames=9, noise=0.05)]).double()
    times = frame_times(9).double().expand(2, -1)
    with torch.no_grad():
        whole = encoder(video)
        streamed = encoder.encode_stream((video[:, s : s + 2], times[:, s : s + 2]) for s in range(0, 9, 2))
    assert whole.dtype == torch.float64
    torch.testing.assert_close(streamed, whole, atol=1e-12, rtol=0)


def test_frame_times_are_positions_in_the_video():
    torch.testing.assert_close(frame_times(5), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(frame_times(5, start=3, count=2), torch.tensor([0.75, 1.0]))
    torch.testing.assert_close(frame_times(1), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="outside a video of 5 frames"):
        frame_times(5, start=4, count=2)


def test_times_change_the_latents_and_default_to_even_spacing():
    encoder = make_encoder("conv").eval()
    video = make_video(3, frames=5)
    with torch.no_grad():
        default = encoder(video)
        explicit = encoder(video, frame_times(5)[None])
        reversed_times = encoder(video, frame_times(5).flip(0)[None])
    torch.testing.assert_close(default, explicit)
    assert (reversed_times - default).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------
# online softmax


def reference_pool(pooler: LatentPooler, tokens: torch.Tensor) -> torch.Tensor:
    """Plain multi-head cross-attention with one full softmax over all tokens (V, L, dim)."""
    attention = pooler.attention
    heads = attention.num_heads
    dim = tokens.shape[-1]
    head_dim = dim // heads
    queries = F.layer_norm(pooler.queries, (dim,), pooler.norm_queries.weight, pooler.norm_queries.bias)
    q = queries @ attention.to_q.weight.T + attention.to_q.bias  # (M, dim)
    normed = F.layer_norm(tokens, (dim,), pooler.norm_tokens.weight, pooler.norm_tokens.bias)
    kv = normed @ attention.to_kv.weight.T + attention.to_kv.bias  # (V, L, 2 dim)
    k, v = kv[..., :dim], kv[..., dim:]
    outs = []
    for h in range(heads):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[:, sl] @ k[..., sl].transpose(1, 2) / math.sqrt(head_dim)  # (V, M, L)
        outs.append(torch.softmax(scores, dim=-1) @ v[..., sl])  # (V, M, head_dim)
    pooled = torch.cat(outs, dim=-1)
    latents = pooler.queries + pooled @ attention.to_out.weight.T + attention.to_out.bias
    ff = pooler.feed_forward
    return latents + ff.net(F.layer_norm(latents, (dim,), ff.norm.weight, ff.norm.bias))


@pytest.mark.parametrize(
    "score_scale", [1.0, 300.0]
)  # 300: scores in the thousands, exp() overflows unshifted
def test_online_softmax_pooling_equals_full_softmax(score_scale):
    torch.manual_seed(5)
    pooler = LatentPooler(dim=16, num_latents=3, num_heads=4).double()
    with torch.no_grad():
        pooler.attention.to_q.weight.mul_(score_scale)
    tokens = torch.randn(2, 29, 16, dtype=torch.float64)
    state = pooler.init_state(2)
    for start in range(0, 29, 6):
        state = pooler.update(state, tokens[:, start : start + 6])
    pooled = pooler.finalize(state)
    expected = reference_pool(pooler, tokens)
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled, expected, atol=1e-9, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# per-video latents from the first step


def relative_spread(latents: torch.Tensor) -> float:
    """Smallest distance between two videos' latents over the mean size of the latents."""
    flat = latents.flatten(1)
    distances = torch.cdist(flat, flat)
    off_diagonal = distances[~torch.eye(len(flat), dtype=torch.bool)]
    return float(off_diagonal.min() / flat.norm(dim=-1).mean())


@pytest.mark.parametrize("source", SOURCES)
def test_different_videos_give_different_latents_at_initialisation(source):
    """The collapse docs/design.md warns about: at the first training step, latents must already
    differ between videos by a clear margin relative to their size (measured: about 0.05 for
    conv, 0.3 for base; a learned conv encoder without normalised features gave 5e-4)."""
    encoder = make_encoder(source).train()  # the first training step, running norms fresh
    videos = torch.cat(
        [
            make_video(1),
            make_video(2, blur=True),
            make_video(3, noise=0.05),
            make_video(4, blur=True, noise=0.02),
        ]
    )
    with torch.no_grad():
        latents = encoder(videos)
    assert latents.shape == (4, 4, 16)
    assert torch.isfinite(latents).all()
    spread = relative_spread(latents)
    print(f"{source}: relative spread of latents between videos at initialisation {spread:.4f}")
    assert spread > 1e-2


# ----------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("source", SOURCES)
def test_gradients_reach_every_encoder_parameter_and_never_the_base(source):
    base = small_base()
    encoder = make_encoder(source, base=base).train()
    video = torch.cat([make_video(1), make_video(2, blur=True)])
    base_before = {k: v.clone() for k, v in base.state_dict().items()}

    encoder(video).sum().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None, f"no gradient reached {name}"
        assert param.grad.abs().sum() > 0, f"the gradient of {name} is all zero"

    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    optimiser.step()
    if source == "base":
        assert all(not p.requires_grad for p in base.parameters())
        assert all(p.grad is None for p in base.parameters())
        base_ids = {id(p) for p in base.parameters()}
        assert not base_ids & {id(p) for p in encoder.parameters()}
        base_storage = {v.untyped_storage().data_ptr() for v in base.state_dict().values()}
        encoder_storage = {v.untyped_storage().data_ptr() for v in encoder.state_dict().values()}
        assert not base_storage & encoder_storage, "the base's tensors are in encoder.state_dict()"
        assert not any(k.startswith("tokenizer._base") for k in encoder.state_dict())
    for key, value in base.state_dict().items():
        assert torch.equal(value, base_before[key]), f"base tensor {key} changed"


@pytest.mark.parametrize(("shape", "dim"), [((6, 32, 24, 24), (-2, -1)), ((6, 3, 576), -1), ((4, 5, 7), 1)])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_mean_and_std_equal_torchs_to_float_rounding(shape, dim, offset):
    """The encoder's statistics (pooled activations, LR statistics) are computed in two passes
    instead of by torch.std, which cost half the stage-2 encoder's time: the same numbers to
    float rounding (1e-6 relative, against float64), also where the mean is 1000 times the
    spread, which a one-pass E[x^2] - E[x]^2 would get wrong in float32."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) + offset
    mean, std = mean_and_std(x, dim)
    std_ref, mean_ref = torch.std_mean(x.double(), dim=dim, correction=0)
    torch.testing.assert_close(mean, mean_ref.float(), rtol=1e-6, atol=1e-6 * max(offset, 1.0))
    torch.testing.assert_close(std, std_ref.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(std, x.std(dim=dim, unbiased=False), rtol=2e-6, atol=0)


def test_lr_statistics_are_those_of_a_laplacian_filter_and_a_box_blur():
    """The LR statistics token's sharpness and noise features, taken from sums of shifted views
    of the frame, equal those of torch's own depthwise Laplacian convolution and 3x3 avg_pool2d
    to float rounding (1e-5 on their logarithms), on sharp, blurred and noisy frames."""
    frames = torch.cat([make_video(1), make_video(2, blur=True), make_video(3, noise=0.05)])
    features = LRStats(dim=8).features(frames)  # (V, n, 4C): mean, std, log |Laplacian|, log high-pass
    x = rearrange(frames, "v n c h w -> (v n) c h w")
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)
    log_lap = torch.log(F.conv2d(x, laplacian, groups=3).abs().mean(dim=(-2, -1)) + 1e-4)
    high = x[..., 1:-1, 1:-1] - F.avg_pool2d(x, 3, stride=1)
    log_high = torch.log(high.std(dim=(-2, -1), unbiased=False) + 1e-4)
    expected = torch.cat(
        [x.mean(dim=(-2, -1)), x.std(dim=(-2, -1), unbiased=False), log_lap, log_high], dim=-1
    )
    torch.testing.assert_close(features, rearrange(expected, "(v n) f -> v n f", v=3), rtol=0, atol=1e-5)


def test_base_activations_are_pooled_before_in_place_activations():
    """conv1 of a residual block is followed by an inplace LeakyReLU: its pooled statistics must
    be those of the conv's own output, computed here independently."""
    base = small_base()
    tokenizer = BaseActivationTokenizer(base=base, layer_names=["conv_first", "body.0.conv1"], dim=8)
    frames = torch.cat([make_video(1, frames=3), make_video(2, frames=3, noise=0.1)])
    pooled = tokenizer.pooled_activations(frames)
    x = rearrange(frames, "v n c h w -> (v n) c h w")
    with torch.no_grad():
        first = base.conv_first(torch.cat([x, x, x], dim=1))  # a lone frame's window: itself 3 times
        conv1 = base.body[0].conv1(F.leaky_relu(first, 0.1))
    for out, got in zip([first, conv1], pooled, strict=True):
        flat = out.flatten(2)
        expected = torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], dim=-1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (pooled[1][:, 8:] > 0).all()
    assert all(not hook for m in base.modules() for hook in m._forward_hooks.values()), "hooks left behind"


def test_base_runs_only_up_to_the_last_listed_layer_and_hooks_are_always_removed():
    base = small_base()
    calls = []
    base.upsampler.register_forward_hook(lambda *args: calls.append("upsampler"))
    tokenizer = BaseActivationTokenizer(base=base, layer_names=["body.0.conv2", "body.0.conv1"], dim=8)
    pooled = tokenizer.pooled_activations(make_video(1, frames=2))
    assert [p.shape for p in pooled] == [(2, 16), (2, 16)]
    assert calls == [], "the base's upsampler ran, though no listed layer is in it"
    with pytest.raises(RuntimeError):  # the base itself fails on 2-channel frames
        tokenizer.pooled_activations(torch.rand(1, 2, 2, 16, 16))
    assert [len(m._forward_hooks) for m in base.modules() if m is not base.upsampler] == [0] * (
        len(list(base.modules())) - 1
    ), "hooks left behind after an exception"


# ----------------------------------------------------------------------------------------------
# running normaliser


def test_running_norm_updates_in_train_mode_only():
    norm = RunningNorm(num_features=3, momentum=0.1)
    x = torch.randn(50, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([3.0, -1.0, 0.0])
    norm.eval()
    torch.testing.assert_close(norm(x), x / math.sqrt(1 + norm.eps))  # initial mean 0, var 1
    assert torch.equal(norm.mean, torch.zeros(3)) and torch.equal(norm.var, torch.ones(3))

    norm.train()
    out = norm(x)  # first update: the batch's own statistics
    torch.testing.assert_close(norm.mean, x.mean(0))
    torch.testing.assert_close(norm.var, x.var(0, unbiased=False))
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)

    mean, var = norm.mean.clone(), norm.var.clone()
    norm.eval()
    y = torch.randn(20, 3) + 10
    torch.testing.assert_close(norm(y), (y - mean) / torch.sqrt(var + norm.eps))
    assert torch.equal(norm.mean, mean) and torch.equal(norm.var, var)

    norm.train()
    norm(y)
    rate = 0.5  # second update: cumulative average, max(momentum, 1/2)
    torch.testing.assert_close(norm.mean, mean + rate * (y.mean(0) - mean))


@pytest.mark.parametrize("source", SOURCES)
def test_encoder_buffers_change_in_train_mode_only(source):
    encoder = make_encoder(source).eval()
    buffers = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.no_grad():
        encoder(make_video(1))
    assert all(torch.equal(v, buffers[k]) for k, v in encoder.state_dict().items())
    encoder.train()
    with torch.no_grad():
        encoder(make_video(1))
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, buffers[k])]
    assert any(k.endswith(".mean") for k in changed) and any(k.endswith(".var") for k in changed)


# ----------------------------------------------------------------------------------------------
# bad input


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match=r"hypernet\.encoder\.source='vit'.*'conv', 'base', 'stats'"):
        VideoEncoder(source="vit")


def build(source: str, **options):
    """The encoder configs/hypernet/default.yaml's encoder part makes, small, over small_base()."""
    base = small_base()
    config = dict(feature_layers=None, context_tile=None, dim=16, num_latents=4, num_heads=2, num_blocks=1)
    config |= dict(conv_channels=8, lr_stats=True) | options
    return build_encoder(source=source, **config, base=base, target_names=body_convs(base))


def test_build_encoder_is_the_one_place_a_source_becomes_an_encoder():
    """Every source of hypernet.encoder.source, the degradation ceiling included, and nowhere
    else: an unknown one is an error listing all four."""
    assert [type(build(s)).__name__ for s in ("conv", "base", "stats")] == ["VideoEncoder"] * 3
    assert build("base").tokenizer.layer_names == body_convs(small_base())
    assert build("base", feature_layers=["body.0.conv1"]).tokenizer.layer_names == ["body.0.conv1"]
    ceiling = build("degradation")
    assert isinstance(ceiling, DegradationEncoder) and ceiling.dim == 16
    with pytest.raises(ValueError, match=r"source='vit'.*'conv', 'base', 'stats', 'degradation'"):
        build("vit")
    with pytest.raises(ValueError, match=r"hypernet.encoder.dim=18 must be a multiple of .*num_heads=4"):
        build("degradation", dim=18, num_heads=4)
    params = torch.tensor([[4.0, 0.5, 0.0, -1.0]])
    assert ceiling.encode_context(make_video(1), None, params).shape == (1, 4, 16)
    with pytest.raises(ValueError, match="true degradation parameters"):
        ceiling.encode_context(make_video(1), None)
    with pytest.raises(ValueError, match="degradation-ceiling control"):
        ceiling.encode_stream([(make_video(1), frame_times(6)[None])])


def test_source_base_without_base_is_a_clear_error():
    with pytest.raises(ValueError, match="source='base'.*pass base="):
        VideoEncoder(source="base", layer_names=["body.0.conv1"])
    with pytest.raises(ValueError, match=r"layer_names \(hypernet.encoder.feature_layers\) is empty"):
        VideoEncoder(source="base", base=small_base())


def test_unknown_layer_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"'body\.9\.conv1' is not a layer.*'body\.0\.conv1'"):
        VideoEncoder(source="base", base=small_base(), layer_names=["body.0.conv1", "body.9.conv1"])
    with pytest.raises(ValueError, match="'body' is a Sequential; choose a Conv2d or Linear"):
        VideoEncoder(source="base", base=small_base(), layer_names=["body"])


def test_bad_frames_and_times_are_clear_errors():
    encoder = make_encoder("conv")
    with pytest.raises(ValueError, match=r"must be \(V, n, C, h, w\).*\(6, 3, 16, 16\)"):
        encoder(torch.rand(6, 3, 16, 16))
    with pytest.raises(ValueError, match=r"times must be \(V, n\) = \(1, 6\)"):
        encoder(make_video(1), torch.rand(6))
    with pytest.raises(ValueError, match="floating point in \\[0, 1\\]; got torch.uint8"):
        encoder(torch.zeros(1, 2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1 channels; this encoder reads 3"):
        encoder(torch.rand(1, 2, 1, 16, 16))
    state = encoder.init_state(2)
    with pytest.raises(ValueError, match="holds 1 videos; the stream was started for 2"):
        encoder.update(state, make_video(1), frame_times(6)[None])
    with pytest.raises(ValueError, match="no chunks"):
        encoder.encode_stream([])
    with pytest.raises(ValueError, match="no frames"):
        encoder.finalize(encoder.init_state(1))


def test_large_context_frames_are_read_as_training_sized_tiles():
    """With context_tile, a 2x2 mosaic of four 8x8 frames encodes like those four frames, and
    frames no larger than the tile are untouched."""
    from hypernet.models.encoder import VideoEncoder, tile_frames

    torch.manual_seed(0)
    encoder = VideoEncoder(
        source="conv", dim=16, num_latents=2, num_heads=2, num_blocks=1, conv_channels=8, context_tile=8
    ).eval()
    small = torch.rand(1, 4, 3, 8, 8)
    times = torch.full((1, 4), 0.5)
    mosaic = torch.cat(
        [torch.cat([small[:, 0], small[:, 1]], dim=-1), torch.cat([small[:, 2], small[:, 3]], dim=-1)], dim=-2
    )
    with torch.no_grad():
        from_tiles = encoder(mosaic[:, None], times[:, :1])
        from_frames = encoder(small, times)
    torch.testing.assert_close(from_tiles, from_frames, atol=1e-5, rtol=0)
    same, same_times = tile_frames(small, times, 8)
    assert same is small and same_times is times
    tiles, tile_times = tile_frames(torch.rand(2, 3, 3, 20, 17), torch.rand(2, 3), 8)
    assert tiles.shape == (2, 3 * 2 * 2, 3, 8, 8) and tile_times.shape == (2, 12)


def test_attention_draws_its_initial_weights_as_a_seed_gave_them():
    """A seed gives the network it gave: the latent blocks draw q, k and v as one Linear
    ("qkv"), the generator's layer queries as torch's MultiheadAttention does ("xavier"); and
    the attention computes what MultiheadAttention computes."""
    from hypernet.models.blocks import Attention

    torch.manual_seed(3)
    fused, proj = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)
    torch.manual_seed(3)
    attention = Attention(dim=8, num_heads=2, init="qkv")
    assert torch.equal(torch.cat([attention.to_q.weight, attention.to_kv.weight]), fused.weight)
    assert torch.equal(torch.cat([attention.to_q.bias, attention.to_kv.bias]), fused.bias)
    assert torch.equal(attention.to_out.weight, proj.weight)
    torch.manual_seed(4)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    torch.manual_seed(4)
    attention = Attention(dim=8, num_heads=2, init="xavier")
    assert torch.equal(torch.cat([attention.to_q.weight, attention.to_kv.weight]), mha.in_proj_weight)
    assert torch.equal(torch.cat([attention.to_q.bias, attention.to_kv.bias]), mha.in_proj_bias)
    assert torch.equal(attention.to_out.weight, mha.out_proj.weight)
    assert torch.equal(attention.to_out.bias, mha.out_proj.bias)
    queries, context = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    ours, theirs = attention(queries, context), mha(queries, context, context, need_weights=False)[0]
    torch.testing.assert_close(ours, theirs)


def test_spatial_tokens_keep_where_and_what():
    """grid > 0 adds one token per cell of each layer's grid-averaged activations: two videos with
    the same content rearranged (its quarters swapped) have the same pooled tokens but different
    cell tokens; grid=0 draws the weights it drew before the option existed."""
    base = small_base()
    layers = body_convs(base)
    torch.manual_seed(0)
    plain = BaseActivationTokenizer(base=base, layer_names=layers, dim=16)
    torch.manual_seed(0)
    spatial = BaseActivationTokenizer(base=base, layer_names=layers, dim=16, grid=2)
    for name, value in plain.state_dict().items():
        assert torch.equal(value, spatial.state_dict()[name])
    video = make_video(3, frames=2, size=16)
    swapped = torch.cat([video[..., 8:, :], video[..., :8, :]], dim=-2)  # the top and bottom halves swapped
    with torch.no_grad():
        tokens, tokens_swapped = spatial(video), spatial(swapped)
    assert tokens.shape == (1, 2, len(layers) * (1 + 4), 16)
    assert torch.allclose(plain(video), tokens[:, :, : len(layers)])  # the pooled tokens as before
    cells = slice(len(layers), None)
    assert (tokens[:, :, cells] - tokens_swapped[:, :, cells]).abs().max() > 1e-2
    with pytest.raises(ValueError, match=r"hypernet.encoder.grid=-1"):
        BaseActivationTokenizer(base=base, layer_names=layers, dim=16, grid=-1)
