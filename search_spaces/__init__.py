"""What a student can look like: search spaces sampled from Optuna trials, built as HF models."""

from search_spaces._decoder import FAMILIES, DecoderArch, DecoderSpace, build_config, build_model
from search_spaces._encoder import EncoderArch, EncoderSpace, build_encoder, build_encoder_config
from search_spaces._init import (
    bert_importance,
    decoder_importance,
    init_bert_from_teacher,
    init_decoder_from_teacher,
    init_seq2seq_from_teacher,
    kept_channels,
    layer_map,
    pick_layers,
    seq2seq_importance,
)
from search_spaces._seq2seq import (
    SEQ2SEQ_FAMILIES,
    Seq2SeqArch,
    Seq2SeqSpace,
    build_seq2seq,
    build_seq2seq_config,
    target_vocab,
    teacher_shape,
)
from search_spaces._weights import ModuleWeights, SafetensorsWeights, safetensors_files

__all__ = [
    "FAMILIES",
    "SEQ2SEQ_FAMILIES",
    "ModuleWeights",
    "SafetensorsWeights",
    "DecoderArch",
    "DecoderSpace",
    "EncoderArch",
    "EncoderSpace",
    "Seq2SeqArch",
    "Seq2SeqSpace",
    "bert_importance",
    "build_config",
    "build_encoder",
    "build_encoder_config",
    "build_model",
    "build_seq2seq",
    "build_seq2seq_config",
    "decoder_importance",
    "init_bert_from_teacher",
    "init_decoder_from_teacher",
    "init_seq2seq_from_teacher",
    "kept_channels",
    "layer_map",
    "pick_layers",
    "safetensors_files",
    "seq2seq_importance",
    "target_vocab",
    "teacher_shape",
]
