"""The real-size test groups (data.test_real_sides): users' frame sizes, degradations and motion."""

from __future__ import annotations

import pytest
import torch

from hypernet.data.datamodule import MAX_REAL_HR, REAL_GROUPS, VSRDataModule
from hypernet.data.degrade import bd_downsample, bicubic_downsample, quantise
from hypernet.metrics import psnr

SMALL = dict(num_frames=8, clip_len=3, context_frames=2, hr_size=32, val_videos_per_image=1)


@pytest.fixture(scope="module")
def real_sets():
    dm = VSRDataModule(test_source="stills", test_real_sides=[16, 40], test_real_scenes=1, **SMALL)
    dm.setup("test")
    return dm


def test_every_degradation_is_a_group_of_the_same_videos_at_the_listed_sides(real_sets):
    sets = real_sets.test_sets
    assert set(REAL_GROUPS) <= set(sets) and "single" in sets
    ids = [v.video_id for v in sets["real_bi"].videos]
    for group in REAL_GROUPS:
        assert [v.video_id for v in sets[group].videos] == ids
    # one scene per side, then every held-out photo at the largest side it allows (all allow 40)
    assert ids[:2] == ["scene16-0", "scene40-0"]
    assert ids[2:] == ["chelsea40", "coins40", "gravel40", "ihc40", "rocket40"]
    for i, side in enumerate([16, 40, 40]):
        item = sets["real_bi"][i]
        assert item["lr"].shape == (3, 3, side, side) and item["hr"].shape == (3, 3, 4 * side, 4 * side)
        assert item["context"].shape == (2, 3, side, side)
    # real-size videos go one at a time (their frame sizes differ within a group)
    loaders = dict(zip(real_sets.test_groups, real_sets.test_dataloader(), strict=True))
    assert loaders["real_bi"].batch_size == 1


def test_photos_go_as_large_as_they_allow():
    dm = VSRDataModule(test_source="stills", test_real_sides=[24, 100], test_real_scenes=1, **SMALL)
    ids = [v.video_id for v in dm.real_size_videos()]
    # chelsea and coins are about 300 pixels high (LR 75 at most): 24; the others hold 100
    assert ids == ["scene24-0", "scene100-0", "chelsea24", "coins24", "gravel100", "ihc100", "rocket100"]
    # validation scenes are other scenes, and no photograph
    val = dm.real_size_videos(split="val")
    assert [v.video_id for v in val] == ["scene24-val0", "scene100-val0"]
    assert not torch.equal(val[0].hr_frames([0]), dm.real_size_videos()[0].hr_frames([0]))


def test_degradations_are_what_they_say(real_sets):
    sets = real_sets.test_sets
    item = {group: sets[group][1] for group in REAL_GROUPS}  # scene40-0
    hr = item["real_bi"]["hr"]
    for group in REAL_GROUPS:
        assert torch.equal(item[group]["hr"], hr)  # the same frames under each degradation
    assert torch.equal(item["real_bi"]["lr"], quantise(bicubic_downsample(hr, 4)))
    assert torch.equal(item["real_bd"]["lr"], quantise(bd_downsample(hr, 4)))
    clean = item["real_bi"]["lr"]
    high, low = (psnr(item[g]["lr"], clean).mean().item() for g in ("real_crf23", "real_crf33"))
    assert 30 < high < 60 and low < high  # H.264 of the clean frames, CRF 33 worse than 23
    blur, noise, crf = item["real_random"]["degradation"][1:].tolist()
    assert 0.4 <= blur <= 2.4 and 0 <= noise <= 12 / 255 + 1e-6 and crf == -1
    assert item["real_crf33"]["degradation"][1:].tolist() == [0.0, 0.0, 33.0]


def test_scenes_move(real_sets):
    video = real_sets.test_sets["real_bi"].videos[1]
    frames = video.hr_frames(list(range(8)))
    sprites = video.sprites
    assert sprites, "the scenes have moving layers"
    video.sprites = []
    try:
        background = video.hr_frames(list(range(8)))
    finally:
        video.sprites = sprites
    # the camera moves: the background alone changes from the first frame to the last
    assert (background[0] - background[-1]).abs().mean() > 0.01
    # the layers move over it: where they cover the frame changes
    covered = (frames - background).abs().sum(1) > 1e-3
    assert covered.any() and not torch.equal(covered[0], covered[-1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            dict(test_real_sides=[16, 1024]),
            r"data.test_real_sides: 1024 is larger than the content allows.*512",
        ),
        (dict(test_real_sides=[4]), r"data.test_real_sides=4 must be an int >= 8"),
        (dict(test_real_sides=128), r"data.test_real_sides=128 must be a list"),
        (
            dict(test_real_sides=[16], test_source=None),
            r"test_real_sides=\[16\].*data.test_source=stills or procedural",
        ),
        (dict(test_real_sides=[16], test_real_scenes=0), r"data.test_real_scenes=0 must be a positive int"),
    ],
)
def test_bad_real_sizes_name_the_option(options, message):
    options = {"test_source": "stills", **options}
    with pytest.raises(ValueError, match=message):
        VSRDataModule(**options)


def test_the_content_limit_is_the_hr_side():
    assert MAX_REAL_HR // 4 == 512
    VSRDataModule(test_source="stills", test_real_sides=[512])  # the largest allowed


# ----------------------------------------------------------------------------------------------
# training coverage of users' degradations


def test_clean_and_subsampled_videos_join_the_mix_without_moving_the_others():
    import numpy as np

    from hypernet.data.degrade import Degradation, DegradationRanges, degrade, sample_degradation

    def draw(seed, **options):
        return sample_degradation(np.random.default_rng(seed), scale=4, ranges=DegradationRanges(**options))

    plain = [draw(s) for s in range(200)]
    mixed = [draw(s, clean_prob=0.3, subsample_prob=0.5, crf=(18, 35), codec_prob=0.3) for s in range(200)]
    clean = [m for m in mixed if m.blur_sigma == 0]
    assert 40 < len(clean) < 80 and all(m.noise_sigma == 0 and not m.subsample for m in clean)
    assert 50 < sum(m.subsample for m in mixed) < 110
    for p, m in zip(plain, mixed, strict=True):  # a blurred video keeps its numbers and seed
        if m.blur_sigma:
            assert (p.blur_sigma, p.noise_sigma, p.seed) == (m.blur_sigma, m.noise_sigma, m.seed)
    hr = torch.rand(2, 3, 32, 32)
    d = Degradation(scale=4, blur_sigma=1.6, noise_sigma=0.0, crf=None, seed=0, subsample=True)
    assert torch.equal(degrade(hr, d), quantise(bd_downsample(hr, 4)))
    assert not torch.equal(
        degrade(hr, d), degrade(hr, Degradation(scale=4, blur_sigma=1.6, noise_sigma=0.0, crf=None, seed=0))
    )
