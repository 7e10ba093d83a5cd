"""Issue 14, hardening: every misuse below ends in one line `error: ...` naming the file or option
(exit code 2 for the command-line tools), and nothing is lost or left half-written."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import av
import lightning as L
import numpy as np
import pytest
import torch

from hypernet.data.video_io import (
    TruncatedVideoWarning,
    VideoReadError,
    iter_chunks,
    probe,
    read_frames,
    read_video,
    write_mp4,
    write_png_folder,
)
from hypernet.finetune import main as finetune_main
from hypernet.models.lora import AdapterFileError, find_targets, init_adapters, load_adapters, save_adapters
from hypernet.runs import atomic_write_bytes, default_file_mode
from hypernet.specialise import main as specialise_main
from hypernet.systems.hyper_lora import load_hypernet
from hypernet.train import run
from tests.helpers import (
    FPS,
    HEIGHT,
    TINY_BASE,
    WIDTH,
    compose_train,
    moving_texture,
    one_line_error,
    signal_mid_encode,
    specialise_exit,
)

# ----------------------------------------------------------------------------------------------
# 1. no output option may name an input


def test_specialise_outputs_may_not_name_an_input(checkpoint, video, tmp_path, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    lr = folder / "in.mp4"
    lr.write_bytes(video.read_bytes())
    (folder / "link.mp4").symlink_to(lr)  # the input under another name
    original = lr.read_bytes()
    adapter = folder / "a.safetensors"
    system = load_hypernet(checkpoint)
    save_adapters(adapter, system.spec, init_adapters(system.spec), base=system.base, video=0)
    common = ["--checkpoint", str(checkpoint), "--no-progress"]
    cases = [
        ([str(lr), "-o", str(folder / "link.mp4")], ["-o/--output", "link.mp4", "input video"]),
        ([str(lr), "-o", str(folder / "o.mp4"), "--save-adapter", str(lr)], ["--save-adapter", "in.mp4"]),
        (
            [str(lr), "-o", str(folder / "o.mp4"), "--save-adapter", str(folder / "link.mp4")],
            ["--save-adapter", "link.mp4", "input video"],
        ),
        (
            [str(lr), "-o", str(folder / "x.safetensors"), "--save-adapter", str(folder / "x.safetensors")],
            ["--save-adapter", "-o/--output"],
        ),
        (
            [str(lr), "-o", str(folder / "o.mp4"), "--adapter", str(adapter), "--save-adapter", str(adapter)],
            ["--save-adapter", "--adapter", "a.safetensors"],
        ),
        (
            [str(lr), "-o", str(folder / "o.mp4"), "--save-adapter", str(folder / "a.bin")],
            ["a.bin", ".safetensors"],
        ),
    ]
    before = sorted(p.name for p in folder.iterdir())
    for argv, names in cases:
        assert specialise_exit(argv + common) == 2
        one_line_error(capsys, *names)
        assert lr.read_bytes() == original and adapter.is_file()
        assert sorted(p.name for p in folder.iterdir()) == before  # nothing written, nothing deleted


def test_finetune_output_may_not_name_an_input(checkpoint, video, tmp_path, capsys):
    lr = tmp_path / "in.mp4"
    lr.write_bytes(video.read_bytes())
    (tmp_path / "in.safetensors").symlink_to(lr)
    original = lr.read_bytes()
    argv = ["--lr", str(lr), "-o", str(tmp_path / "in.safetensors"), "--checkpoint", str(checkpoint)]
    assert finetune_main(argv) == 2
    one_line_error(capsys, "-o/--output", "in.safetensors", "--lr")
    assert lr.read_bytes() == original


# ----------------------------------------------------------------------------------------------
# 2. a file cut short is refused, or read with a loud warning when allowed


def write_with_pyav(path: Path, frames: np.ndarray, *, codec: str = "libx264", **options) -> None:
    """A video written by PyAV directly; `options` go to the container (movflags=faststart puts
    an mp4's index first, as cameras and web videos do, so that half a file still opens)."""
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def cut_in_half(path: Path, to: Path) -> Path:
    data = path.read_bytes()
    to.write_bytes(data[: len(data) // 2])
    return to


@pytest.fixture(scope="module")
def halves(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("halves")
    frames = moving_texture(40, 32, 48)
    write_mp4(folder / "ours.mp4", frames, fps=10)
    write_with_pyav(folder / "faststart.mp4", frames, movflags="faststart")
    write_with_pyav(folder / "whole.mkv", frames)
    return {
        "write_mp4": cut_in_half(folder / "ours.mp4", folder / "half_ours.mp4"),
        "faststart": cut_in_half(folder / "faststart.mp4", folder / "half_faststart.mp4"),
        "mkv": cut_in_half(folder / "whole.mkv", folder / "half.mkv"),
    }


@pytest.mark.parametrize("kind", ["faststart", "mkv"])
def test_truncated_video_is_refused_naming_both_counts(halves, kind):
    path = halves[kind]
    counts = r"\d+ frames could be read but the container announces (about )?40"
    readers = [
        lambda: read_video(path),
        lambda: list(iter_chunks(path, chunk_size=7)),
        lambda: probe(path, verify=True),
    ]
    if kind == "mkv":  # no stored count: probe counts the packets anyway and compares durations
        readers += [lambda: probe(path), lambda: read_frames(path, [0])]
    for read in readers:
        with pytest.raises(VideoReadError, match=rf"{path.name}: the file is cut short.*{counts}"):
            read()


def test_our_mp4_cut_in_half_does_not_open(halves):
    """write_mp4 puts the mp4's index at the end: half a file is refused when it is opened."""
    with pytest.raises(VideoReadError, match=r"half_ours\.mp4: .*truncated or corrupt"):
        probe(halves["write_mp4"])


@pytest.mark.parametrize("kind", ["faststart", "mkv"])
def test_allow_truncated_reads_the_frames_there_are_with_a_warning(halves, kind):
    path = halves[kind]
    with pytest.warns(TruncatedVideoWarning, match=rf"{path.name}.*\d+ frames could be read.*40"):
        info = probe(path, verify=True, allow_truncated=True)
    with pytest.warns(TruncatedVideoWarning):
        frames = read_video(path, allow_truncated=True)
    assert 0 < info.num_frames == len(frames) < 40


def test_complete_videos_are_not_refused(tmp_path):
    """Frame folders, and an mkv whose audio outlasts its video (the file's duration is then not
    the video's): read whole without a warning."""
    import warnings

    frames = moving_texture(10, 16, 16)
    write_png_folder(tmp_path / "frames", frames)
    path = tmp_path / "with_audio.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=8000)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
        for i in range(6):  # 3 s of silence beside 1 s of video
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.int16), format="s16", layout="mono")
            sound.sample_rate, sound.pts = 8000, i * 4000
            container.mux(audio.encode(sound))
        container.mux(audio.encode(None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for video in (tmp_path / "frames", path):
            assert probe(video, verify=True).num_frames == 10
            assert len(read_video(video)) == 10


def test_specialise_cli_refuses_a_truncated_input_unless_allowed(checkpoint, halves, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    argv = [str(halves["mkv"]), "-o", str(out), "--checkpoint", str(checkpoint), "--no-progress"]
    assert specialise_exit(argv) == 2
    one_line_error(
        capsys, "half.mkv", "cut short", "could be read", "announces about 40", "--allow-truncated"
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []
    figures = specialise_main([*argv, "--allow-truncated"])
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "half.mkv" in warning[0] and "40" in warning[0], err
    assert 0 < figures["frames"] == probe(out).num_frames < 40


# ----------------------------------------------------------------------------------------------
# 3. weights holding NaN or inf


def test_adapter_file_with_nan_is_refused_naming_the_tensor(checkpoint, video, tmp_path, capsys):
    system = load_hypernet(checkpoint)
    spec = system.spec
    adapters = init_adapters(spec)
    name = spec.names[1]
    adapters[name][1].fill_(float("nan"))
    path = tmp_path / "nan.safetensors"
    save_adapters(path, spec, adapters, base=system.base, video=0)
    with pytest.raises(AdapterFileError, match=rf"nan\.safetensors.*{name}\.lora_B.*NaN or inf"):
        load_adapters(path, base=system.base)
    out = tmp_path / "out.mp4"
    argv = [
        str(video),
        "-o",
        str(out),
        "--checkpoint",
        str(checkpoint),
        "--adapter",
        str(path),
        "--no-progress",
    ]
    assert specialise_exit(argv) == 2
    one_line_error(capsys, "nan.safetensors", f"{name}.lora_B")
    assert not out.exists()


def test_checkpoint_with_inf_is_refused_naming_the_tensor(checkpoint, tmp_path):
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    key = next(k for k in state["state_dict"] if k.startswith("generator."))
    state["state_dict"][key].view(-1)[0] = float("inf")
    path = tmp_path / "diverged.ckpt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"diverged\.ckpt.*{key}.*NaN or inf"):
        load_hypernet(path)


# ----------------------------------------------------------------------------------------------
# 4. messages that named the wrong culprit


def test_specialise_bad_device_fps_and_checkpoint_folder(checkpoint, video, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.mp4"
    argv = [str(video), "-o", str(out), "--no-progress"]
    with_ckpt = [*argv, "--checkpoint", str(checkpoint)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert specialise_exit([*with_ckpt, "--device", "cuda"]) == 2
    one_line_error(capsys, "--device cuda", "no CUDA device is available")
    for fps in ("0", "-5"):
        assert specialise_exit([*with_ckpt, "--fps", fps]) == 2
        one_line_error(capsys, f"--fps {fps}", "> 0")
    run_folder = checkpoint.parent.parent
    assert specialise_exit([*argv, "--checkpoint", str(run_folder)]) == 2
    one_line_error(capsys, str(run_folder), "is a folder", "checkpoints/last.ckpt")
    assert not out.exists()


@pytest.fixture(scope="module")
def bad_ckpts(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_ckpts")
    data = tiny_checkpoints["base"].read_bytes()
    (folder / "half.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "notes.ckpt").write_text("not a checkpoint")
    torch.save({"weights": torch.zeros(3)}, folder / "plain.ckpt")
    (folder / "a_folder").mkdir()
    return {
        "stage2": tiny_checkpoints["hyper"],
        "truncated": folder / "half.ckpt",
        "text": folder / "notes.ckpt",
        "no_state_dict": folder / "plain.ckpt",
        "folder": folder / "a_folder",
        "missing": folder / "missing.ckpt",
    }


@pytest.mark.parametrize("kind", ["stage2", "truncated", "text", "no_state_dict", "folder", "missing"])
def test_bad_resume_checkpoint_is_named_before_anything_is_written(kind, bad_ckpts, tmp_path):
    path = bad_ckpts[kind]
    cfg = compose_train([*TINY_BASE, f"ckpt_path={path}"], tmp_path / "run")
    with pytest.raises(ValueError, match=rf"ckpt_path={path}") as error:
        run(cfg)
    message = str(error.value)
    assert "weights_only" not in message and len(message.splitlines()) == 1
    if kind == "stage2":
        assert "stage=hyper checkpoint" in message and "stage=base run" in message
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# 5. finetune checks its options, output and videos before training


def test_finetune_bad_options_name_the_option(checkpoint, video, tmp_path, capsys):
    out = tmp_path / "a.safetensors"
    base = ["--lr", str(video), "-o", str(out), "--checkpoint", str(checkpoint)]
    for option, value in [
        ("--steps", "-5"),
        ("--steps", "0"),
        ("--clips", "0"),
        ("--clip-len", "0"),
        ("--learning-rate", "0"),
    ]:
        assert finetune_main([*base, option, value]) == 2
        one_line_error(capsys, f"{option} {value}")
    assert not out.exists()


def test_finetune_checks_its_output_first(video, tmp_path, capsys, monkeypatch):
    """The output's folder is proven writable before the checkpoint is even loaded (a missing
    checkpoint here), and a folder that cannot be written is one line, not a traceback."""
    import hypernet.cli_checks

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(hypernet.cli_checks.tempfile, "TemporaryFile", refuse)
    out = tmp_path / "locked" / "a.safetensors"
    argv = ["--lr", str(video), "-o", str(out), "--checkpoint", str(tmp_path / "missing.ckpt")]
    assert finetune_main(argv) == 2
    one_line_error(capsys, "-o/--output", "a.safetensors", "Permission denied")
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_finetune_read_only_folder_is_one_line(video, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        argv = ["--lr", str(video), "-o", str(locked / "a.safetensors"), "--checkpoint", "x.ckpt"]
        assert finetune_main(argv) == 2
        one_line_error(capsys, "locked")
    finally:
        locked.chmod(0o755)


def test_finetune_creates_the_output_folder_and_a_failed_save_is_one_line(
    checkpoint, video, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "new" / "sub" / "a.safetensors"
    argv = ["--lr", str(video), "-o", str(out), "--checkpoint", str(checkpoint)]
    argv += ["--steps", "1", "--clips", "1", "--clip-len", "2", "--no-progress"]
    assert finetune_main(argv) == 0 and out.is_file()
    capsys.readouterr()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hypernet.finetune.save_adapters", full_disk)
    assert finetune_main(argv) == 2
    one_line_error(capsys, "No space left on device")


def test_finetune_mismatched_videos_name_both_files(checkpoint, tmp_path, capsys):
    lr = tmp_path / "lr.mp4"
    write_mp4(lr, moving_texture(8, HEIGHT, WIDTH), fps=FPS)
    short_hr = tmp_path / "short_hr.mp4"
    write_mp4(short_hr, moving_texture(6, 4 * HEIGHT, 4 * WIDTH), fps=FPS)
    wrong_hr = tmp_path / "wrong_hr.mp4"
    write_mp4(wrong_hr, moving_texture(8, 2 * HEIGHT, 2 * WIDTH), fps=FPS)
    out = tmp_path / "a.safetensors"
    common = ["--lr", str(lr), "-o", str(out), "--checkpoint", str(checkpoint)]
    assert finetune_main([*common, "--hr", str(short_hr)]) == 2
    one_line_error(capsys, "short_hr.mp4", "6 frames", "lr.mp4", "8")
    assert finetune_main([*common, "--hr", str(wrong_hr)]) == 2
    one_line_error(capsys, "wrong_hr.mp4", f"{2 * WIDTH}x{2 * HEIGHT}", "lr.mp4", f"{WIDTH}x{HEIGHT}", "x4")
    assert not out.exists()


def test_finetune_refuses_frames_specialise_refuses(checkpoint, tmp_path, capsys):
    tiny = tmp_path / "tiny_frames"  # a frame folder: an mp4 would be padded to even sizes
    write_png_folder(tiny, moving_texture(4, 1, 1))
    out = tmp_path / "a.safetensors"
    assert finetune_main(["--lr", str(tiny), "-o", str(out), "--checkpoint", str(checkpoint)]) == 2
    one_line_error(capsys, "tiny_frames", "1x1", "8x8")
    small_hr = tmp_path / "small_hr.mp4"  # 16x16 HR makes 4x4 LR at x4
    write_mp4(small_hr, moving_texture(4, 16, 16), fps=FPS)
    assert finetune_main(["--hr", str(small_hr), "-o", str(out), "--checkpoint", str(checkpoint)]) == 2
    one_line_error(capsys, "small_hr.mp4", "4x4", "8x8")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# 7. SIGTERM, file permissions, failed runs


def test_sigterm_mid_encode_leaves_no_temporary(checkpoint, video, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = [str(video), "-o", str(out_dir / "sr.mp4"), "--checkpoint", str(checkpoint)]
    code, err = signal_mid_encode([*argv, "--base-only", "--no-progress"], out_dir, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []  # no temporary, no output


def test_written_files_get_the_usual_permissions(tiny_checkpoints, tmp_path):
    old = os.umask(0o027)
    try:
        assert default_file_mode() == 0o640
        atomic_write_bytes(tmp_path / "meta.json", b"{}")
        assert (tmp_path / "meta.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3))
    spec = find_targets(model, rank=2)
    save_adapters(tmp_path / "a.safetensors", spec, init_adapters(spec), base=model)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == default_file_mode()
    # checkpoints (AtomicCheckpointIO) and run metadata of the session's tiny run
    run_folder = tiny_checkpoints["base"].parent.parent
    for path in (tiny_checkpoints["base"], run_folder / "run.json", run_folder / "metrics.json"):
        assert path.stat().st_mode & 0o777 == default_file_mode(), path


def test_run_json_says_finished_or_failed(tiny_checkpoints, tmp_path, monkeypatch):
    finished = json.loads((tiny_checkpoints["base"].parent.parent / "run.json").read_text())
    assert finished["status"] == "finished" and "error" not in finished

    def crash(self, *args, **kwargs):
        raise RuntimeError("the GPU fell over")

    monkeypatch.setattr(L.Trainer, "fit", crash)
    with pytest.raises(RuntimeError, match="fell over"):
        run(compose_train(TINY_BASE, tmp_path / "run"))
    failed = json.loads((tmp_path / "run" / "run.json").read_text())
    assert failed["status"] == "failed"
    assert failed["error"] == {"type": "RuntimeError", "message": "the GPU fell over"}
    assert not (tmp_path / "run" / "metrics.json").exists()
