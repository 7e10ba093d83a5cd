"""Tests of hypernet.data.degrade: MATLAB bicubic, BD, blur and the per-video random degradation.

References are computed independently in this file:
- MATLAB imresize: a plain per-output-pixel loop (`_ref_imresize`), float64. Tolerance: max abs
  error < 1e-10 for float64 input and < 1e-5 for float32 input, random 3x17x23 image, scales
  1/2, 1/3, 1/4, 2, 3, 4.
- PIL's float BICUBIC (same a = -0.5 kernel, same antialiasing, same pixel-centre convention)
  agrees in the interior only: PIL renormalises over in-range pixels at the border where MATLAB
  mirrors, so the outer rows/cols differ by up to ~0.05. Interior tolerance 1e-5.
- Gaussian blur: scipy.ndimage.gaussian_filter (mode "mirror" = torch "reflect", truncate 4).
- BD: BasicSR's duf_downsample procedure re-done here (pad 6 + 2s, strided conv, crop 2), with
  the kernel made the way DUF makes it (scipy-smoothed 13x13 delta).
"""

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image

from hypernet.data.degrade import (
    PARAM_NAMES,
    Degradation,
    DegradationRanges,
    bd_downsample,
    bicubic_downsample,
    blur,
    degrade,
    gaussian_kernel2d,
    imresize,
    sample_degradation,
)

SCALES = (1 / 2, 1 / 3, 1 / 4, 2, 3, 4)


# --------------------------------------------------------------------------- loop references


def _ref_cubic(t: float) -> float:
    a = abs(t)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def _ref_mirror(i: int, n: int) -> int:
    """MATLAB's symmetric extension of a 1-based index: 0 -> 1, -1 -> 2, n+1 -> n, ..."""
    while i < 1 or i > n:
        i = 1 - i if i < 1 else 2 * n + 1 - i
    return i


def _ref_resize_line(line: np.ndarray, out_len: int, scale: float) -> np.ndarray:
    n = len(line)
    antialias = scale < 1
    width = 4 / scale if antialias else 4.0
    out = np.zeros(out_len)
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        total_w, total = 0.0, 0.0
        for k in range(math.ceil(width) + 2):
            i = left + k
            w = scale * _ref_cubic(scale * (u - i)) if antialias else _ref_cubic(u - i)
            total_w += w
            total += w * line[_ref_mirror(i, n) - 1]
        out[x - 1] = total / total_w
    return out


def _ref_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """(C, H, W) float64 -> (C, ceil(sH), ceil(sW)), rows first then columns, like MATLAB."""
    c, h, w = img.shape
    oh, ow = math.ceil(scale * h - 1e-9), math.ceil(scale * w - 1e-9)
    tmp = np.zeros((c, oh, w))
    for ch in range(c):
        for j in range(w):
            tmp[ch, :, j] = _ref_resize_line(img[ch, :, j], oh, scale)
    out = np.zeros((c, oh, ow))
    for ch in range(c):
        for i in range(oh):
            out[ch, i, :] = _ref_resize_line(tmp[ch, i, :], ow, scale)
    return out


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# --------------------------------------------------------------------------- imresize


@pytest.mark.parametrize("scale", SCALES)
def test_imresize_matches_matlab_loop_reference(image, scale):
    expected = _ref_imresize(image.numpy(), scale)
    got64 = imresize(image, scale=scale)
    got32 = imresize(image.float(), scale=scale)
    assert got64.shape == expected.shape == (3, math.ceil(17 * scale - 1e-9), math.ceil(23 * scale - 1e-9))
    assert got64.dtype == torch.float64 and got32.dtype == torch.float32
    assert np.abs(got64.numpy() - expected).max() < 1e-10
    assert np.abs(got32.numpy() - expected).max() < 1e-5


@pytest.mark.parametrize("scale", SCALES)
def test_imresize_keeps_a_constant_image_constant(scale):
    # exact up to float rounding: 1e-12 in float64, one float32 ulp-level error in float32
    const = torch.full((3, 17, 23), 0.3, dtype=torch.float64)
    assert (imresize(const, scale=scale) - 0.3).abs().max() < 1e-12
    assert (imresize(const.float(), scale=scale) - 0.3).abs().max() < 1e-6


