"""The memory benchmark (test/recurrence): videos whose wide shot's detail close-ups magnified at
least 4x show elsewhere in the video, and the controls that isolate memory."""

import csv

import numpy as np
import pytest
import torch

from hypernet import eval as evaluation
from hypernet.config import compose_config
from hypernet.data.datamodule import VSRDataModule
from hypernet.data.degrade import Degradation, degrade
from hypernet.data.recurrence import (
    RecurrenceError,
    crossscale_pairs,
    inside,
    recurrence_paths,
    view_corners,
)
from hypernet.systems.hyper_lora import fed_as_trained, load_hypernet

RECURRENCE_DATA = dict(
    test_source="stills", test_recurrence=2, hr_size=32, num_frames=15, clip_len=3, context_frames=3
)


@pytest.fixture(scope="module")
def recurrence_set():
    return VSRDataModule(**RECURRENCE_DATA).recurrence_set()


def test_view_geometry():
    assert inside((50, 50, 10, 0), (50, 50, 40, 0)) and not inside((68, 50, 10, 0), (50, 50, 40, 0))
    assert not inside((50, 50, 40, 0), (50, 50, 10, 0))
    # a square turned by 45 degrees reaches sqrt(2) times further along the axes
    corners = view_corners(0, 0, 2, 45)
    assert np.abs(corners).max() == pytest.approx(np.sqrt(2))
    assert inside((50, 50, 20, 45), (50, 50, 30, 0)) and not inside((50, 50, 24, 45), (50, 50, 30, 0))


def test_closeups_are_magnified_4x_and_inside_every_wide_frame(recurrence_set):
    videos = recurrence_set.videos
    kinds = {v.video_id.split("-")[1] for v in videos}
    assert len(videos) == 2 + 2 * 5 and {"0", "1", "chelsea", "coins", "gravel", "ihc", "rocket"} <= kinds
    for video in videos:
        wide = [video.camera(i) for i in video.wide_frames]
        close = [video.camera(i) for i in video.closeup_frames]
        assert len(close) == 4 * len(wide)  # four close-up shots as long as the wide one
        assert min(w[2] for w in wide) / max(c[2] for c in close) >= 4.0
        assert max(c[2] for c in close) >= video.hr_size[0]  # never finer than the source's pixels
        assert all(inside(c, w) for c in close for w in wide), video.video_id
        # the close-ups look at different spots of the wide view
        centres = np.array([c[:2] for c in close])
        assert np.ptp(centres, axis=0).max() > 0.2 * wide[0][2]


def test_the_scored_clip_is_in_the_wide_shot_and_the_base_never_sees_a_closeup(recurrence_set):
    for index, video in enumerate(recurrence_set.videos[:3]):
        item = recurrence_set[index]
        clip = range(item["start"], item["start"] + item["lr"].shape[0])
        assert set(clip) <= set(video.wide_frames)
        assert torch.equal(item["hr"], video.hr_frames(list(clip))[..., :32, :32])
        # the context spans the whole video, close-ups included
        times = (item["context_times"] * (video.num_frames - 1)).round().long().tolist()
        assert set(times) & set(video.closeup_frames)


def test_every_video_gets_the_same_degradation(recurrence_set):
    numbers = {tuple(recurrence_set[i]["degradation"].tolist()) for i in range(len(recurrence_set.videos))}
    assert len(numbers) == 1
    scale, blur, noise, crf = numbers.pop()
    assert scale == 4 and blur > 0 and noise > 0 and crf == -1


def test_removing_the_closeups_changes_what_the_encoder_reads_and_nothing_else(recurrence_set):
    video, item = recurrence_set.videos[0], recurrence_set[0]
    without = item["context_without_closeups"]
    assert without.shape == item["context"].shape
    times = (item["context_without_closeups_times"] * (video.num_frames - 1)).round().long().tolist()
    assert set(times) <= set(video.wide_frames)
    # those frames are the video's LR frames, degraded as the context is
    every = recurrence_set.every_frame(0)
    assert torch.equal(without, every[times])
    assert torch.equal(
        item["context"], every[(item["context_times"] * (video.num_frames - 1)).round().long()]
    )


def test_crossscale_pairs_are_the_closeups_degraded_once_more(recurrence_set):
    item = recurrence_set[0]
    inputs, targets = crossscale_pairs(item["closeups"], item["degradation"], clip_len=3)
    assert targets.shape == (4, 3, 3, 8, 8) and inputs.shape == (4, 3, 3, 2, 2)
    assert torch.equal(targets.flatten(0, 1), item["closeups"])
    scale, blur, noise, _ = item["degradation"].tolist()
    expected = degrade(
        item["closeups"], Degradation(scale=int(scale), blur_sigma=blur, noise_sigma=noise, crf=None, seed=0)
    )
    assert torch.equal(inputs.flatten(0, 1), expected)


