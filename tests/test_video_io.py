"""Tests for hypernet.data.video_io: every video the project sees passes through it."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from hypernet.data.video_io import (
    VideoInfo,
    VideoReadError,
    VideoWriteError,
    h264_roundtrip,
    iter_chunks,
    natural_key,
    probe,
    read_frames,
    read_video,
    write_mp4,
    write_png_folder,
)
from hypernet.data.video_io import decode as video_io  # probe and the decoder it must not call

T, H, W = 16, 48, 64


def make_frames(t: int = T, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """Smooth moving colour gradients (t, h, w, 3) uint8: codecs keep them well, so PSNR bounds are
    meaningful, and every frame differs so a wrong frame order or index shows."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        for c in range(3):
            wave = np.sin(xx / (14 + 4 * c) + yy / (19 - 3 * c) + phase[c] + 0.35 * i)
            out[i, :, :, c] = np.clip(np.rint(128 + 90 * wave), 0, 255)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def write_with_pyav(path: Path, frames: np.ndarray, *, codec: str, pix_fmt: str, fps: int = 25) -> None:
    """An independent writer (PyAV directly), so reading is not only tested on our own files."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return make_frames()


@pytest.fixture(scope="module")
def mp4(tmp_path_factory, frames) -> Path:
    path = tmp_path_factory.mktemp("mp4") / "clip.mp4"
    write_mp4(path, frames, fps=25.0, crf=0)
    return path


# (suffix, codec, pix_fmt, PSNR lower bound in dB against the source frames)
CONTAINERS = [
    # measured on this content: 52.1, 36.9, 28.8, 33.6, 39.1 dB
    ("mkv", "ffv1", "yuv444p", 48.0),  # lossless codec: only the RGB<->YUV rounding is lost
    ("mkv", "libx264", "yuv420p", 34.0),  # PyAV defaults: crf 23
    ("avi", "mpeg4", "yuv420p", 26.0),  # PyAV defaults: a low bit rate
    ("avi", "mjpeg", "yuvj420p", 30.0),
    ("webm", "libvpx-vp9", "yuv420p", 35.0),
]


@pytest.fixture(scope="module", params=CONTAINERS, ids=lambda c: f"{c[0]}-{c[1]}")
def other_video(request, tmp_path_factory, frames) -> tuple[Path, float]:
    suffix, codec, pix_fmt, bound = request.param
    if codec not in av.codecs_available:
        pytest.skip(f"encoder {codec} is not in this PyAV build")
    path = tmp_path_factory.mktemp(codec) / f"clip.{suffix}"
    write_with_pyav(path, frames, codec=codec, pix_fmt=pix_fmt)
    return path, bound


# ------------------------------------------------------------------------------------------------
# probing and reading video files


def test_write_mp4_then_probe_and_read_near_lossless(mp4, frames):
    assert probe(mp4) == VideoInfo(path=str(mp4), num_frames=T, fps=25.0, height=H, width=W)
    video = read_video(mp4)
    assert video.shape == (T, H, W, 3) and video.dtype == np.uint8
    # crf 0 is lossless H.264; what is lost is yuv420p's half-resolution chroma: 49.9 dB measured
    assert psnr(video, frames) > 45.0


@pytest.mark.parametrize("fps", [12.5, 29.97, 30000 / 1001])
def test_fractional_frame_rates_survive(tmp_path, frames, fps):
    path = tmp_path / "rate.mp4"
    write_mp4(path, frames[:4], fps=fps, crf=30, preset="ultrafast")
    assert probe(path).fps == pytest.approx(fps, rel=1e-6)


def test_other_containers_probe_and_read(other_video, frames):
    path, bound = other_video
    info = probe(path)
    assert (info.num_frames, info.height, info.width) == (T, H, W)
    assert info.fps == pytest.approx(25.0)
    video = read_video(path)
    assert video.shape == (T, H, W, 3)
    assert psnr(video, frames) > bound


def test_mkv_frame_count_comes_from_packets_not_decoding(monkeypatch, other_video):
    path, _ = other_video
    with av.open(str(path)) as container:
        header_frames = container.streams.video[0].frames
    monkeypatch.setattr(video_io, "_iter_video_frames", lambda *a, **k: pytest.fail("probe decoded"))
    assert probe(path).num_frames == T
    if path.suffix in (".mkv", ".webm"):
        assert header_frames == 0  # so the packet-counting fallback is what found the 16


def test_chunks_equal_full_read(other_video):
    path, _ = other_video
    chunks = list(iter_chunks(path, chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), read_video(path))


def test_start_and_count(mp4):
    full = read_video(mp4)
    np.testing.assert_array_equal(read_video(mp4, start=3, count=5), full[3:8])
    chunks = list(iter_chunks(mp4, chunk_size=4, start=6, count=7))
    assert [len(c) for c in chunks] == [4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), full[6:13])
    # like a slice, a count past the end gives the frames there are
    np.testing.assert_array_equal(read_video(mp4, start=12, count=100), full[12:])


def test_read_frames_any_order_with_repeats(other_video):
    path, _ = other_video
    full = read_video(path)
    indices = [9, 2, 15, 2, 0]
    np.testing.assert_array_equal(read_frames(path, indices), full[indices])


def test_grayscale_video_becomes_rgb(tmp_path, frames):
    path = tmp_path / "gray.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "gray"
        for frame in frames[:3, :, :, 0]:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode(None))
    video = read_video(path)
    assert video.shape == (3, H, W, 3)
    np.testing.assert_array_equal(video[..., 0], video[..., 1])
    np.testing.assert_array_equal(video[..., 0], video[..., 2])
    # gray -> rgb24 goes through studio range and back: within a couple of levels
    assert np.abs(video[..., 0].astype(int) - frames[:3, :, :, 0]).max() <= 2


# ------------------------------------------------------------------------------------------------
# writing


def test_write_mp4_streams_frames_and_chunks(tmp_path, frames):
    path = tmp_path / "stream.mp4"
    pieces = iter([frames[0], frames[1:5], frames[5], frames[6:]])  # single frames and chunks
    assert write_mp4(path, pieces, crf=0) == T
    assert probe(path).num_frames == T
    assert psnr(read_video(path), frames) > 45.0


def test_write_mp4_pads_odd_sizes_by_edge_replication(tmp_path):
    odd = make_frames(4, 47, 63)
    path = tmp_path / "odd.mp4"
    write_mp4(path, odd, crf=0)
    info = probe(path)
    assert (info.height, info.width) == (48, 64)
    video = read_video(path)
    assert psnr(video[:, :47, :63], odd) > 45.0  # 50.3 dB measured
    # the extra row / column repeats the last one (up to codec error), it is not black
    assert np.abs(video[:, 47].astype(int) - video[:, 46].astype(int)).mean() < 3
    assert np.abs(video[:, :, 63].astype(int) - video[:, :, 62].astype(int)).mean() < 3


def test_write_mp4_creates_parent_folders(tmp_path, frames):
    path = tmp_path / "a" / "b" / "clip.mp4"
    write_mp4(path, frames[:2], preset="ultrafast")
    assert probe(path).num_frames == 2


def test_write_mp4_is_atomic_when_frames_fail_midway(tmp_path, frames):
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames[:3], crf=0)  # an earlier, good version of the file
    before = path.read_bytes()

    def broken():
        yield from frames[:5]
        raise RuntimeError("camera unplugged")

    with pytest.raises(RuntimeError, match="camera unplugged"):
        write_mp4(path, broken())
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]  # and no temporary file is left

    with pytest.raises(RuntimeError):
        write_mp4(tmp_path / "new.mp4", broken())
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]


def test_write_mp4_rejects_bad_frames_naming_the_path(tmp_path, frames):
    path = tmp_path / "bad.mp4"
    with pytest.raises(VideoWriteError, match=r"bad\.mp4.*uint8"):
        write_mp4(path, frames.astype(np.float32) / 255)
    with pytest.raises(VideoWriteError, match=r"bad\.mp4.*frame 3 is 24x64"):
        write_mp4(path, [frames[0], frames[1], frames[2], frames[3, :24]])
    with pytest.raises(VideoWriteError, match=r"bad\.mp4.*no frames"):
        write_mp4(path, [])
    with pytest.raises(VideoWriteError, match=r"bad\.mp4.*\(H, W, 3\)"):
        write_mp4(path, frames[..., :2])
    with pytest.raises(ValueError, match="crf"):
        write_mp4(path, frames, crf=60)
    with pytest.raises(ValueError, match="preset"):
        write_mp4(path, frames, preset="warp9")
    assert os.listdir(tmp_path) == []


def test_unwritable_output_is_a_clear_error(tmp_path, frames):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    path = blocker / "clip.mp4"
    with pytest.raises(VideoWriteError, match=r"not_a_folder"):
        write_mp4(path, frames[:2])
    with pytest.raises(VideoWriteError, match=r"not_a_folder"):
        write_png_folder(blocker / "frames", frames[:2])
    (tmp_path / "taken.mp4").mkdir()  # a folder already holds the name
    with pytest.raises(VideoWriteError, match=r"taken\.mp4"):
        write_mp4(tmp_path / "taken.mp4", frames[:2])
    assert sorted(os.listdir(tmp_path)) == ["not_a_folder", "taken.mp4"]
    assert os.listdir(tmp_path / "taken.mp4") == []


def test_errors_from_the_callers_frames_pass_through_unchanged(tmp_path, frames):
    def source():
        yield frames[0]
        raise FileNotFoundError("the source video went away")

    with pytest.raises(FileNotFoundError, match="source video went away"):
        write_mp4(tmp_path / "out.mp4", source())
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# frame folders


def test_png_folder_round_trip_is_exact(tmp_path, frames):
    folder = tmp_path / "000"
    assert write_png_folder(folder, frames) == T
    names = sorted(os.listdir(folder))
    assert names == [f"{i:08d}.png" for i in range(T)]  # the REDS layout
    assert probe(folder) == VideoInfo(path=str(folder), num_frames=T, fps=25.0, height=H, width=W)
    assert probe(folder, fps=60.0).fps == 60.0
    np.testing.assert_array_equal(read_video(folder), frames)
    np.testing.assert_array_equal(np.concatenate(list(iter_chunks(folder, chunk_size=7))), frames)
    np.testing.assert_array_equal(read_video(folder, start=4, count=3), frames[4:7])
    np.testing.assert_array_equal(read_frames(folder, [7, 1, 7]), frames[[7, 1, 7]])


def test_png_folder_start_index_and_digits(tmp_path, frames):
    write_png_folder(tmp_path, frames[:3], start_index=98, digits=3)
    assert sorted(os.listdir(tmp_path)) == ["098.png", "099.png", "100.png"]
    np.testing.assert_array_equal(read_video(tmp_path), frames[:3])


def test_png_folder_write_failing_midway_leaves_only_whole_frames(tmp_path, frames):
    def broken():
        yield frames[:2]
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_png_folder(tmp_path, broken())
    assert sorted(os.listdir(tmp_path)) == ["00000000.png", "00000001.png"]
    np.testing.assert_array_equal(read_video(tmp_path), frames[:2])


def test_read_frames_opens_only_requested_files(tmp_path, frames):
    write_png_folder(tmp_path, frames[:4])
    (tmp_path / "00000002.png").write_bytes(b"garbage")  # never opened for [3, 0]
    np.testing.assert_array_equal(read_frames(tmp_path, [3, 0]), frames[[3, 0]])


def test_natural_sort_order(tmp_path):
    assert sorted(["im10", "im2", "IM1", "im1b"], key=natural_key) == ["IM1", "im1b", "im2", "im10"]
    for value, name in [(10, "im10.png"), (2, "im2.png"), (1, "im1.jpg"), (0, "im0.bmp")]:
        Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".im5.tmp.png").write_bytes(b"hidden temporaries are ignored")
    video = read_video(tmp_path)
    assert video[:, 0, 0, 0].tolist() == [0, 1, 2, 10]


def test_grayscale_16bit_palette_and_alpha_frames_become_rgb(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent: the colour underneath is kept, not blackened
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indexed = rng.integers(0, 256, (5, 7), dtype=np.uint8)

    Image.fromarray(gray).save(tmp_path / "a.png")
    Image.fromarray(gray16).save(tmp_path / "b.png")
    Image.fromarray(rgba).save(tmp_path / "c.png")
    p_image = Image.frombytes("P", (7, 5), indexed.tobytes())
    p_image.putpalette(palette.tobytes())
    p_image.save(tmp_path / "d.png")
    modes = []
    for name in ("a.png", "b.png", "c.png", "d.png"):
        with Image.open(tmp_path / name) as image:
            modes.append(image.mode)
    assert modes[0] == "L" and modes[1].startswith("I;16") and modes[2:] == ["RGBA", "P"]  # real sources

    video = read_video(tmp_path)
    assert video.shape == (4, 5, 7, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video[0], np.repeat(gray[..., None], 3, axis=2))
    expected16 = np.rint(gray16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(video[1], np.repeat(expected16[..., None], 3, axis=2))
    np.testing.assert_array_equal(video[2], rgba[..., :3])
    np.testing.assert_array_equal(video[3], palette[indexed])


# ------------------------------------------------------------------------------------------------
# read errors: always a VideoReadError that names the path


def probe_and_read_refuse(path: Path, message: str) -> None:
    """probe and read_video both refuse `path` with a VideoReadError matching `message`."""
    for call in (probe, read_video):
        with pytest.raises(VideoReadError, match=message):
            call(path)


def test_missing_path(tmp_path):
    path = tmp_path / "nope.mp4"
    for call in (probe, read_video, lambda p: read_frames(p, [0]), lambda p: next(iter_chunks(p))):
        with pytest.raises(VideoReadError, match=r"nope\.mp4.*no such file"):
            call(path)


def test_random_bytes_are_not_a_video(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoReadError, match=r"noise\.mp4.*corrupt"):
        probe(path)
    with pytest.raises(VideoReadError, match=r"noise\.mp4"):
        read_video(path)


def test_truncated_mp4(tmp_path, mp4):
    path = tmp_path / "half.mp4"
    path.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    with pytest.raises(VideoReadError, match=r"half\.mp4"):
        read_video(path)


def zero_frames(path: Path) -> None:
    """A video stream opened and closed without a frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        container.start_encoding()


