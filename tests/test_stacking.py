"""Adapters the way LoRA users use them: a strength, several adapter files stacked with the
hypernetwork's adapter on top (naive or with a learned merge), and a domain adapter fitted over
a folder of videos with a held-out part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hypernet.data.video_io import read_video, to_tensor, write_mp4, write_png_folder
from hypernet.finetune import main as finetune_main
from hypernet.models.base import WindowVSR
from hypernet.models.lora import (
    HYPERNET_PREFIX,
    delta_weight,
    find_targets,
    init_adapters,
    load_adapters,
    load_merge_columns,
    save_adapters,
    stack_adapters,
)
from hypernet.specialise import main as specialise_main
from hypernet.specialise import specialise
from hypernet.systems.hyper_lora import load_hypernet
from hypernet.upscale import upscale_frames
from tests.helpers import FPS, HEIGHT, WIDTH, moving_texture, one_line_error


def random_adapter(checkpoint: Path, path: Path, *, layers: slice, seed: int) -> Path:
    """An adapter file for the checkpoint's base on some of its target layers, B non-zero."""
    base = load_hypernet(checkpoint).base
    spec = find_targets(base, rank=2)
    spec = type(spec)(targets=spec.targets[layers], base_num_params=spec.base_num_params)
    generator = torch.Generator().manual_seed(seed)
    adapters = init_adapters(spec, generator=generator)
    adapters = {k: (a, torch.randn(b.shape, generator=generator) * 0.05) for k, (a, b) in adapters.items()}
    save_adapters(path, spec, adapters, base=base, video=0)
    return path


def frames_of(path: Path) -> np.ndarray:
    return read_video(path).astype(np.int16)


# ----------------------------------------------------------------------------------------------
# the library: stacking is the sum of the deltas


def test_stack_is_the_weighted_sum_of_the_deltas():
    torch.manual_seed(0)
    base = WindowVSR(channels=8, num_blocks=2, upsampler="direct")
    spec = find_targets(base, rank=2)
    first = type(spec)(targets=spec.targets[:3], base_num_params=spec.base_num_params)
    wide = find_targets(base, rank=4)
    second = type(spec)(targets=wide.targets[1:], base_num_params=spec.base_num_params)
    g = torch.Generator().manual_seed(1)
    a1 = {
        k: (a, torch.randn(b.shape, generator=g)) for k, (a, b) in init_adapters(first, generator=g).items()
    }
    a2 = {
        k: (a, torch.randn(b.shape, generator=g)) for k, (a, b) in init_adapters(second, generator=g).items()
    }
    columns = {t.name: torch.rand(t.out_features, generator=g) for t in second.targets}
    stacked_spec, stacked = stack_adapters([(first, a1), (second, a2)], weights=[0.5, columns])
    assert set(stacked_spec.names) == set(first.names) | set(second.names)
    for t in stacked_spec.targets:
        by_hand = torch.zeros_like(delta_weight(t, *(x[0] for x in stacked[t.name])))
        if t.name in first.names:
            by_hand += 0.5 * delta_weight(first[t.name], *(x[0] for x in a1[t.name]))
        if t.name in second.names:
            d = delta_weight(second[t.name], *(x[0] for x in a2[t.name]))
            by_hand += columns[t.name].view(-1, *([1] * (d.ndim - 1))) * d
        torch.testing.assert_close(delta_weight(t, *(x[0] for x in stacked[t.name])), by_hand)


def test_stack_refuses_two_geometries_of_one_layer_naming_both():
    base = WindowVSR(channels=8, num_blocks=1, upsampler="direct")
    other = WindowVSR(channels=6, num_blocks=1, upsampler="direct")
    spec, spec_other = find_targets(base, rank=2), find_targets(other, rank=2)
    with pytest.raises(ValueError, match=r"domain\.safetensors and style\.safetensors cannot be stacked"):
        stack_adapters(
            [(spec_other, init_adapters(spec_other)), (spec, init_adapters(spec))],
            names=["style.safetensors", "domain.safetensors"],
        )


# ----------------------------------------------------------------------------------------------
# specialise: strength and stacking


def test_strength_zero_is_the_base_and_one_is_today(gated_checkpoint, video, tmp_path):
    run = {"checkpoint": gated_checkpoint, "crf": 0, "progress": False}
    specialise(video, tmp_path / "base.mp4", base_only=True, **run)
    specialise(video, tmp_path / "zero.mp4", strength=0.0, **run)
    specialise(video, tmp_path / "today.mp4", guard=False, **run)  # as trained
    specialise(video, tmp_path / "one.mp4", strength=1.0, **run)
    specialise(video, tmp_path / "half.mp4", strength=0.5, **run)
    base, zero = frames_of(tmp_path / "base.mp4"), frames_of(tmp_path / "zero.mp4")
    today, one, half = (frames_of(tmp_path / f"{n}.mp4") for n in ("today", "one", "half"))
    assert np.array_equal(zero, base)  # frame for frame
    assert np.array_equal(one, today)
    assert np.abs(today - base).mean() > 1.0  # the adapters do change the picture
    assert 0 < np.abs(half - base).mean() < np.abs(today - base).mean()


