"""`python -m hypernet.data.preview`: a PNG contact sheet of built-in videos, so a person can
look at the data before training on it. Each video gets two rows: HR frames across the whole
video, and the same frames after its degradation (LR, shown enlarged with nearest neighbour so
the blur, noise and pixel size stay visible), captioned with the degradation parameters."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from hypernet.data.camera import StillsVideo, builtin_images
from hypernet.data.datasets import DegradationConfig, spread_indices, stable_seed
from hypernet.files import atomic_write_bytes


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(n, C, H, W) in [0, 1] -> (H, n*W, C) uint8, frames side by side with a 4-pixel gap."""
    n, c, h, w = frames.shape
    gap = torch.ones(n, c, h, 4)
    row = torch.cat([frames, gap], dim=-1).permute(1, 2, 0, 3).reshape(c, h, n * (w + 4))[..., :-4]
    return (row.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def contact_sheet(
    *, num_videos: int = 4, frames_per_video: int = 6, hr_size: int = 96, num_frames: int = 30, seed: int = 0
) -> Image.Image:
    degradation = DegradationConfig(mode="random", scale=4)
    images = builtin_images("val")
    rows: list[tuple[str, np.ndarray]] = []
    for v in range(num_videos):
        video_seed = stable_seed(seed, "preview", v) % (2**31)
        video = StillsVideo(
            image_path=images[v % len(images)], seed=video_seed, num_frames=num_frames, frame_size=hr_size
        )
        indices = spread_indices(num_frames, frames_per_video, None)
        hr = video.hr_frames(indices)
        d = degradation.for_video(video_seed)
        lr = degradation.apply(hr, d, indices)
        lr_big = F.interpolate(lr, scale_factor=d.scale, mode="nearest")
        params = ", ".join(f"{k}={v:.3g}" for k, v in d.to_dict().items() if k != "seed")
        rows.append((f"{video.video_id}  HR frames {indices}", to_uint8(hr)))
        rows.append((f"LR x{d.scale}: {params}", to_uint8(lr_big)))
    caption_h, pad = 16, 6
    width = max(r.shape[1] for _, r in rows) + 2 * pad
    height = sum(r.shape[0] + caption_h + pad for _, r in rows) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    for caption, row in rows:
        draw.text((pad, y), caption, fill="black")
        y += caption_h
        sheet.paste(Image.fromarray(row), (pad, y))
        y += row.shape[0] + pad
    return sheet


def write_preview(path: str | Path, **kwargs) -> Path:
    import io

    path = Path(path)
    buffer = io.BytesIO()
    contact_sheet(**kwargs).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="outputs/preview.png", help="PNG to write")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_preview(args.output, num_videos=args.videos, frames_per_video=args.frames, seed=args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
