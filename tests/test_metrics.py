"""Tests of hypernet.metrics against scikit-image and hand-computed values.

- PSNR: skimage.metrics.peak_signal_noise_ratio on the 0-255 scale (data_range 255), Y computed
  here in numpy from the BT.601 formula. Tolerance 1e-9 dB.
- SSIM: skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255). skimage filters the whole image with reflect
  padding and then drops (win_size - 1) // 2 = 5 pixels per side before averaging, which is
  exactly the valid region BasicSR averages over, so the two agree to float64 rounding.
  Tolerance 1e-9.
"""

import math
import statistics

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hypernet.metrics import gain_summary, mean_std, mean_stderr, psnr, rgb_to_y, ssim, video_metrics


def _y_numpy(img: np.ndarray) -> np.ndarray:
    """(3, H, W) RGB in [0, 1] -> (H, W) Y on the 0-255 scale, MATLAB rgb2ycbcr (unrounded)."""
    r, g, b = img.astype(np.float64)
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(4, 3, 24, 30, generator=g)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    return sr, hr


def test_rgb_to_y_known_values():
    white, black = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    assert torch.allclose(rgb_to_y(white), torch.full((1, 2, 2), 235 / 255), atol=1e-6)
    assert torch.allclose(rgb_to_y(black), torch.full((1, 2, 2), 16 / 255), atol=1e-7)
    assert torch.allclose(rgb_to_y(red), torch.full((1, 2, 2), (16 + 65.481) / 255), atol=1e-6)
    assert rgb_to_y(torch.rand(2, 5, 3, 4, 6)).shape == (2, 5, 1, 4, 6)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        rgb_to_y(torch.rand(4, 4, 6))


def test_psnr_of_a_constant_offset_is_known_exactly():
    hr = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    sr = hr + 0.1  # MSE 0.01 -> 20 dB
    assert torch.allclose(
        psnr(sr, hr, y_channel=False), torch.full((2,), 20.0, dtype=torch.float64), atol=1e-10
    )
    # on Y the offset is scaled by (65.481 + 128.553 + 24.966) / 255 = 219 / 255
    expected_y = -20 * math.log10(0.1 * 219 / 255)
    assert torch.allclose(psnr(sr, hr), torch.full((2,), expected_y, dtype=torch.float64), atol=1e-10)
    assert psnr(sr, hr, y_channel=False, data_range=255.0)[0].item() == pytest.approx(
        20 + 20 * math.log10(255)
    )


def test_psnr_matches_skimage_per_frame(pair):
    sr, hr = pair
    got_rgb, got_y = psnr(sr, hr, y_channel=False), psnr(sr, hr)
    assert got_rgb.shape == got_y.shape == (4,) and got_y.dtype == torch.float64
    for t in range(4):
        a, b = sr[t].double().numpy(), hr[t].double().numpy()
        ref_rgb = peak_signal_noise_ratio(b * 255, a * 255, data_range=255)
        ref_y = peak_signal_noise_ratio(_y_numpy(b), _y_numpy(a), data_range=255)
        assert abs(got_rgb[t].item() - ref_rgb) < 1e-9
        assert abs(got_y[t].item() - ref_y) < 1e-9


def test_ssim_matches_skimage_per_frame(pair):
    sr, hr = pair
    got_rgb, got_y = ssim(sr, hr, y_channel=False), ssim(sr, hr)
    assert got_rgb.shape == got_y.shape == (4,)
    opts = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 255}
    for t in range(4):
        a, b = sr[t].double().numpy(), hr[t].double().numpy()
        ref_y = structural_similarity(_y_numpy(b), _y_numpy(a), **opts)
        ref_rgb = structural_similarity(b * 255, a * 255, channel_axis=0, **opts)  # mean over channels
        assert abs(got_y[t].item() - ref_y) < 1e-9
        assert abs(got_rgb[t].item() - ref_rgb) < 1e-9
    assert 0.3 < got_y.mean().item() < 0.99  # the test pair is neither identical nor unrelated


def test_identical_images_give_inf_psnr_and_unit_ssim(pair):
    _, hr = pair
    assert torch.isinf(psnr(hr, hr)).all() and (psnr(hr, hr) > 0).all()
    assert torch.allclose(ssim(hr, hr), torch.ones(4, dtype=torch.float64), atol=1e-12)