def test_a_source_too_small_for_the_zoom_says_so():
    with pytest.raises(RecurrenceError, match=r"too small for a 4x zoom at frame size 96.*at least"):
        recurrence_paths(np.random.default_rng(0), image_size=(300, 451), frame_size=96)
    recurrence_paths(np.random.default_rng(0), image_size=(451, 451), frame_size=96)  # large enough


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            dict(num_frames=14),
            r"data.test_recurrence: recurrence videos of 5 shots need data.num_frames >= 15",
        ),
        (
            dict(
                num_frames=14,
                test_recurrence=0,
                source={"procedural": 1, "recurrence": 1},
                val_source="procedural",
            ),
            r"data.source: recurrence videos of 5 shots need data.num_frames >= 15",
        ),
        (dict(val_source="recurrence"), r"data.val_source=recurrence: recurrence draws training videos"),
        (dict(source="recurrence", val_source=None), r"data.source=recurrence draws training videos only"),
        (dict(test_source=None), r"data.test_recurrence=2 scores a test group, and data.test_source is null"),
        (
            dict(hr_size=640, num_frames=15, test_recurrence=1),
            r"data.hr_size=640 \(the recurrence test group\): .* at most 512 .* data.test_recurrence_hr",
        ),
        (  # the test group's own size fits, the training videos' does not
            dict(
                hr_size=640,
                num_frames=15,
                test_recurrence_hr=192,
                source={"procedural": 1, "recurrence": 1},
                val_source="procedural",
            ),
            r"data.hr_size=640 \(recurrence training videos\): .* at most 512",
        ),
        (dict(test_recurrence=-1), r"data.test_recurrence=-1"),
        (dict(test_recurrence_hr=34), r"data.test_recurrence_hr=34 must be divisible by data.scale=4"),
        (dict(test_recurrence_hr=1024), r"data.test_recurrence_hr=1024 .* at most 512"),
        (dict(test_recurrence_hr=8), r"data.test_recurrence_hr=8"),
        (dict(val_recurrence=-1), r"data.val_recurrence=-1"),
        (
            dict(val_recurrence=1, num_frames=14, test_recurrence=0),
            r"data.val_recurrence: .* data.num_frames >= 15",
        ),
        (
            dict(val_recurrence=1, hr_size=640, test_recurrence=0),
            r"data.hr_size=640 \(data.val_recurrence=1\): .* at most 512",
        ),
    ],
)
def test_bad_recurrence_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        VSRDataModule(**{**RECURRENCE_DATA, **options}).recurrence_set()


def test_eval_reports_the_memory_controls(gated_checkpoint, tmp_path):
    methods = "[base,hypernet,hypernet_other,hypernet_without_closeups,crossscale,oracle]"
    overrides = [
        "data.hr_size=32",
        "data.num_frames=15",
        "data.clip_len=3",
        "data.val_videos_per_image=1",
        "data.test_recurrence=1",
        f"methods={methods}",
        "oracle_steps=3",
        "crossscale_steps=3",
        f"checkpoint={gated_checkpoint}",
        f"paths.output_dir={tmp_path}",
    ]
    summary = evaluation.run(compose_config("eval", overrides))
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    recurrence = [r for r in rows if r["group"] == "recurrence"]
    assert len(recurrence) == 11 * 6  # 1 scene + 2 videos of each of 5 photos, every method
    single = {r["method"] for r in rows if r["group"] == "single"}
    assert single == {"base", "hypernet", "hypernet_other", "oracle"}  # the close-up controls need close-ups
    for key in (
        "hypernet_gain_y",
        "own_over_other_gain_y",
        "own_over_without_closeups_gain_y",
        "own_over_without_closeups_gain_y_stderr",
        "crossscale_gain_y",
        "crossscale_time_over_hypernet",
    ):
        assert f"test/recurrence/{key}" in summary, key
    assert "test/own_over_other_gain_y" in summary and "test/own_over_without_closeups_gain_y" not in summary
    by = {(r["video_id"], r["method"]): float(r["psnr_y"]) for r in recurrence}
    own = [by[(v, "hypernet")] - by[(v, "hypernet_without_closeups")] for v, m in by if m == "base"]
    assert summary["test/recurrence/own_over_without_closeups_gain_y"] == pytest.approx(
        np.mean(own), abs=1e-3
    )
    text = (tmp_path / "results.md").read_text()
    assert "memory (test/recurrence" in text and "| recurrence | " in text


