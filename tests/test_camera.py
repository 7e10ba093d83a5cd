import numpy as np
import pytest
import torch
from PIL import Image

from hypernet.data.camera import (
    BUILTIN_TRAIN,
    BUILTIN_VAL,
    StillsVideo,
    builtin_images,
    list_images,
    load_image,
    random_camera_path,
)


def test_builtin_photos_exist_and_splits_are_disjoint():
    train, val = builtin_images("train"), builtin_images("val")
    assert len(train) == len(BUILTIN_TRAIN) and len(val) == len(BUILTIN_VAL)
    assert not {p.name for p in train} & {p.name for p in val}
    assert all(p.is_file() for p in train + val)


def test_stills_video_is_deterministic_and_moves():
    path = builtin_images("val")[0]
    a = StillsVideo(image_path=path, seed=3, num_frames=20, frame_size=48)
    b = StillsVideo(image_path=path, seed=3, num_frames=20, frame_size=48)
    c = StillsVideo(image_path=path, seed=4, num_frames=20, frame_size=48)
    frames = a.hr_frames([0, 10, 19])
    assert frames.shape == (3, 3, 48, 48)
    assert frames.min() >= 0 and frames.max() <= 1
    assert torch.equal(frames, b.hr_frames([0, 10, 19]))
    assert not torch.allclose(frames, c.hr_frames([0, 10, 19]))
    # the camera moves: first and middle frame differ, consecutive frames are close (smooth path)
    assert (frames[0] - frames[1]).abs().mean() > 0.01
    consecutive = a.hr_frames([9, 10])
    assert (consecutive[0] - consecutive[1]).abs().mean() < (frames[0] - frames[1]).abs().mean()


def test_camera_path_zooms_in_and_out_and_stays_inside():
    rng = np.random.default_rng(0)
    for _ in range(50):
        path = random_camera_path(rng, image_size=(300, 400), frame_size=64)
        views = path.views
        assert views[0] == views[2] and views[1] != views[0]  # in then out, or out then in
        for t in np.linspace(0, 1, 11):
            cx, cy, view, _ = path.at(float(t))
            assert 64 * 0.9 <= view <= 300
            assert view / 2 <= cx <= 400 - view / 2 + 1e-6
            assert view / 2 <= cy <= 300 - view / 2 + 1e-6


def test_user_image_folder_and_conversions(tmp_path):
    rgba = np.zeros((80, 90, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.png")
    Image.fromarray(np.full((70, 70), 128, np.uint8), "L").save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    paths = list_images(tmp_path)
    assert [p.name for p in paths] == ["a.png", "b.png"]
    gray = load_image(paths[0])
    assert gray.shape == (3, 70, 70) and torch.allclose(gray[0], gray[2])
    assert load_image(paths[1]).shape == (3, 80, 90)
    video = StillsVideo(image_path=paths[1], seed=0, num_frames=4, frame_size=32)
    assert video.hr_frames([0, 3]).shape == (2, 3, 32, 32)


def test_bad_images_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        list_images(tmp_path / "missing-folder")
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(bad)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(small)
    with pytest.raises(ValueError, match="small.png.*smaller than the frame size"):
        StillsVideo(image_path=small, seed=0, num_frames=4, frame_size=32)
