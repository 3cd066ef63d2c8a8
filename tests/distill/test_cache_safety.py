"""The teacher cache on a shared machine: its key follows the teacher's and the data's files,
and two runs preparing it at once build it once."""

import shutil
import subprocess
import sys
import threading
import time

from safetensors.torch import load_file, save_file

from distill import DataConfig, LossConfig, TeacherConfig, prepare
from distill.tasks import get_task
from tests.conftest import write_spec

LOSS = LossConfig({"forward_kl": 1.0}, {"temperature": 1.0, "top_k": 4})


def _data() -> DataConfig:
    return DataConfig(source="json", files=("docs.jsonl",), text_column="body", block_length=32, train_blocks=8, eval_blocks=4)


def test_the_key_follows_files_changed_in_place(tmp_path, teacher_dirs):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dirs["gpt2"], teacher)
    write_spec(tmp_path, teacher)
    args = dict(base_dir=tmp_path, cache_root=tmp_path / "cache")
    task, cfg = get_task("causal-lm"), TeacherConfig(model="./teacher")
    first = prepare(task, cfg, _data(), LOSS, **args)
    assert prepare(task, cfg, _data(), LOSS, **args).path == first.path
    docs = tmp_path / "docs.jsonl"
    docs.write_text(docs.read_text().replace("the", "a"))  # the same file, edited in place
    edited = prepare(task, cfg, _data(), LOSS, **args)
    assert edited.path != first.path
    weights = load_file(teacher / "model.safetensors")
    save_file({k: v * 1.01 for k, v in weights.items()}, teacher / "model.safetensors", {"format": "pt"})
    retrained = prepare(task, cfg, _data(), LOSS, **args)  # new weights in the same folder
    assert retrained.path not in (first.path, edited.path)
    assert not (retrained.array("eval_teacher_logprobs") == edited.array("eval_teacher_logprobs")).all()


PREPARE = """
import sys, time, logging
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s")
from distill import DataConfig, LossConfig, TeacherConfig, prepare
from distill.tasks import get_task
folder = Path(sys.argv[1])
data = DataConfig(source="json", files=("docs.jsonl",), text_column="body", block_length=32, train_blocks=8, eval_blocks=4)
def hold(config):  # the build goes on until the test says: the two runs overlap
    while not (folder / "release").exists():
        time.sleep(0.05)
out = prepare(get_task("causal-lm"), TeacherConfig(model=sys.argv[2]), data,
              LossConfig({"forward_kl": 1.0}, {"temperature": 1.0, "top_k": 4}),
              base_dir=folder, cache_root=folder / "cache", check=hold)
print(out.path)
"""


def test_two_runs_at_once_build_the_cache_once(tmp_path, teacher_dirs):
    write_spec(tmp_path, teacher_dirs["gpt2"])
    args = [sys.executable, "-c", PREPARE, str(tmp_path), str(teacher_dirs["gpt2"])]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / "locks").glob("cache-*.lock.holder")) and time.time() < deadline:
        time.sleep(0.05)  # the first holds the cache's lock
    second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(120, (tmp_path / "release").touch)  # never hang: a second build waits in `hold` too
    guard.start()
    waiting = ""
    while "waiting for the teacher cache being built" not in waiting and second.poll() is None:
        waiting += second.stderr.readline()
    (tmp_path / "release").touch()
    runs = [first, second]
    outs = [r.communicate(timeout=300) for r in runs]
    guard.cancel()
    outs[1] = (outs[1][0], waiting + outs[1][1])
    assert all(r.returncode == 0 for r in runs), outs
    assert outs[0][0] == outs[1][0]  # one cache folder
    logs = outs[0][1] + outs[1][1]
    assert logs.count("teacher outputs cached in") == 1, logs
    assert "waiting for the teacher cache being built, held by pid" in logs, logs
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [outs[0][0].strip().rsplit("/", 1)[1]]