def test_stacked_files_equal_their_deltas_merged_by_hand(gated_checkpoint, video, tmp_path):
    first = random_adapter(gated_checkpoint, tmp_path / "domain.safetensors", layers=slice(0, 3), seed=1)
    second = random_adapter(gated_checkpoint, tmp_path / "style.safetensors", layers=slice(2, None), seed=2)
    out = tmp_path / "stacked.mp4"
    figures = specialise(
        video,
        out,
        checkpoint=gated_checkpoint,
        adapters=[f"{first}:0.5", second],
        hypernet=False,
        guard=False,
        crf=0,
        progress=False,
    )
    assert figures["mode"] == "adapter"
    # by hand: each file's scaling * B @ A at its strength, added to the base's weights
    base = load_hypernet(gated_checkpoint).base
    with torch.no_grad():
        for path, strength in ((first, 0.5), (second, 1.0)):
            spec, adapters, _ = load_adapters(path)
            for t in spec.targets:
                layer = base.get_submodule(t.name)
                layer.weight += strength * delta_weight(t, adapters[t.name][0][0], adapters[t.name][1][0])
    by_hand = tmp_path / "by_hand.mp4"
    write_mp4(by_hand, upscale_frames(base, [read_video(video)], overlap=2), fps=FPS, crf=0)
    assert np.abs(frames_of(out) - frames_of(by_hand)).max() <= 1  # float rounding of the sum at most


def test_hypernet_on_top_equals_stacking_its_saved_adapter(gated_checkpoint, video, tmp_path):
    domain = random_adapter(gated_checkpoint, tmp_path / "domain.safetensors", layers=slice(None), seed=3)
    run = {"checkpoint": gated_checkpoint, "crf": 0, "progress": False, "guard": False}
    saved = tmp_path / "predicted.safetensors"
    on_top = specialise(video, tmp_path / "on_top.mp4", adapters=[domain], save_adapter=saved, **run)
    assert on_top["mode"] == "adapter+hypernet"
    specialise(video, tmp_path / "files.mp4", adapters=[domain, saved], hypernet=False, **run)
    specialise(video, tmp_path / "domain.mp4", adapters=[domain], hypernet=False, **run)
    on_top_frames, files = frames_of(tmp_path / "on_top.mp4"), frames_of(tmp_path / "files.mp4")
    assert np.abs(on_top_frames - files).max() <= 1
    assert np.abs(on_top_frames - frames_of(tmp_path / "domain.mp4")).mean() > 0.5  # the hypernet adds


@pytest.mark.parametrize(
    "options, names",
    [
        (["--strength", "-1"], ["--strength", "-1"]),
        (["--strength", "nan"], ["--strength", "nan"]),
        (["--adapter", "{first}:-2"], ["--adapter", "domain.safetensors:-2", ">= 0"]),
        (["--adapter", "{first}:abc"], ["--adapter", "'abc'", "number"]),
        (["--adapter", "{first}", "--adapter", "{other}"], ["other_base.safetensors", "different base"]),
        (["--no-hypernet"], ["--no-hypernet", "--adapter"]),
        (["--base-only", "--strength", "0.5"], ["--base-only", "--strength"]),
        (["--adapter", "{first}", "--no-hypernet", "--save-adapter", "{out_adapter}"], ["--save-adapter"]),
    ],
)
def test_bad_stacking_options_are_one_line_and_write_nothing(
    options, names, gated_checkpoint, video, tmp_path, capsys
):
    first = random_adapter(gated_checkpoint, tmp_path / "domain.safetensors", layers=slice(None), seed=1)
    other_base = WindowVSR(channels=6, num_blocks=1, upsampler="direct")
    other_spec = find_targets(other_base, rank=2)
    other = tmp_path / "other_base.safetensors"
    save_adapters(other, other_spec, init_adapters(other_spec), base=other_base, video=0)
    out = tmp_path / "out" / "sr.mp4"
    paths = {"first": first, "other": other, "out_adapter": tmp_path / "out" / "a.safetensors"}
    argv = [str(video), "-o", str(out), "--checkpoint", str(gated_checkpoint), "--no-progress"]
    argv += [o.format(**paths) for o in options]
    with pytest.raises(SystemExit) as exit_info:
        specialise_main(argv)
    assert exit_info.value.code == 2
    one_line_error(capsys, *names)
    assert not out.parent.exists() or not any(out.parent.iterdir())


# ----------------------------------------------------------------------------------------------
# finetune over a folder of videos: held-out part, learned merge, errors


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> Path:
    """A folder of 5 HR frame folders and their LR (x4 smaller) frame folders, named alike."""
    root = tmp_path_factory.mktemp("domain")
    for i in range(5):
        hr = moving_texture(6, 4 * HEIGHT, 4 * WIDTH, seed=10 + i)
        write_png_folder(root / "hr" / f"clip{i}", hr)
        small = torch.nn.functional.avg_pool2d(to_tensor(hr)[0], 4)
        write_png_folder(root / "lr" / f"clip{i}", (small.permute(0, 2, 3, 1) * 255).round().byte().numpy())
    return root


