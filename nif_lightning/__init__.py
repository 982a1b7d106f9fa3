"""nif_lightning: Lightning training for non-instructional fine-tuning."""

__version__ = "0.1.0"
