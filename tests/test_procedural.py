"""Procedural scenes, mixed sources, photo meta-augmentation and multi-shot videos: what training
content the data layer draws, and the errors for options that cannot work."""

import numpy as np
import pytest
import torch

from hypernet.data.camera import PhotoAugment, StillsVideo, builtin_images, colour_matrix
from hypernet.data.datamodule import VSRDataModule
from hypernet.data.datasets import (
    DegradationConfig,
    FreshVideoDataset,
    SampleConfig,
    parse_sources,
)
from hypernet.data.procedural import ProceduralConfig, ProceduralConfigError, procedural_video
from hypernet.train import run
from tests.helpers import TINY_BASE, compose_train

CFG = ProceduralConfig()


def video(seed: int, **kw):
    return procedural_video(seed, CFG, num_frames=12, frame_size=48, **kw)


def test_procedural_videos_are_deterministic_and_new_for_every_seed():
    a, b, c = video(5).hr_frames([0, 6, 11]), video(5).hr_frames([0, 6, 11]), video(6).hr_frames([0, 6, 11])
    assert a.shape == (3, 3, 48, 48) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.05  # another scene, not a shifted copy
    assert (a[0] - a[2]).abs().mean() > 0.005  # it moves


def test_moving_layers_move_against_the_background():
    """With the camera still, only the sprites change the picture: frames differ where they are."""
    scene = video(3)
    still = scene.paths[0]
    from hypernet.data.camera import CameraPath

    c = still.at(0.5)
    scene.paths = [CameraPath(centres=((c[0], c[1]),) * 2, views=(c[2],) * 2, angles=(0.0, 0.0))]
    frames = scene.hr_frames([0, 11])
    scene.sprites = []
    empty = scene.hr_frames([0, 11])
    assert torch.equal(empty[0], empty[1])  # no sprites, no camera motion: a still picture
    assert not torch.equal(frames[0], frames[1])


