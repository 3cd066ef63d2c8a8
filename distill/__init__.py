"""How a student learns from a teacher: data, the teacher cache, losses, the loop, evaluation,
and the tasks (`distill.tasks`) that put them together."""

from distill.cache import PreparedData, prepare
from distill.data import DataConfig
from distill.loop import Budget, TrainResult, train
from distill.objective import LossConfig, make_loss
from distill.teacher_outputs import CachedTeacher, LiveTeacher, TeacherOutputs, WeightedTeacher, study_teachers
from distill.teachers import TeacherConfig, TeacherSource, TeacherTraining, teacher_source

__all__ = [
    "Budget",
    "CachedTeacher",
    "DataConfig",
    "LiveTeacher",
    "LossConfig",
    "PreparedData",
    "TeacherConfig",
    "TeacherOutputs",
    "TeacherSource",
    "TeacherTraining",
    "TrainResult",
    "WeightedTeacher",
    "make_loss",
    "prepare",
    "study_teachers",
    "teacher_source",
    "train",
]
