"""Video reading and writing through PyAV: the one place where pixels enter and leave the project.

Everything above this layer sees frames as numpy ``uint8`` RGB arrays shaped ``(T, H, W, 3)``
("t h w c"). A "video" is either a file that FFmpeg can decode (mp4, mkv, avi, webm, ...) or a
folder of still frames (png / jpg / jpeg / bmp, in natural order of their names, the REDS layout).

Why it looks the way it does:

- Decoding is streamed: :func:`iter_chunks` decodes frame by frame and yields every ``chunk_size``
  frames, so a two-hour film never sits in memory. :func:`read_video` and :func:`read_frames` are
  built on the same frame generator, so there is one place that decodes.
- Frame-accurate access decodes sequentially from the first frame (no seeking): seeking lands on
  key frames and timestamps lie in many real files, and the project needs exact frame indices
  more than it needs fast random access.
- Every read problem is a :class:`VideoReadError` naming the path and what is wrong, never a
  stack trace from inside FFmpeg; every write problem is a :class:`VideoWriteError`.
- A file cut short (a download or copy that stopped half-way) decodes without complaint into a
  shorter video, so the frames found are compared with the frames the container announces:
  fewer is a :class:`VideoReadError` naming both counts, or with ``allow_truncated=True`` a
  :class:`TruncatedVideoWarning`. Containers that store a frame count (mp4, mov, avi) are
  compared when a stream reaches its end (or up front with ``probe(verify=True)``), since the
  header alone cannot tell; Matroska / WebM, which store a duration instead, are compared by
  time in :func:`probe`, which counts their packets anyway, and at the end of a stream. Other
  containers announce nothing reliable, and nothing is compared.
- Writes are atomic: frames are encoded into a hidden temporary file in the destination folder
  that is renamed over the final name only when complete, so a crash or a bad frame never leaves
  a truncated video behind under the real name.
- :func:`write_mp4` and :func:`h264_roundtrip` configure their H.264 stream through the same
  function, so the codec artefacts the degradation pipeline simulates are exactly those of the
  videos the project writes.

Layout: `folders` (frame folders, image files, the videos of a folder), `decode` (probe and the
streamed reads), `truncation` (files cut short), `encode` (mp4, PNG folders, the H.264 round
trip), `tensors` (frames <-> tensors), `errors`. Every public name is imported from here,
`hypernet.data.video_io`.
"""

import av.logging

from hypernet.data.video_io.decode import (
    DEFAULT_FOLDER_FPS,
    VideoInfo,
    iter_chunks,
    probe,
    read_frames,
    read_video,
)
from hypernet.data.video_io.encode import (
    X264_PRESETS,
    add_h264_stream,
    h264_roundtrip,
    write_mp4,
    write_png_folder,
)
from hypernet.data.video_io.errors import PathLike, TruncatedVideoWarning, VideoReadError, VideoWriteError
from hypernet.data.video_io.folders import (
    FRAME_EXTENSIONS,
    VIDEO_SUFFIXES,
    expand_videos,
    image_to_rgb,
    list_frame_files,
    list_videos,
    natural_key,
    read_image,
)
from hypernet.data.video_io.tensors import to_tensor, to_uint8

# FFmpeg prints a line for every damaged packet and libx264 its statistics at the end of every
# encode. PyAV's level ``None`` drops them all; we pin it explicitly because the errors raised
# here already carry the path and the reason. To debug a codec problem, call
# ``av.logging.set_level(av.logging.VERBOSE)`` after importing this module.
av.logging.set_level(None)

__all__ = [
    "DEFAULT_FOLDER_FPS",
    "FRAME_EXTENSIONS",
    "VIDEO_SUFFIXES",
    "X264_PRESETS",
    "PathLike",
    "TruncatedVideoWarning",
    "VideoInfo",
    "VideoReadError",
    "VideoWriteError",
    "add_h264_stream",
    "expand_videos",
    "h264_roundtrip",
    "image_to_rgb",
    "iter_chunks",
    "list_frame_files",
    "list_videos",
    "natural_key",
    "probe",
    "read_frames",
    "read_image",
    "read_video",
    "to_tensor",
    "to_uint8",
    "write_mp4",
    "write_png_folder",
]