def radial_power_slope(image: np.ndarray) -> float:
    """Slope of log power against log frequency, radially averaged, over mid frequencies."""
    image = image - image.mean()
    window = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2(image * window))) ** 2
    h, w = image.shape
    y, x = np.indices(power.shape)
    r = np.hypot(y - h // 2, x - w // 2).astype(int)
    radial = np.bincount(r.ravel(), power.ravel()) / np.bincount(r.ravel())
    freqs = np.arange(4, min(h, w) // 2 - 4)
    return float(np.polyfit(np.log(freqs), np.log(radial[freqs]), 1)[0])


def test_power_spectrum_falls_off_like_natural_images():
    slopes = []
    for seed in range(6):
        frame = procedural_video(seed, CFG, num_frames=2, frame_size=128).hr_frames([0])[0]
        slopes.append(radial_power_slope(frame.mean(0).numpy()))
    assert -3.0 < float(np.mean(slopes)) < -1.0, slopes


def test_multishot_videos_hold_the_requested_shots():
    still_scene = ProceduralConfig(sprites=(0, 0))  # the camera alone moves: cuts against its motion
    for shots in (2, 3, 4):
        ratios = []
        for seed in range(4):
            scene = procedural_video(seed, still_scene, num_frames=48, frame_size=32, shots=shots)
            assert len(scene.paths) == shots and scene.shot_starts == [k * 48 // shots for k in range(shots)]
            ends = [*scene.shot_starts[1:], 48]
            for k, (start, end) in enumerate(zip(scene.shot_starts, ends, strict=True)):
                assert scene.camera(start) == scene.paths[k].at(0.0)
                assert scene.camera(end - 1) == scene.paths[k].at(1.0)
            views = [path.at(0.5)[2] for path in scene.paths]
            wide, close = views[0::2], views[1::2]
            # wide shots and close-ups alternate
            assert all(w > c for w, c in zip(wide, close, strict=False)) or all(
                w < c for w, c in zip(wide, close, strict=False)
            )
            frames = scene.hr_frames(list(range(48)))
            jumps = (frames[1:] - frames[:-1]).abs().mean(dim=(1, 2, 3))
            cuts = [start - 1 for start in scene.shot_starts[1:]]
            within = [j for i, j in enumerate(jumps.tolist()) if i not in cuts]
            ratios.append(min(jumps[cuts].tolist()) / np.median(within))
        # hard cuts between shots, smooth inside: a cut changes the picture more than twice as much
        # as a frame of camera motion (the median over scenes: a scene of fine texture, filmed in
        # short shots of 32-pixel frames, moves nearly as much inside a shot)
        assert np.median(ratios) > 2, ratios
    path = builtin_images("val")[2]
    photo = StillsVideo(image_path=path, seed=0, num_frames=12, frame_size=48, shots=3)
    assert len(photo.paths) == 3


def test_single_shot_stills_videos_are_unchanged():
    """The held-out test videos stay the videos earlier studies measured."""
    path = builtin_images("val")[0]
    video = StillsVideo(image_path=path, seed=11, num_frames=10, frame_size=48)
    assert len(video.paths) == 1 and video.shot_starts == [0]
    assert video.path.views[0] != video.path.views[1]  # zooms in then out (or out then in)


def fresh(sources, **kw):
    return FreshVideoDataset(
        sources=sources,
        image_paths=builtin_images("train")[:4],
        num_samples=40,
        num_frames=12,
        hr_size=48,
        sample=SampleConfig(clip_len=3, context_frames=2, patch_size=8),
        degradation=DegradationConfig(),
        seed=0,
        **kw,
    )


def test_mixed_sources_follow_their_weights():
    ds = fresh(parse_sources({"stills": 0.3, "procedural": 0.7}))
    ids = [ds[i]["video_id"] for i in range(40)]
    procedural = sum(i.startswith("procedural") for i in ids)
    assert 18 <= procedural <= 38  # 0.7 of 40, binomial spread
    assert len(set(ids)) == 40
    item = ds[3]
    assert item["lr"].shape == (3, 3, 8, 8) and item["context"].shape == (2, 3, 12, 12)


def test_photo_meta_augmentation_changes_colours_and_content_alike_for_lr_and_hr():
    plain = fresh({"stills": 1.0})
    augmented = fresh({"stills": 1.0}, photo_augment=PhotoAugment(colour=1.0, collage=1.0))
    a, b = plain[2], augmented[2]
    assert a["video_id"] == b["video_id"]  # the same photo and camera path ...
    assert (a["hr"] - b["hr"]).abs().mean() > 0.02  # ... recoloured and collaged
    # LR is made from the augmented HR: downscaling it again matches (the degradation is the same)
    from hypernet.data.degrade import imresize

    assert (imresize(b["hr"], scale=0.25) - b["lr"]).abs().mean() < (
        imresize(a["hr"], scale=0.25) - b["lr"]
    ).abs().mean()
    m = colour_matrix(np.random.default_rng(0))
    assert m.shape == (3, 4)


def test_bad_content_options_name_the_option():
    with pytest.raises(ValueError, match=r"data.source=\{'stills': 0.5, 'reds': 0.5\}.*cannot be mixed"):
        parse_sources({"stills": 0.5, "reds": 0.5})
    with pytest.raises(ValueError, match="must sum to a positive number"):
        parse_sources({"stills": 0.0, "procedural": 0})
    with pytest.raises(ValueError, match=r"data.source.stills=-1"):
        parse_sources({"stills": -1, "procedural": 2})
    with pytest.raises(ValueError, match="data.source='dreams'"):
        VSRDataModule(source="dreams")
    with pytest.raises(
        ProceduralConfigError, match="data.procedural.fonts: cannot load the font /no/such.ttf"
    ):
        ProceduralConfig(fonts=("/no/such.ttf",))
    with pytest.raises(ProceduralConfigError, match="data.procedural: unknown options \\['leaves'\\]"):
        ProceduralConfig.from_options({"leaves": 3})
    with pytest.raises(ProceduralConfigError, match="data.procedural.sprites"):
        ProceduralConfig(sprites=(3, 1))
    with pytest.raises(ValueError, match=r"data.shots=4 shots of at least data.clip_len=5 .* 12-frame"):
        VSRDataModule(shots=4, clip_len=5, num_frames=12)
    with pytest.raises(ValueError, match="data.test_shots=9"):
        VSRDataModule(test_shots=9, clip_len=5, num_frames=30)
    with pytest.raises(ValueError, match="data.photo_augment.colour=2"):
        VSRDataModule(photo_augment={"colour": 2})
    with pytest.raises(ValueError, match="set data.val_source"):
        VSRDataModule(source={"stills": 1, "procedural": 1}, val_source=None)


def test_bad_content_options_fail_before_the_run_starts(tmp_path):
    out = tmp_path / "run"
    for override in (
        "data.source={stills:0,procedural:0}",
        "data.shots=9",
        "data.procedural.fonts=[/no/font.ttf]",
    ):
        with pytest.raises(ValueError, match="data\\."):
            run(compose_train([*TINY_BASE, override], out))
        assert not out.exists()  # nothing written: the error came before any training


def test_a_run_trains_on_a_mix_and_reports_multishot_apart(tmp_path):
    metrics = run(
        compose_train(
            [*TINY_BASE, "data.source={stills:0.5,procedural:0.5}", "data.test_shots=2", "data.num_frames=8"],
            tmp_path / "run",
        )
    )
    assert "test/psnr_y" in metrics and "test/multishot/psnr_y" in metrics
    rows = (tmp_path / "run" / "test_videos.csv").read_text().splitlines()
    assert sum("-shots2-" in r and ",multishot," in r for r in rows) == 5
