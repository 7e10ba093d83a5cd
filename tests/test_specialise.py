"""`hypernet.specialise`: an LR video file in, an upscaled mp4 out, with adapters predicted for it,
read from a file, or none; chunked upscaling equal to whole-video upscaling; the bad inputs."""

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from hypernet.cli_checks import MIN_SIZE, InputError
from hypernet.data.datasets import spread_indices
from hypernet.data.video_io import probe, read_video, to_tensor, to_uint8, write_mp4
from hypernet.models.base import WindowVSR
from hypernet.models.lora import AdapterMismatchError, find_targets, init_adapters, save_adapters
from hypernet.specialise import main, predict_adapters, specialise
from hypernet.systems.hyper_lora import load_hypernet
from hypernet.upscale import upscale_frames
from tests.helpers import FPS, FRAMES, HEIGHT, WIDTH, moving_texture


def decode(path: Path) -> np.ndarray:
    return read_video(path).astype(np.float64)


def test_round_trip_frame_count_size_fps(checkpoint, video, tmp_path):
    out = tmp_path / "sub" / "sr.mp4"  # a missing folder is created
    figures = specialise(video, out, checkpoint=checkpoint, chunk_size=5, progress=False)
    info = probe(out)
    assert (info.num_frames, info.height, info.width) == (FRAMES, 4 * HEIGHT, 4 * WIDTH)
    assert info.fps == pytest.approx(FPS)
    assert figures["mode"] == "hypernet"
    assert (figures["frames"], figures["output_height"], figures["output_width"]) == (FRAMES, 64, 80)
    assert figures["peak_rss_mib"] > 0
    assert [p.name for p in out.parent.iterdir()] == ["sr.mp4"]  # no temporary left behind