def audio_only(path: Path) -> None:
    """A file of sound, with no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize(
    ("name", "write", "message"),
    [
        ("empty.mkv", Path.touch, r"empty\.mkv.*empty"),
        ("zero.avi", zero_frames, r"zero\.avi.*no frames"),
        ("sound.mka", audio_only, r"sound\.mka.*no video stream"),
    ],
    ids=["empty-file", "zero-frames", "no-video-stream"],
)
def test_file_without_a_video_frame(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    probe_and_read_refuse(path, message)


def test_empty_folder(tmp_path):
    with pytest.raises(VideoReadError, match=rf"{tmp_path.name}.*no frames"):
        probe(tmp_path)
    (tmp_path / "readme.txt").write_text("not a frame")
    with pytest.raises(VideoReadError, match=rf"{tmp_path.name}.*no frames"):
        read_video(tmp_path)


def test_folder_with_mixed_sizes_names_the_file_and_both_sizes(tmp_path, frames):
    write_png_folder(tmp_path, frames[:3])
    Image.fromarray(frames[3, :40, :50]).save(tmp_path / "00000003.png")
    probe_and_read_refuse(tmp_path, r"00000003\.png.*40x50.*00000000\.png.*48x64")


def test_corrupt_frame_in_folder(tmp_path, frames):
    write_png_folder(tmp_path, frames[:2])
    (tmp_path / "00000001.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(VideoReadError, match=r"00000001\.png"):
        read_video(tmp_path)


def test_index_out_of_range_names_the_file_and_count(mp4, tmp_path, frames):
    with pytest.raises(VideoReadError, match=rf"{mp4.name}.*index {T}.*{T} frames"):
        read_frames(mp4, [0, T])
    with pytest.raises(VideoReadError, match=rf"{mp4.name}.*index -1.*{T} frames"):
        read_frames(mp4, [-1])
    with pytest.raises(VideoReadError, match=rf"{mp4.name}.*start={T}.*{T} frames"):
        read_video(mp4, start=T)
    write_png_folder(tmp_path, frames[:3])
    with pytest.raises(VideoReadError, match=r"index 5.*3 frames"):
        read_frames(tmp_path, [5])


# ------------------------------------------------------------------------------------------------
# simulated codec artefacts


def test_h264_roundtrip_shape_and_quality_falls_with_crf(frames):
    odd = make_frames(8, 47, 63, seed=3)
    quality = []
    for crf in (0, 18, 30, 45):
        out = h264_roundtrip(odd, crf=crf)
        assert out.shape == odd.shape and out.dtype == np.uint8
        quality.append(psnr(out, odd))
    assert quality[0] > 45.0  # measured 50.3, 41.0, 34.3, 26.8 dB
    assert quality == sorted(quality, reverse=True) and len(set(quality)) == 4, quality
    assert quality[-1] < quality[0] - 6  # crf 45 is visibly worse, not a rounding difference


def test_h264_roundtrip_rejects_bad_input(frames):
    with pytest.raises(ValueError, match="uint8"):
        h264_roundtrip(frames.astype(np.float32), crf=20)
    with pytest.raises(ValueError, match="crf"):
        h264_roundtrip(frames, crf=-1)