def test_imresize_upscaled_ramp_stays_linear_inside():
    # Keys' cubic (a = -0.5) reproduces linear functions: output pixel x (1-based) sits at input
    # coordinate u = x / 2 + 0.25, so it must equal the ramp evaluated there.
    w = 20
    ramp = torch.arange(1, w + 1, dtype=torch.float64).expand(1, 6, w) * 0.01 + 0.1
    up = imresize(ramp, scale=2)
    x = torch.arange(1, 2 * w + 1, dtype=torch.float64)
    expected = (x / 2 + 0.25) * 0.01 + 0.1
    inner = slice(4, 2 * w - 4)  # 2 input pixels from the edge mirror the ramp
    assert torch.allclose(up[0, 3, inner], expected[inner], atol=1e-12)
    assert not torch.allclose(up[0, 3, :2], expected[:2], atol=1e-4)  # edges are mirrored, not linear


def test_imresize_downscale_x4_of_block_image_gives_block_values_inside():
    # Blocks whose values are linear in the block index: the x4 antialiased kernel is centred on
    # each block's centre and symmetric, so it returns the block value exactly. (For arbitrary
    # block values the 16-tap kernel mixes in the neighbours' values: only a linear trend cancels.)
    rng = np.random.default_rng(1)
    a, b, c = rng.uniform(-0.05, 0.05, size=3)
    by, bx = np.meshgrid(np.arange(6), np.arange(7), indexing="ij")
    blocks = c + 0.5 + a * by + b * bx  # (6, 7) block values
    img = torch.from_numpy(np.kron(blocks, np.ones((4, 4))))[None]  # (1, 24, 28)
    down = imresize(img, scale=1 / 4)
    assert down.shape == (1, 6, 7)
    assert np.abs(down[0, 2:-2, 2:-2].numpy() - blocks[2:-2, 2:-2]).max() < 1e-12


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 4])
def test_imresize_interior_agrees_with_pil_bicubic(scale):
    x = torch.rand(2, 36, 48, generator=torch.Generator().manual_seed(3))
    got = imresize(x, scale=scale)
    out_h, out_w = got.shape[-2:]
    pil = np.stack(
        [np.asarray(Image.fromarray(ch.numpy(), mode="F").resize((out_w, out_h), Image.BICUBIC)) for ch in x]
    )
    r = 3 if scale < 1 else int(2 * scale + 2)  # the border band where PIL and MATLAB differ
    assert np.abs(got.numpy()[:, r:-r, r:-r] - pil[:, r:-r, r:-r]).max() < 1e-5


def test_imresize_size_argument_and_batches(image):
    batch = torch.stack([image, image.flip(-1)]).unsqueeze(0)  # (1, 2, 3, 17, 23)
    out = imresize(batch, size=(34, 46))
    assert out.shape == (1, 2, 3, 34, 46)
    assert torch.allclose(out[0, 1], imresize(image.flip(-1), scale=2), atol=1e-12)
    # MATLAB: with an output size, each axis uses scale out / in
    expected = _ref_imresize(image.numpy(), 2)
    assert np.abs(out[0, 0].numpy() - expected).max() < 1e-10


def test_imresize_is_differentiable():
    x = torch.rand(1, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, scale=1 / 2), (x,))
    assert torch.autograd.gradcheck(lambda t: imresize(t, scale=3), (x,))


def test_imresize_does_not_clamp():
    step = torch.zeros(1, 8, 8)
    step[..., 4:] = 1.0
    up = imresize(step, scale=4)
    assert up.min() < 0 and up.max() > 1  # bicubic overshoot is left to callers


def test_imresize_bad_arguments_are_clear_errors(image):
    with pytest.raises(ValueError, match="exactly one of scale= or size="):
        imresize(image)
    with pytest.raises(ValueError, match="exactly one of scale= or size="):
        imresize(image, scale=2, size=(4, 4))
    with pytest.raises(ValueError, match="scale must be a positive number"):
        imresize(image, scale=0)
    with pytest.raises(ValueError, match="size must be two positive ints"):
        imresize(image, size=(0, 4))
    with pytest.raises(ValueError, match="float tensor"):
        imresize((image * 255).to(torch.uint8), scale=2)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bicubic_downsample_is_imresize_by_inverse_factor(image, factor):
    expected = _ref_imresize(image.numpy(), 1 / factor)
    assert np.abs(bicubic_downsample(image, factor).numpy() - expected).max() < 1e-10


