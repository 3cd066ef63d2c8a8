"""How a student learns from a teacher: data, teacher cache, losses, the loop, evaluation."""

from distill.data import DataConfig
from distill.evaluate import evaluate_lm, param_counts, size_metrics
from distill.loop import DistillConfig, FullConfig, TeacherTargets, TrainResult, distill
from distill.losses import next_token_ce, topk_kd_loss
from distill.teacher_cache import PreparedData, prepare
from distill.teachers import TeacherConfig, TeacherTraining, load_teacher

__all__ = [
    "DataConfig",
    "DistillConfig",
    "FullConfig",
    "PreparedData",
    "TeacherConfig",
    "TeacherTargets",
    "TeacherTraining",
    "TrainResult",
    "distill",
    "evaluate_lm",
    "load_teacher",
    "next_token_ce",
    "param_counts",
    "prepare",
    "size_metrics",
    "topk_kd_loss",
]
