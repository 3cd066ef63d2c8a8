"""What a student can look like: search spaces sampled from Optuna trials, built as HF models."""

from search_spaces._decoder import FAMILIES, DecoderArch, DecoderSpace, build_config, build_model

__all__ = ["FAMILIES", "DecoderArch", "DecoderSpace", "build_config", "build_model"]