def test_the_without_closeups_control_is_the_hypernet_reading_another_context(gated_checkpoint):
    system = load_hypernet(gated_checkpoint)
    overrides = ["data.hr_size=32", "data.num_frames=15", "data.clip_len=3", "data.test_recurrence=1"]
    cfg = fed_as_trained(
        compose_config("eval", [*overrides, "methods=[base,hypernet,hypernet_without_closeups]"]), system
    )
    from hypernet.data.datamodule import check_data

    item = check_data(cfg, stages=("test",)).test_sets["recurrence"][0]
    rows, _, _, _ = evaluation.evaluate_video(system, item, cfg)
    psnr = {r["method"]: r["psnr_y"] for r in rows}
    swapped = {
        **item,
        "context": item["context_without_closeups"],
        "context_times": item["context_without_closeups_times"],
    }
    swapped_rows, _, _, _ = evaluation.evaluate_video(system, swapped, cfg)
    again = {r["method"]: r["psnr_y"] for r in swapped_rows}
    assert again["base"] == psnr["base"]
    assert again["hypernet"] == pytest.approx(psnr["hypernet_without_closeups"], abs=1e-9)
    assert psnr["hypernet"] != psnr["hypernet_without_closeups"]  # the close-ups change the adapters


def test_eval_takes_the_refine_steps_it_is_given(stepping_checkpoint, gated_checkpoint, tmp_path):
    """refine_steps=N: a stepping model takes N steps at inference (its step sizes as trained); 0 is
    its generator's adapters alone. A model that takes no steps, or a count below 0, is refused by
    name before anything is written."""
    overrides = ["data.hr_size=32", "data.num_frames=15", "data.clip_len=3", "data.test_recurrence=1"]

    def prepared(checkpoint, *more):
        cfg = compose_config(
            "eval", [*overrides, f"checkpoint={checkpoint}", f"paths.output_dir={tmp_path / 'eval'}", *more]
        )
        return evaluation.prepare(cfg)

    _, as_trained, groups = prepared(stepping_checkpoint)
    _, none, _ = prepared(stepping_checkpoint, "refine_steps=0")
    _, one, _ = prepared(stepping_checkpoint, "refine_steps=1")
    assert (as_trained.refine.steps, none.refine.steps, one.refine.steps) == (2, 0, 1)
    item = groups["recurrence"][0]
    context = item["context"][None]
    generated = none.generated_adapters(context, item["context_times"][None], item["degradation"][None])
    made = {n: s.adapters_for_item(item) for n, s in (("0", none), ("1", one), ("2", as_trained))}
    for name, (a, b) in generated.items():
        assert torch.equal(made["0"][name][0], a) and torch.equal(made["0"][name][1], b)
    assert not all(
        torch.equal(made["1"][n][1], made["2"][n][1]) for n in generated
    )  # the second step moves them
    with pytest.raises(ValueError, match=r"refine_steps=2: .*refine.mode=direct and takes no refine steps"):
        prepared(gated_checkpoint, "refine_steps=2")
    with pytest.raises(ValueError, match=r"refine_steps=-1 must be null .* or an int >= 0"):
        prepared(stepping_checkpoint, "refine_steps=-1")
    assert not (tmp_path / "eval").exists()


def test_every_stage2_test_reports_the_recurrence_group(gated_checkpoint):
    import lightning as L

    system = load_hypernet(gated_checkpoint)
    datamodule = VSRDataModule(**{**RECURRENCE_DATA, "test_recurrence": 1, "val_batch_size": 4})
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    logged = {
        k: v
        for results in trainer.test(system, datamodule=datamodule, verbose=False)
        for k, v in results.items()
    }
    for key in (
        "gain_y",
        "own_over_shuffled_y",
        "psnr_y_without_closeups",
        "closeups_over_without_y",
        "videos_improved_by_closeups",
    ):
        assert f"test/recurrence/{key}" in logged, key
    assert "test/psnr_y_without_closeups" not in logged  # the main group has no close-ups to remove