@pytest.mark.parametrize("factor", [1, 5, 2.5])
def test_bicubic_downsample_rejects_other_factors(image, factor):
    with pytest.raises(ValueError, match=r"scale must be one of \(2, 3, 4\)"):
        bicubic_downsample(image, factor)


# --------------------------------------------------------------------------- blur and BD


@pytest.mark.parametrize("sigma", [0.4, 1.6, 2.4])
def test_blur_matches_scipy_gaussian_filter(sigma):
    x = torch.rand(2, 3, 24, 22, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = blur(x, sigma)
    expected = np.stack(
        [
            [scipy.ndimage.gaussian_filter(ch, sigma, mode="mirror", truncate=4.0) for ch in img]
            for img in x.numpy()
        ]
    )
    assert got.shape == x.shape
    assert np.abs(got.numpy() - expected).max() < 1e-12


def test_blur_sigma_zero_is_identity_and_small_images_are_a_clear_error():
    x = torch.rand(3, 8, 8)
    assert torch.equal(blur(x, 0.0), x)
    with pytest.raises(ValueError, match=r"8x8 image is too small for sigma 2.4"):
        blur(x, 2.4)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        blur(x, -1.0)


def test_gaussian_kernel2d_is_normalised_symmetric_and_13_taps_for_sigma_1_6():
    k = gaussian_kernel2d(1.6)
    assert k.shape == (13, 13)
    assert abs(k.sum().item() - 1) < 1e-6
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    assert gaussian_kernel2d(1.0, size=5).shape == (5, 5)
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel2d(1.0, size=4)


def _ref_duf_downsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """BasicSR's duf_downsample procedure on (N, C, H, W), float64."""
    delta = np.zeros((13, 13))
    delta[6, 6] = 1
    kernel = torch.from_numpy(scipy.ndimage.gaussian_filter(delta, 0.4 * scale))[None, None]
    n, c, h, w = x.shape
    y = x.reshape(-1, 1, h, w)
    pad = 13 // 2 + scale * 2
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel, stride=scale)[:, :, 2:-2, 2:-2]
    return y.reshape(n, c, y.shape[-2], y.shape[-1])


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bd_downsample_matches_basicsr_duf_downsample(factor):
    x = torch.rand(
        2, 3, 12 * factor, 10 * factor, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    got = bd_downsample(x, factor, sigma=0.4 * factor)  # DUF ties sigma to the scale; 1.6 at x4
    expected = _ref_duf_downsample(x, factor)
    assert got.shape == expected.shape == (2, 3, 12, 10)
    assert (got - expected).abs().max() < 1e-12


def test_bd_downsample_rejects_sizes_not_divisible_by_scale():
    with pytest.raises(ValueError, match=r"size 30x32 is not divisible by scale 4"):
        bd_downsample(torch.rand(3, 30, 32), 4)


# --------------------------------------------------------------------------- Degradation


def _smooth_video(t: int = 5, h: int = 32, w: int = 48) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    frames = [torch.stack([xx, yy, (xx + yy) / 2]) * (0.5 + 0.1 * i) + 0.1 for i in range(t)]
    return torch.stack(frames)  # (t, 3, h, w)


def test_degradation_to_dict_and_as_tensor_order():
    d = Degradation(scale=4, blur_sigma=1.5, noise_sigma=0.02, crf=None, seed=3)
    assert PARAM_NAMES == ("scale", "blur_sigma", "noise_sigma", "crf")
    assert d.to_dict() == {"scale": 4.0, "blur_sigma": 1.5, "noise_sigma": 0.02, "crf": -1.0}
    assert all(type(v) is float for v in d.to_dict().values())
    t = Degradation(scale=2, blur_sigma=0.5, noise_sigma=0.0, crf=23, seed=0).as_tensor()
    assert t.dtype == torch.float32
    assert t.tolist() == [2.0, 0.5, 0.0, 23.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": 5}, r"scale must be one of \(2, 3, 4\)"),
        ({"blur_sigma": -0.1}, "blur_sigma must be >= 0"),
        ({"noise_sigma": 5.0}, r"noise_sigma must be in \[0, 1\]"),
        ({"crf": 60}, "crf must be an int"),
        ({"seed": -1}, "seed must be a non-negative int"),
    ],
)
def test_degradation_rejects_bad_values(kwargs, message):
    base = {"scale": 4, "blur_sigma": 1.0, "noise_sigma": 0.01, "crf": None, "seed": 0}
    with pytest.raises(ValueError, match=message):
        Degradation(**(base | kwargs))