def test_crop_border_ignores_the_border(pair):
    sr, hr = pair
    k = 3
    cropped = psnr(sr, hr, crop_border=k)
    manual = psnr(sr[..., k:-k, k:-k], hr[..., k:-k, k:-k])
    assert torch.equal(cropped, manual)
    assert torch.allclose(ssim(sr, hr, crop_border=k), ssim(sr[..., k:-k, k:-k], hr[..., k:-k, k:-k]))
    # damage only the border: with the crop, the images are identical
    damaged = hr.clone()
    damaged[..., :k, :] = 0.0
    damaged[..., :, -k:] = 1.0
    assert torch.isinf(psnr(damaged, hr, crop_border=k)).all()
    assert torch.isfinite(psnr(damaged, hr)).all()
    with pytest.raises(ValueError, match="crop_border=12 leaves nothing of a 24x30 image"):
        psnr(sr, hr, crop_border=12)


def test_batch_shapes_follow_the_leading_dims(pair):
    sr, hr = pair
    batched = psnr(torch.stack([sr, hr]), torch.stack([hr, hr]))  # (2, 4, 3, H, W) -> (2, 4)
    assert batched.shape == (2, 4)
    assert torch.equal(batched[0], psnr(sr, hr))
    single = psnr(sr[0], hr[0])
    assert single.shape == () and single.item() == psnr(sr, hr)[0].item()
    assert ssim(sr[1], hr[1]).shape == ()
    assert ssim(sr[1], hr[1]).item() == pytest.approx(ssim(sr, hr)[1].item(), abs=1e-12)


def test_quantize_rounds_to_8_bit_first():
    hr = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(1)).double() / 255
    sr = hr + 0.3 / 255  # rounds back onto hr's 8-bit levels
    assert torch.isfinite(psnr(sr, hr)).all()
    assert torch.isinf(psnr(sr, hr, quantize=True)).all()
    # clamping: values beyond [0, 1] count as 0 or 1 once quantised
    assert torch.isinf(psnr(torch.full((3, 12, 12), 1.2), torch.ones(3, 12, 12), quantize=True))


def test_errors_name_both_shapes_and_the_option():
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 18)
    with pytest.raises(ValueError, match=r"sr \(2, 3, 16, 16\) and hr \(2, 3, 16, 18\)"):
        psnr(a, b)
    with pytest.raises(ValueError, match=r"sr \(2, 3, 16, 16\) and hr \(2, 3, 16, 18\)"):
        ssim(a, b)
    with pytest.raises(ValueError, match="y_channel=True needs 3 RGB channels"):
        psnr(torch.rand(1, 16, 16), torch.rand(1, 16, 16))
    assert psnr(torch.rand(1, 16, 16), torch.rand(1, 16, 16), y_channel=False).shape == ()
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(3, 10, 20), torch.rand(3, 10, 20))


def test_video_metrics_score_each_video_as_the_mean_of_its_frames(pair):
    sr, hr = pair  # one video of 4 frames
    videos_sr, videos_hr = torch.stack([sr, (0.9 * sr).clamp(0, 1)]), torch.stack([hr, hr])
    out = video_metrics(videos_sr, videos_hr, crop_border=2)
    assert set(out) == {"psnr_y", "ssim_y", "psnr_rgb"}
    assert all(v.shape == (2,) for v in out.values())
    for i in range(2):
        frames_sr, frames_hr = videos_sr[i], videos_hr[i]
        assert out["psnr_y"][i] == psnr(frames_sr, frames_hr, crop_border=2).mean()
        assert out["ssim_y"][i] == ssim(frames_sr, frames_hr, crop_border=2).mean()
        assert out["psnr_rgb"][i] == psnr(frames_sr, frames_hr, y_channel=False, crop_border=2).mean()
    assert out["psnr_y"][0] > out["psnr_y"][1]  # the darkened video scores worse
    single = video_metrics(sr, hr)
    assert all(v.shape == () for v in single.values())
    with pytest.raises(ValueError, match=r"video_metrics: expected \(\.\.\., T, C, H, W\)"):
        video_metrics(sr[0], hr[0])


def test_mean_stderr_is_the_mean_and_the_standard_error_over_videos():
    mean, stderr = mean_stderr([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert stderr == pytest.approx(statistics.stdev([1.0, 2.0, 3.0, 4.0]) / 2, abs=1e-15)
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3), abs=1e-15))
    assert mean_stderr([0.7]) == (0.7, 0.0)  # one video: no spread to estimate
    assert all(math.isnan(x) for x in mean_stderr([]))


def test_gain_summary_reports_mean_stderr_and_videos_improved():
    gains = [0.5, -0.1, 0.2, 0.0]
    summary = gain_summary(gains)
    assert summary == {
        "gain_y": pytest.approx(0.15, abs=1e-15),
        "gain_y_stderr": pytest.approx(mean_stderr(gains)[1], abs=0),
        "videos_improved": 2.0,  # 0.0 is no improvement
    }
