"""The contract every registered task keeps (`tests/distill/task_contract.py`), each on a tiny
teacher built from a config. A new task adds its tiny setup to SETUPS and TEACHER_SHAPED."""

import pytest

from distill import DataConfig
from distill.tasks import TASKS
from distill.tasks.embedding import EmbeddingDataConfig
from distill.tasks.pairs import PairDataConfig
from search_spaces import DecoderSpace, EncoderSpace, Seq2SeqSpace
from tests.conftest import write_spec
from tests.distill.task_contract import TaskContract, TaskSetup

DATA = {"source": "json", "files": ("docs.jsonl",), "text_column": "body", "valid_blocks": 8, "eval_blocks": 16}

# Per task: the tiny teacher (a conftest fixture), data, a space that fits the teacher, one that does not.
SETUPS = {
    "causal-lm": (
        "llama",
        DataConfig(**DATA, block_length=32, train_blocks=32),
        DecoderSpace(
            families=("llama",), layers=(1, 2), heads=(2, 4), head_dim=(8,), ffn_ratio=(1.0, 2.0), init=("teacher", "random")
        ),
        DecoderSpace(families=("llama",), layers=(1, 3), heads=(2,), head_dim=(8,), init=("teacher",)),
    ),
    "embedding": (
        "sentence",
        EmbeddingDataConfig(**DATA, block_length=48, train_blocks=32),
        EncoderSpace(layers=(1, 2), heads=(2, 4), head_dim=(8,), init=("teacher", "random")),
        EncoderSpace(layers=(1, 2), heads=(16,), head_dim=(8,), init=("teacher",)),
    ),
    "translation": (
        "translation",
        PairDataConfig(package="pycountry", pair=("en", "de"), max_length=24, train_pairs=32, valid_pairs=8, eval_pairs=16),
        Seq2SeqSpace(
            families=("marian",), encoder_layers=(1, 2), decoder_layers=(1, 2), heads=(2, 4), head_dim=(8,), ffn_ratio=(1.0, 2.0),
            init=("teacher", "random"), layer_pick=("even", "every_other"),
        ),  # fmt: skip
        Seq2SeqSpace(families=("marian",), encoder_layers=(1, 3), heads=(2,), head_dim=(8,), init=("teacher",)),
    ),
}


def test_every_registered_task_has_a_setup_here():
    assert set(SETUPS) == set(TASKS)


# Students with the teacher's own shape, sliced from it: they must score as the teacher does.
TEACHER_SHAPED = {
    "causal-lm": {
        "family": "llama", "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 8, "ffn_ratio": 2.0,
        "tie_embeddings": False, "init": "teacher", "layer_pick": "even",
    },
    "embedding": {
        "family": "bert", "layers": 4, "heads": 8, "head_dim": 8, "ffn_ratio": 2.0, "init": "teacher", "layer_pick": "even",
    },
    "translation": {
        "family": "marian", "encoder_layers": 2, "decoder_layers": 2, "heads": 4, "head_dim": 8, "ffn_ratio": 2.0,
        "share_embeddings": True, "init": "teacher", "layer_pick": "even",
    },
}  # fmt: skip


class TestRegisteredTasks(TaskContract):
    @pytest.fixture(scope="class", params=sorted(TASKS))
    def setup(self, request, tmp_path_factory, teacher_dirs, sentence_teacher, translation_teacher):
        task = TASKS[request.param]
        teacher, data, fits, too_big = SETUPS[task.name]
        folder = tmp_path_factory.mktemp(task.name)
        write_spec(folder, folder)  # the documents file
        path = {"sentence": sentence_teacher, "translation": translation_teacher}.get(teacher) or teacher_dirs.get(teacher)
        return TaskSetup(task, path, data, fits, too_big, TEACHER_SHAPED[task.name], folder)
