"""Write a domain's videos to disk: camera paths over three parts of one photograph with no
pixel in common (the top of its left half for the videos a domain adapter is fitted on, the
bottom of its left half for the videos held out to choose its best step and merge, its right
half for the videos it is tested on), all with one fixed degradation (the domain's camera), as
PNG frame folders:

    OUT/train/hr/<id>/00000000.png ...   OUT/train/lr/<id>/...   (fitting)
    OUT/val/hr/<id>/...                  OUT/val/lr/<id>/...     (held out by the fit)
    OUT/test/hr/<id>/...                 OUT/test/lr/<id>/...    (the study's test videos)

    .venv/bin/python scripts/make_domain_videos.py --photo ihc -o outputs/domain_adapter/videos

The same arguments write the same files (every video is seeded from its split and index).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hypernet.data import video_io
from hypernet.data.camera import StillsVideo, builtin_images, image_pyramid, load_image
from hypernet.data.datasets import stable_seed
from hypernet.data.degrade import Degradation, degrade


def write_split(out: Path, image, *, split: str, count: int, args: argparse.Namespace, photo: str) -> None:
    pyramid = image_pyramid(image)
    for index in range(count):
        seed = stable_seed("domain", photo, split, args.seed, index)
        video = StillsVideo(
            image_path=f"{photo}-{split}",
            seed=seed,
            num_frames=args.frames,
            frame_size=args.hr_size,
            pyramid=pyramid,
        )
        hr = video.hr_frames(list(range(args.frames)))
        d = Degradation(
            scale=args.scale, blur_sigma=args.blur, noise_sigma=args.noise / 255, crf=None, seed=seed
        )
        lr = degrade(hr, d)
        name = f"{split}{index:03d}"
        video_io.write_png_folder(out / split / "hr" / name, video_io.to_uint8(hr[None]))
        video_io.write_png_folder(out / split / "lr" / name, video_io.to_uint8(lr[None]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="ihc", help="a held-out built-in photograph (camera.BUILTIN_VAL)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--train", type=int, default=16, help="videos from the top of the left half")
    parser.add_argument("--val", type=int, default=4, help="videos from the bottom of the left half")
    parser.add_argument("--test", type=int, default=12, help="videos from the right half")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--hr-size", type=int, default=96)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument(
        "--blur", type=float, default=1.5, help="the domain's Gaussian blur sigma (HR pixels)"
    )
    parser.add_argument("--noise", type=float, default=3.0, help="the domain's noise sigma (of 255)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = next((p for p in builtin_images("val") if p.stem == args.photo), None)
    if path is None:
        raise SystemExit(f"error: --photo {args.photo}: not a held-out built-in photograph")
    image = load_image(path)
    half, rows = image.shape[-1] // 2, image.shape[-2]
    top = rows - max(args.hr_size * 2, rows * 3 // 8)  # the held-out strip: at least two frames tall
    parts = {
        "train": (image[..., :top, :half], args.train),
        "val": (image[..., top:, :half], args.val),
        "test": (image[..., half:], args.test),
    }
    for split, (part, count) in parts.items():
        write_split(args.output, part, split=split, count=count, args=args, photo=args.photo)
    print(
        f"{args.output}: {args.train} fitting, {args.val} held-out and {args.test} test videos of {path.name}"
    )


if __name__ == "__main__":
    main()
