"""hypernet: per-video LoRA prediction for video super-resolution."""

__version__ = "0.1.0"