def test_finetune_on_a_folder_holds_out_videos_and_learns_the_merge(checkpoint, domain, tmp_path, capsys):
    out = tmp_path / "domain.safetensors"
    argv = ["--hr", str(domain / "hr"), "--lr", str(domain / "lr"), "-o", str(out)]
    argv += ["--checkpoint", str(checkpoint), "--steps", "4", "--val-every", "2", "--clips", "2"]
    argv += ["--clip-len", "3", "--merge-steps", "2", "--no-progress"]
    assert finetune_main(argv) == 0
    summary = dict(item.split("=", 1) for item in capsys.readouterr().out.split())
    assert (summary["videos"], summary["held_out"]) == ("4", "1")  # a fifth of 5 held out
    assert float(summary["val_psnr"]) >= float(summary["val_psnr_base"])  # the best, the base included
    assert float(summary["val_psnr_learned_merge"]) >= float(summary["val_psnr_naive_merge"])
    system = load_hypernet(checkpoint)
    spec, _, metadata = load_adapters(out, base=system.base)
    assert metadata["videos"] == "4"
    columns = load_merge_columns(out)
    assert set(columns) == set(spec.names) | {HYPERNET_PREFIX + n for n in system.spec.names}
    from hypernet.adapters import info

    text = info(out)  # what made the file, and that it carries a merge
    assert "videos 4" in text and "held_out 1" in text and "best_step" in text and "\nmerge " in text


def test_finetune_held_out_videos_given_explicitly(checkpoint, domain, tmp_path, capsys):
    out = tmp_path / "domain.safetensors"
    argv = ["--hr", str(domain / "hr"), "--lr", str(domain / "lr"), "-o", str(out)]
    argv += ["--val-hr", str(domain / "hr" / "clip4"), "--val-lr", str(domain / "lr" / "clip4")]
    argv += [
        "--checkpoint",
        str(checkpoint),
        *["--steps", "2", "--clips", "1", "--clip-len", "2", "--no-progress"],
    ]
    assert finetune_main(argv) == 0
    summary = dict(item.split("=", 1) for item in capsys.readouterr().out.split())
    assert (summary["videos"], summary["held_out"]) == ("5", "1") and "val_psnr" in summary


def test_finetune_streams_a_folder_of_mp4_hr_videos(checkpoint, tmp_path, capsys):
    for i in range(3):
        write_mp4(
            tmp_path / "hr" / f"v{i}.mp4", moving_texture(6, 4 * HEIGHT, 4 * WIDTH, seed=i), fps=FPS, crf=5
        )
    out = tmp_path / "a.safetensors"
    argv = ["--hr", str(tmp_path / "hr"), "-o", str(out), "--checkpoint", str(checkpoint)]
    argv += ["--steps", "2", "--clips", "1", "--clip-len", "2", "--val-videos", "0", "--no-progress"]
    assert finetune_main(argv) == 0 and out.is_file()
    assert "videos=3 held_out=0" in capsys.readouterr().out


def test_finetune_domain_errors_name_the_file_and_write_nothing(checkpoint, domain, tmp_path, capsys):
    out = tmp_path / "out" / "a.safetensors"
    common = ["-o", str(out), "--checkpoint", str(checkpoint), "--steps", "1", "--no-progress"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no videos here")
    odd = tmp_path / "odd"
    write_png_folder(odd / "clip", moving_texture(4, 4 * HEIGHT + 2, 4 * WIDTH, seed=1))
    cases = [
        (["--hr", str(tmp_path / "empty")], ["--hr", "empty", "holds no video"]),
        (["--hr", str(odd)], ["--hr", "clip", "divisible by the scale 4"]),
        (
            ["--hr", str(domain / "hr"), "--lr", str(domain / "lr" / "clip0")],
            ["--hr names 5 videos", "--lr 1"],
        ),
        (["--hr", str(domain / "hr"), "--val-videos", "5"], ["--val-videos 5", "no training video"]),
        (["--hr", str(domain / "hr"), "--init-from-hypernet"], ["--init-from-hypernet", "one video"]),
        (["--lr", str(domain / "lr"), "--merge-steps", "3"], ["--merge-steps", "--hr"]),
        (
            ["--hr", str(domain / "hr"), "--val-hr", str(odd), "--val-videos", "1"],
            ["--val-videos", "--val-hr"],
        ),
        (["--hr", str(domain / "hr"), "--val-lr", str(domain / "lr")], ["--val-lr with --lr"]),
    ]
    for argv, names in cases:
        assert finetune_main(argv + common) == 2, argv
        one_line_error(capsys, *names)
        assert not out.exists()