@pytest.mark.parametrize("anchor", ["hypernet.refine.direct_weight=1.0", "hypernet.refine.split=true"])
def test_stage2_trains_on_recurrence_videos_with_both_mechanisms(tiny_checkpoints, tmp_path, anchor):
    """hyper_memory's parts end to end, tiny: recurrence videos in the training mix, spatial
    tokens, refine steps on the close-ups (their generated adapters also scored before the steps,
    or the steps moving half of each layer's rank), the recurrence group scored after training."""
    import json
    import math

    from tests.helpers import train_tiny_hyper

    train_tiny_hyper(
        tiny_checkpoints["base"],
        tmp_path / "memory",
        "data.source={procedural: 0.5, recurrence: 0.5}",
        "data.val_source=procedural",
        "data.num_frames=15",
        "data.test_recurrence=1",
        "data.val_recurrence=1",
        "data.test_source=procedural",
        "hypernet.encoder.grid=2",
        "hypernet.refine.mode=crossscale",
        anchor,
        "trainer.log_every_n_steps=1",
    )
    with open(tmp_path / "memory" / "val_videos.csv") as f:  # selection saw a recurrence video
        assert "recurrence-val0" in {row["video_id"] for row in csv.DictReader(f)}
    # with direct_weight the generated adapters of the videos with close-ups were scored before the steps too
    (logged,) = (tmp_path / "memory" / "csv").glob("*/metrics.csv")
    with open(logged) as f:
        before = [
            float(r["train/loss_before_steps"]) for r in csv.DictReader(f) if r.get("train/loss_before_steps")
        ]
    assert all(math.isfinite(v) and v > 0 for v in before) and bool(before) == ("direct_weight" in anchor)
    metrics = json.loads((tmp_path / "memory" / "metrics.json").read_text())
    for key in ("gain_y", "closeups_over_without_y", "own_over_shuffled_y"):
        assert f"test/recurrence/{key}" in metrics, key
    state = torch.load(tmp_path / "memory" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert "refine.log_blur" in state and "encoder.tokenizer.cell_embedding" in state
    if "split" in anchor:  # the trained model: a video without close-ups gets the first half alone
        from tests.helpers import tiny_batch

        system = load_hypernet(tmp_path / "memory" / "checkpoints" / "last.ckpt")
        batch = tiny_batch()
        with torch.no_grad():
            adapters = system.adapters_for(batch["context"], batch["context_times"])
        assert system.refine.split and all(not b[..., b.shape[-1] // 2 :].any() for _, b in adapters.values())
        assert any(b[..., : b.shape[-1] // 2].any() for _, b in adapters.values())


def test_validation_holds_recurrence_videos_read_as_training_reads_them():
    """data.val_recurrence adds recurrence videos of other seeds than the test group's to the
    validation videos, at data.hr_size: their items hold what training items hold (close-ups marked,
    no control frames), so they batch with the procedural scenes' items."""
    options = {**RECURRENCE_DATA, "val_source": "procedural", "val_procedural_videos": 2}
    assert len(VSRDataModule(**options).build_val_set()) == 2
    datamodule = VSRDataModule(**options, val_recurrence=2)
    val_set = datamodule.build_val_set()
    ids = [v.video_id for v in val_set.videos]
    assert ids == ["procedural-val-0", "procedural-val-1", "recurrence-val0", "recurrence-val1"]
    assert not set(ids) & {v.video_id for v in datamodule.recurrence_videos()}
    assert val_set.videos[-1].hr_size == (32, 32)
    batch = next(iter(torch.utils.data.DataLoader(val_set, batch_size=4)))
    assert batch["lr"].shape[0] == 4 and "closeups" not in batch and "context_without_closeups" not in batch
    assert not batch["context_closeup"][:2].any() and batch["context_closeup"][2:].any(dim=1).all()


def test_the_group_has_its_own_frame_size_and_keeps_the_photos_that_fit():
    datamodule = VSRDataModule(**{**RECURRENCE_DATA, "test_recurrence": 1, "test_recurrence_hr": 96})
    videos = datamodule.recurrence_videos()
    assert {v.hr_size for v in videos} == {(96, 96)}
    # at HR 96 the zoom needs a short side of about 420 pixels: gravel, ihc and rocket have it
    assert sorted({v.video_id.split("-")[1] for v in videos}) == ["0", "gravel", "ihc", "rocket"]
    larger = VSRDataModule(**{**RECURRENCE_DATA, "test_recurrence": 1, "test_recurrence_hr": 192})
    assert [v.video_id for v in larger.recurrence_videos()] == ["recurrence-0"]  # no photo is large enough


def test_training_photographs_smaller_than_the_frame_are_left_out():
    """At HR 192 two built-in training photographs (page, text) are too small for a frame: the
    stills source draws from the other twelve instead of failing mid-run; none large enough is
    one error naming data.hr_size."""
    train = VSRDataModule(source="stills", val_source="procedural", hr_size=192).build_train_set()
    names = {p.name for p in train.image_paths}
    assert len(names) == 12 and not names & {"page.png", "text.png"}
    assert train[0]["hr"].shape[-1] == 192
    with pytest.raises(ValueError, match=r"data.hr_size=2048: no training photograph is that large"):
        VSRDataModule(source="stills", val_source="procedural", hr_size=2048).build_train_set()


def test_a_stage1_item_of_the_group_has_no_context_to_remove_closeups_from():
    item = VSRDataModule(**{**RECURRENCE_DATA, "context_frames": 0}).recurrence_set()[0]
    assert item["context"].shape[0] == 0 and "context_without_closeups" not in item
    assert item["closeups"].shape[0] == 4 * 3  # the internal-learning reference still has its pairs