def test_degrade_without_blur_noise_codec_is_exactly_the_bi_protocol():
    hr = _smooth_video()
    d = Degradation(scale=4, blur_sigma=0.0, noise_sigma=0.0, crf=None, seed=0)
    lr = degrade(hr, d)
    expected = torch.from_numpy(_ref_imresize(hr.double().reshape(-1, 32, 48).numpy(), 1 / 4)).reshape(
        5, 3, 8, 12
    )
    expected = torch.round(expected.clamp(0, 1) * 255) / 255
    assert lr.shape == (5, 3, 8, 12)
    assert lr.dtype == torch.float32
    assert (lr.double() - expected).abs().max() < 1e-6


def test_degrade_blurs_then_downsamples_and_quantises_to_8_bit():
    hr = _smooth_video()
    d = Degradation(scale=2, blur_sigma=1.2, noise_sigma=0.0, crf=None, seed=0)
    lr = degrade(hr, d)
    expected = torch.round(bicubic_downsample(blur(hr, 1.2), 2).clamp(0, 1) * 255) / 255
    assert torch.equal(lr, expected)
    levels = lr * 255
    assert torch.equal(levels, levels.round()) and lr.min() >= 0 and lr.max() <= 1


def test_degrade_noise_has_the_requested_sigma():
    hr = torch.full((4, 3, 64, 64), 0.5)
    d = Degradation(scale=2, blur_sigma=0.0, noise_sigma=10 / 255, crf=None, seed=11)
    residual = degrade(hr, d) - 0.5
    # 8-bit rounding adds variance 1 / 12 levels^2: sqrt(10^2 + 1/12) = 10.004 levels
    assert abs(residual.std().item() * 255 - 10.0) < 0.4
    assert abs(residual.mean().item() * 255) < 0.3


def test_degrade_is_reproducible_and_the_seed_matters():
    hr = _smooth_video()
    d = Degradation(scale=2, blur_sigma=0.8, noise_sigma=0.03, crf=None, seed=42)
    assert torch.equal(degrade(hr, d), degrade(hr.clone(), d))
    other = Degradation(scale=2, blur_sigma=0.8, noise_sigma=0.03, crf=None, seed=43)
    assert not torch.equal(degrade(hr, d), degrade(hr, other))
    # frames get different noise from each other, not one pattern repeated
    still = hr[:1].expand(3, -1, -1, -1)
    lr = degrade(still, d)
    assert not torch.equal(lr[0], lr[1])


def test_degrade_frame_noise_depends_only_on_the_absolute_frame_index():
    hr = _smooth_video(t=6)
    d = Degradation(scale=2, blur_sigma=1.0, noise_sigma=0.05, crf=None, seed=5)
    whole = degrade(hr, d)
    assert torch.equal(degrade(hr[2:5], d, frame_indices=[2, 3, 4]), whole[2:5])
    assert torch.equal(degrade(hr[[5, 0]], d, frame_indices=[5, 0]), whole[[5, 0]])
    assert not torch.equal(degrade(hr[2:5], d), whole[2:5])  # default indices 0..2 = other noise


def test_degrade_single_frame_is_frame_zero():
    hr = _smooth_video(t=2)
    d = Degradation(scale=2, blur_sigma=0.5, noise_sigma=0.02, crf=None, seed=1)
    one = degrade(hr[0], d)
    assert one.shape == (3, 16, 24)
    assert torch.equal(one, degrade(hr, d)[0])
    assert torch.equal(degrade(hr[1], d, frame_indices=[1]), degrade(hr, d)[1])


