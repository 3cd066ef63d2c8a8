"""What a student can look like: search spaces sampled from Optuna trials, built as HF models."""

from search_spaces._decoder import FAMILIES, DecoderArch, DecoderSpace, build_config, build_model
from search_spaces._encoder import EncoderArch, EncoderSpace, build_encoder, build_encoder_config
from search_spaces._init import (
    bert_importance,
    decoder_importance,
    init_bert_from_teacher,
    init_decoder_from_teacher,
    kept_channels,
    layer_map,
    pick_layers,
)

__all__ = [
    "FAMILIES",
    "DecoderArch",
    "DecoderSpace",
    "EncoderArch",
    "EncoderSpace",
    "bert_importance",
    "build_config",
    "build_encoder",
    "build_encoder_config",
    "build_model",
    "decoder_importance",
    "init_bert_from_teacher",
    "init_decoder_from_teacher",
    "kept_channels",
    "layer_map",
    "pick_layers",
]