def test_real_mp4_from_another_encoder_with_audio(checkpoint, tmp_path):
    """A file not written by write_mp4: MPEG-4 Part 2 video at 15 fps beside an AAC audio track."""
    path = tmp_path / "camera.mp4"
    frames = moving_texture(7, 24, 32, seed=1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=15)
        stream.height, stream.width, stream.pix_fmt = 24, 32, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for i, frame in enumerate(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            samples = np.zeros((1, 1024), dtype=np.float32)
            sound = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 16000, i * 1024
            container.mux(audio.encode(sound))
        container.mux(stream.encode(None))
        container.mux(audio.encode(None))
    out = tmp_path / "sr.mp4"
    specialise(path, out, checkpoint=checkpoint, progress=False)
    info = probe(out)
    assert (info.num_frames, info.height, info.width, info.fps) == (7, 96, 128, 15.0)


def window_base_with_detail() -> torch.nn.Module:
    """A window base whose residual is far from zero (a trained one's is small), so every output
    frame depends visibly on its neighbours."""
    torch.manual_seed(0)
    base = WindowVSR(channels=8, num_blocks=1, upsampler="direct").eval()
    torch.nn.init.normal_(base.upsampler.body[0].weight, std=0.1)
    return base


@pytest.mark.parametrize("which", ["checkpoint", "detailed"])
def test_chunked_upscale_equals_whole_video_for_a_window_base(which, checkpoint, video):
    base = load_hypernet(checkpoint).base if which == "checkpoint" else window_base_with_detail()
    assert base.num_frames // 2 <= 2  # the window radius fits in the overlap
    frames = read_video(video)
    with torch.no_grad():
        whole = to_uint8(base(to_tensor(frames)))
    for chunk_size in (1, 5, FRAMES):
        chunks = (frames[i : i + chunk_size] for i in range(0, FRAMES, chunk_size))
        chunked = np.concatenate(list(upscale_frames(base, chunks, overlap=2)))
        assert chunked.shape == whole.shape == (FRAMES, 64, 80, 3)
        # same computation on different batch sizes: at most one grey level of float rounding
        diff = np.abs(chunked.astype(int) - whole.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    if which == "detailed":  # without the overlap, frames at chunk boundaries see replicated neighbours
        chunks = (frames[i : i + 5] for i in range(0, FRAMES, 5))
        cut = np.concatenate(list(upscale_frames(base, chunks, overlap=0)))
        assert np.abs(cut[4].astype(int) - whole[4]).max() > 5
        assert np.abs(cut[2].astype(int) - whole[2]).max() <= 1  # inside a chunk nothing changes


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 Y of RGB frames: what H.264's 4:2:0 keeps at full resolution (chroma is halved)."""
    return frames.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255 + 16


def test_hypernet_output_is_the_base_with_this_videos_adapters(gated_checkpoint, video, tmp_path):
    ours = specialise(
        video, tmp_path / "ours.mp4", checkpoint=gated_checkpoint, guard=False, crf=0, progress=False
    )
    alone = specialise(
        video, tmp_path / "base.mp4", checkpoint=gated_checkpoint, base_only=True, crf=0, progress=False
    )
    assert (ours["mode"], alone["mode"]) == ("hypernet", "base-only")
    # independent reference: adapters applied by forward hooks (not merged), whole video at once
    system = load_hypernet(gated_checkpoint)
    adapters = predict_adapters(system, video, num_frames=FRAMES, context_frames=3)
    with torch.no_grad():
        lr = to_tensor(read_video(video))
        with_adapters = luma(to_uint8(system.sr(lr, adapters)))
        without = luma(to_uint8(system.sr(lr, None)))
    assert np.abs(with_adapters - without).mean() > 2.0  # the adapters do change the picture
    ours_y, alone_y = luma(read_video(tmp_path / "ours.mp4")), luma(read_video(tmp_path / "base.mp4"))
    assert np.abs(ours_y - with_adapters).mean() < 0.5  # lossless H.264: only YUV rounding
    assert np.abs(alone_y - without).mean() < 0.5
    assert np.abs(ours_y - alone_y).mean() > 2.0


def test_saved_adapter_applied_again_gives_the_same_video(gated_checkpoint, video, tmp_path):
    adapter = tmp_path / "adapters" / "lr.safetensors"
    specialise(video, tmp_path / "a.mp4", checkpoint=gated_checkpoint, save_adapter=adapter, progress=False)
    assert adapter.is_file()
    again = specialise(
        video,
        tmp_path / "b.mp4",
        checkpoint=gated_checkpoint,
        adapters=[adapter],
        hypernet=False,
        progress=False,
    )
    assert again["mode"] == "adapter"
    assert np.abs(decode(tmp_path / "a.mp4") - decode(tmp_path / "b.mp4")).max() <= 2


def test_refine_mode_steps_on_frames_spread_over_the_video(gated_checkpoint, video):
    system = load_hypernet(gated_checkpoint)
    direct = predict_adapters(system, video, num_frames=FRAMES, context_frames=3)
    system.refine.mode = "refine"
    refined = predict_adapters(system, video, num_frames=FRAMES, context_frames=4)
    assert refined.keys() == direct.keys()
    assert any(not torch.allclose(refined[k][0], direct[k][0]) for k in direct)


def test_the_video_is_read_as_training_read_it(gated_checkpoint, video):
    """specialise's adapters are the system's own for the frames a training sample of this video
    would hold as context: K frames spread over it (the middle of each segment) at their times."""
    system = load_hypernet(gated_checkpoint)
    frames = to_tensor(read_video(video))
    indices = spread_indices(FRAMES, 3, rng=None)
    times = torch.tensor(indices, dtype=torch.float32)[None] / (FRAMES - 1)
    with torch.no_grad():
        expected = system.adapters_for(frames[:, indices], times)
    got = predict_adapters(system, video, num_frames=FRAMES, context_frames=3)
    for name, (a, b) in expected.items():
        assert torch.equal(got[name][0], a) and torch.equal(got[name][1], b)


# ----------------------------------------------------------------------------------------------
# bad inputs: a clear error naming the file, and no output file left behind


@pytest.fixture(scope="module")
def other_base_adapter(tmp_path_factory) -> Path:
    """Adapters made for a base with other channels than the checkpoint's."""
    torch.manual_seed(0)
    base = WindowVSR(channels=6, num_blocks=1, upsampler="direct")
    spec = find_targets(base, rank=2)
    adapters = init_adapters(spec)
    path = tmp_path_factory.mktemp("other") / "other_base.safetensors"
    save_adapters(path, spec, adapters, base=base, video=0)
    return path


def bad_input(kind: str, folder: Path, video: Path, adapter: Path) -> tuple[dict, str]:
    """(keyword arguments of specialise, text the error must contain) for one kind of bad input."""
    out = folder / "out.mp4"
    if kind == "missing":
        return {"input_path": folder / "nope.mp4", "output_path": out}, "nope.mp4"
    if kind == "random_bytes":
        path = folder / "noise.mp4"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return {"input_path": path, "output_path": out}, "noise.mp4"
    if kind == "empty":
        (folder / "empty.mp4").touch()
        return {"input_path": folder / "empty.mp4", "output_path": out}, "empty.mp4"
    if kind == "too_small":
        write_mp4(folder / "tiny.mp4", moving_texture(3, 4, 4))
        return {"input_path": folder / "tiny.mp4", "output_path": out}, "tiny.mp4: frames are 4x4"
    if kind == "other_base_adapter":
        return {"input_path": video, "output_path": out, "adapters": [adapter]}, "other_base.safetensors"
    if kind == "output_under_a_file":
        (folder / "a_file").write_text("x")
        return {"input_path": video, "output_path": folder / "a_file" / "out.mp4"}, "a_file"
    if kind == "output_not_mp4":
        return {"input_path": video, "output_path": folder / "out.avi"}, "out.avi"
    if kind == "output_is_a_folder":
        (folder / "dir.mp4").mkdir()
        return {"input_path": video, "output_path": folder / "dir.mp4"}, "dir.mp4"
    raise AssertionError(kind)


BAD = [
    "missing",
    "random_bytes",
    "empty",
    "too_small",
    "other_base_adapter",
    "output_under_a_file",
    "output_not_mp4",
    "output_is_a_folder",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_a_clear_error_and_leaves_no_output(
    kind, checkpoint, video, other_base_adapter, tmp_path
):
    kwargs, names = bad_input(kind, tmp_path, video, other_base_adapter)
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(ValueError, match=names) as error:
        specialise(**kwargs, checkpoint=checkpoint, progress=False)
    if kind == "other_base_adapter":
        assert isinstance(error.value, AdapterMismatchError)
    output = Path(kwargs["output_path"])
    assert not output.is_file()
    assert {p for p in tmp_path.rglob("*")} == before  # nothing new: no output, no temporary


def test_min_size_is_enforced_at_the_boundary(checkpoint, tmp_path):
    write_mp4(tmp_path / "narrow.mp4", moving_texture(3, MIN_SIZE, MIN_SIZE - 2))
    with pytest.raises(InputError, match="narrow.mp4"):
        specialise(tmp_path / "narrow.mp4", tmp_path / "o.mp4", checkpoint=checkpoint, progress=False)
    write_mp4(tmp_path / "ok.mp4", moving_texture(3, MIN_SIZE, MIN_SIZE))
    figures = specialise(tmp_path / "ok.mp4", tmp_path / "o.mp4", checkpoint=checkpoint, progress=False)
    assert (figures["frames"], figures["output_height"]) == (3, 4 * MIN_SIZE)


def test_missing_default_checkpoint_says_how_to_make_it(video, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default is relative to the working directory
    with pytest.raises(FileNotFoundError, match="make quickstart"):
        specialise(video, tmp_path / "out.mp4", progress=False)
    assert not (tmp_path / "out.mp4").exists()


def test_a_file_that_is_no_checkpoint_is_a_clear_error(video, tmp_path):
    with pytest.raises(ValueError, match="lr.mp4"):
        specialise(video, tmp_path / "out.mp4", checkpoint=video, progress=False)
    assert not (tmp_path / "out.mp4").exists()


def test_cli_bad_input_exits_2_with_one_line(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoint)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.mp4" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_base_only_writes_the_video(checkpoint, video, tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    figures = main(
        [str(video), "-o", str(out), "--checkpoint", str(checkpoint), "--base-only", "--no-progress"]
    )
    assert figures["mode"] == "base-only" and probe(out).num_frames == FRAMES
    assert f"{FRAMES} frames" in capsys.readouterr().out


def test_finetune_then_specialise_with_that_adapter(checkpoint, tmp_path):
    """hypernet.finetune on an HR video writes an adapter that specialise applies to the LR video."""
    from hypernet.finetune import main as finetune_main

    hr = tmp_path / "hr.mp4"
    write_mp4(hr, moving_texture(10, 4 * HEIGHT, 4 * WIDTH, seed=3), fps=FPS, crf=5)
    adapter = tmp_path / "video.safetensors"
    code = finetune_main(
        [
            "--hr",
            str(hr),
            "-o",
            str(adapter),
            "--checkpoint",
            str(checkpoint),
            "--steps",
            "3",
            "--clips",
            "2",
            "--clip-len",
            "3",
        ]
    )
    assert code == 0 and adapter.is_file()
    lr = tmp_path / "lr.mp4"
    write_mp4(lr, moving_texture(10, HEIGHT, WIDTH, seed=3), fps=FPS, crf=5)
    out = tmp_path / "out.mp4"
    figures = specialise(lr, out, checkpoint=checkpoint, adapters=[adapter], hypernet=False, progress=False)
    assert figures["mode"] == "adapter" and figures["frames"] == 10
    info = probe(out)
    assert (info.num_frames, info.height, info.width) == (10, 4 * HEIGHT, 4 * WIDTH)
    # an LR-only (self-supervised) adapter also works, and a bad request is a clear error
    assert (
        finetune_main(
            [
                "--lr",
                str(lr),
                "-o",
                str(tmp_path / "ss.safetensors"),
                "--checkpoint",
                str(checkpoint),
                "--steps",
                "2",
                "--clips",
                "1",
                "--clip-len",
                "3",
            ]
        )
        == 0
    )
    assert finetune_main(["-o", str(tmp_path / "x.safetensors"), "--checkpoint", str(checkpoint)]) == 2


# ----------------------------------------------------------------------------------------------
# the guard: on by default, its choice said in the log and the adapter file


def test_the_guard_chooses_the_strength_and_says_why(gated_checkpoint, video, tmp_path, capsys):
    from hypernet.adapters import info
    from hypernet.models.lora import load_adapters

    adapter = tmp_path / "a.safetensors"
    out = tmp_path / "guarded.mp4"
    figures = main(
        [
            str(video),
            "-o",
            str(out),
            "--checkpoint",
            str(gated_checkpoint),
            "--save-adapter",
            str(adapter),
            "--no-progress",
        ]
    )
    assert figures["strength"] in (0.0, 0.25, 0.5, 0.75, 1.0) and figures["guard"].startswith(
        f"strength {figures['strength']:g}: "
    )
    assert f"guard: {figures['guard']}" in capsys.readouterr().out  # the run's log
    _, saved, made_by = load_adapters(adapter)
    assert made_by["strength"] == f"{figures['strength']:g}" and made_by["guard"] == figures["guard"]
    assert f"guard {figures['guard']}" in info(adapter)  # adapters info says it too
    # the file holds the adapter as the guard applied it
    system = load_hypernet(gated_checkpoint)
    predicted = predict_adapters(system, video, num_frames=FRAMES, context_frames=3)
    for name, (a, b) in predicted.items():
        assert torch.equal(saved[name][0], a) and torch.allclose(saved[name][1], b * figures["strength"])
    # strength 0 is the base exactly; otherwise the adapters at that strength
    alone = tmp_path / "base.mp4"
    specialise(video, alone, checkpoint=gated_checkpoint, base_only=True, progress=False)
    fixed = tmp_path / "fixed.mp4"
    specialise(video, fixed, checkpoint=gated_checkpoint, strength=figures["strength"], progress=False)
    assert np.abs(decode(out) - decode(fixed)).max() <= 2
    if figures["strength"] == 0:
        assert np.abs(decode(out) - decode(alone)).max() <= 2


def test_a_given_strength_or_no_guard_skips_the_guard(gated_checkpoint, video, tmp_path):
    fixed = specialise(video, tmp_path / "a.mp4", checkpoint=gated_checkpoint, strength=0.5, progress=False)
    trained = specialise(video, tmp_path / "b.mp4", checkpoint=gated_checkpoint, guard=False, progress=False)
    assert (fixed["strength"], fixed["guard"]) == (0.5, None)
    assert (trained["strength"], trained["guard"]) == (1.0, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-guard", "--strength", "0.5"], "--no-guard and --strength exclude each other"),
        (["--guard-margin", "-0.1"], "--guard-margin=-0.1"),
        (["--guard-margin", "nan"], "--guard-margin=nan"),
    ],
)
def test_bad_guard_options_exit_2_with_one_line(checkpoint, video, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(video), "-o", str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoint), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_specialise_uses_the_checkpoints_learned_guard(learned_checkpoint, video, tmp_path, capsys):
    figures = main(
        [str(video), "-o", str(tmp_path / "o.mp4"), "--checkpoint", str(learned_checkpoint), "--no-progress"]
    )
    # the tiny guard was fitted on 12 small videos: it predicts, or says the video lies outside them
    assert "the learned guard" in figures["guard"] and "predicted by strength" in figures["guard"]
    assert f"guard: {figures['guard']}" in capsys.readouterr().out
    # a margin no prediction beats keeps the base
    kept = specialise(
        video, tmp_path / "k.mp4", checkpoint=learned_checkpoint, guard_margin=100.0, progress=False
    )
    assert kept["strength"] == 0 and "learned guard" in kept["guard"]