def test_degrade_with_codec_is_the_h264_round_trip_of_the_8bit_lr():
    from hypernet.data.video_io import h264_roundtrip

    hr = _smooth_video(t=4)
    clean = Degradation(scale=2, blur_sigma=0.8, noise_sigma=0.02, crf=None, seed=7)
    coded = Degradation(scale=2, blur_sigma=0.8, noise_sigma=0.02, crf=30, seed=7)
    lr, lr_coded = degrade(hr, clean), degrade(hr, coded)
    frames = torch.round(lr * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    expected = torch.from_numpy(h264_roundtrip(frames, crf=30)).permute(0, 3, 1, 2).float() / 255
    assert lr_coded.shape == lr.shape
    assert torch.equal(lr_coded, expected)
    assert not torch.equal(lr_coded, lr)  # the codec did something
    assert torch.equal(degrade(hr, coded), lr_coded)  # and does it reproducibly


def test_degrade_errors_name_the_size_and_scale():
    d = Degradation(scale=4, blur_sigma=0.0, noise_sigma=0.0, crf=None, seed=0)
    with pytest.raises(ValueError, match=r"HR size 30x48 is not divisible by scale 4"):
        degrade(torch.rand(2, 3, 30, 48), d)
    with pytest.raises(ValueError, match="frame_indices"):
        degrade(torch.rand(2, 3, 32, 48), d, frame_indices=[0])
    with pytest.raises(ValueError, match="float tensor"):
        degrade(torch.zeros(2, 3, 32, 48, dtype=torch.uint8), d)


# --------------------------------------------------------------------------- sampling


def test_sample_degradation_stays_in_ranges_and_is_reproducible():
    ranges = DegradationRanges(
        blur_sigma=(0.4, 2.4), noise_sigma=(0.0, 12 / 255), crf=(18, 30), codec_prob=0.5
    )
    draws = [sample_degradation(np.random.default_rng(s), scale=4, ranges=ranges) for s in range(300)]
    blurs = np.array([d.blur_sigma for d in draws])
    noises = np.array([d.noise_sigma for d in draws])
    crfs = [d.crf for d in draws if d.crf is not None]
    assert blurs.min() >= 0.4 and blurs.max() <= 2.4 and blurs.min() < 0.6 and blurs.max() > 2.2
    assert noises.min() >= 0 and noises.max() <= 12 / 255
    assert 0.4 < len(crfs) / len(draws) < 0.6
    assert min(crfs) == 18 and max(crfs) == 30
    assert all(d.scale == 4 for d in draws)
    assert len({d.seed for d in draws}) == len(draws)
    again = sample_degradation(np.random.default_rng(17), scale=4, ranges=ranges)
    assert again == draws[17]


def test_sample_degradation_without_codec_and_codec_prob_does_not_shift_other_draws():
    no_codec = sample_degradation(np.random.default_rng(9), scale=2, ranges=DegradationRanges())
    assert no_codec.crf is None
    always = DegradationRanges(crf=(20, 20), codec_prob=1.0)
    coded = sample_degradation(np.random.default_rng(9), scale=2, ranges=always)
    assert coded.crf == 20
    assert (coded.blur_sigma, coded.noise_sigma, coded.seed) == (
        no_codec.blur_sigma,
        no_codec.noise_sigma,
        no_codec.seed,
    )


def test_degradation_ranges_accept_lists_and_reject_bad_ranges():
    r = DegradationRanges(blur_sigma=[0.5, 1.0], crf=[18, 28], codec_prob=0.3)
    assert r.blur_sigma == (0.5, 1.0) and r.crf == (18, 28)
    with pytest.raises(ValueError, match="blur_sigma must be a \\(low, high\\) pair"):
        DegradationRanges(blur_sigma=(2.0, 1.0))
    with pytest.raises(ValueError, match="codec_prob > 0 needs a crf range"):
        DegradationRanges(codec_prob=0.5)
    with pytest.raises(ValueError, match="codec_prob must be in"):
        DegradationRanges(crf=(18, 28), codec_prob=1.5)
    with pytest.raises(ValueError, match="noise_sigma must lie in"):
        DegradationRanges(noise_sigma=(0.0, 12.0))
