"""The contract every task keeps, as one suite each task's test module runs (as Optuna's
samplers and storages run theirs): on a tiny teacher built from a config, a task prepares the
study's data and teacher outputs, checks a search space against the teacher, builds a student,
takes loss steps with every loss term it allows, evaluates and measures it with its declared
metrics, and exports a folder that the ecosystem's own loader opens in a process that does not
import this project.

A test module subclasses `TaskContract` (`Test...`) with a class-scoped `setup` fixture giving a
`TaskSetup` per task; the tests of parts a task does not have (on-policy batches, a next-token
distribution, stacks of layers) skip for it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from distill import (
    Budget,
    CachedTeacher,
    LiveTeacher,
    LossConfig,
    TeacherConfig,
    WeightedTeacher,
    make_loss,
    prepare,
    runtime,
    train,
)
from distill.errors import InputError
from distill.objective import allowed_terms
from distill.tasks import Task
from distill.tasks.base import scores_and_text
from distill.teacher_outputs import ALIGNED_GROUPS

CPU = torch.device("cpu")


@dataclasses.dataclass(frozen=True)
class TaskSetup:
    """A task on a tiny teacher, as the contract runs it."""

    task: Task
    teacher: Path
    """the teacher's folder (save_pretrained)"""
    data: Any
    """the `[data]` section, of `task.data_config`"""
    fits: Any
    """a `[space]` whose every architecture the teacher allows, init = teacher among them"""
    too_big: Any
    """a `[space]` the teacher does not allow"""
    teacher_shaped: dict[str, Any]
    """an architecture of the teacher's own shape, sliced from it"""
    base_dir: Path
    """the folder the data's files are relative to"""


def _arch(space, seed=0):
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    return space.sample(trial)


class TaskContract:
    """The contract's tests, over the `TaskSetup` the `setup` fixture gives; the study (its
    data and teacher outputs prepared, every term the task allows at weight 1) is prepared once
    per setup."""

    @pytest.fixture(scope="class")
    def setup(self) -> TaskSetup:
        raise NotImplementedError("a test module gives its tasks' setups")

    @pytest.fixture(scope="class")
    def study(self, setup):
        task = setup.task
        loss = LossConfig(dict.fromkeys(allowed_terms(task), 1.0), dataclasses.asdict(task.loss_params()))
        data = prepare(
            task,
            TeacherConfig(model=str(setup.teacher)),
            setup.data,
            loss,
            base_dir=setup.base_dir,
            cache_root=setup.base_dir / "cache",
            check=lambda config: task.check_space(setup.fits, config),
        )
        return task, data, loss, setup.fits, setup.too_big

    def test_declarations_are_consistent(self, study):
        task, data, loss, *_ = study
        assert isinstance(task, Task)
        fields = {f.name for f in dataclasses.fields(task.data_config)}
        assert set(task.eval_keys) <= fields and task.eval_limit in fields | {""}
        assert "source" in task.eval_keys  # an [[eval]] table must name where its examples come from
        kinds = [m.kind for m in task.metrics]
        assert kinds == sorted(kinds, key=["quality", "size"].index) and "quality" in kinds and "size" in kinds
        assert all(m.direction in ("min", "max") and m.format(1.5) != "-" and m.label for m in task.metrics)
        assert set(task.default_weights) <= set(allowed_terms(task))
        assert set(task.eval_outputs) <= set(task.outputs)
        assert "{path}" in task.card.usage
        assert "params" in {m.name for m in task.metrics}  # --max-params, size ratios and cards read it
        # a flag says that the task has the part: set exactly where the method is its own
        assert task.samples_on_policy == (type(task).on_policy_batch is not Task.on_policy_batch)
        assert task.trains_teacher == (type(task).train_teacher is not Task.train_teacher)

    def test_the_teacher_is_measured_with_every_declared_metric(self, study):
        task, data, *_ = study
        assert set(data.meta["teacher_metrics"]) == {m.name for m in task.metrics if not m.runtime}
        assert data.meta["task"] == task.name

    def test_a_space_larger_than_the_teacher_is_refused_up_front(self, study):
        task, data, _, fits, too_big = study
        task.check_space(fits, data.teacher_config())
        with pytest.raises(InputError, match=r"^space\.(layers|encoder_layers|heads|head_dim|ffn_ratio|init): "):
            task.check_space(too_big, data.teacher_config())

    def test_a_student_learns_with_every_allowed_term(self, study):
        task, data, loss, fits, _ = study
        for seed in range(3):  # students of several architectures, teacher-initialized or not
            arch = _arch(fits, seed)
            torch.manual_seed(0)
            student = task.build_student(arch, data, CPU)
            before = [p.detach().clone() for p in student.parameters()]
            teachers = [WeightedTeacher(CachedTeacher(data, loss.needs(), CPU))]
            loss_fn = make_loss(task, student, data, loss, teachers, CPU, arch=arch)
            result = train(student, Budget(steps=3, batch_size=4), loss_fn, task.lengths(data, "train"))
            assert len(result.losses) == 3 and all(np.isfinite(result.losses)), task.describe(arch)
            assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
            quality, text = scores_and_text(task.evaluate(student, data, "eval", CPU))
            if text is not None:  # what a generating task scored: one text per held-out item
                assert len(text) == data.meta["eval_items"] and all(isinstance(t, str) for t in text)
                assert (data.path / "eval_references.npy").exists()
            size = task.size(student, data, CPU)
            assert set(quality) == {m.name for m in task.metrics if m.kind == "quality" and not m.runtime}
            assert set(size) == {m.name for m in task.metrics if m.kind == "size" and not m.runtime}
            assert all(np.isfinite(v) for v in (*quality.values(), *size.values()))

    def test_a_student_of_the_teachers_shape_sliced_from_it_scores_as_the_teacher(self, study, setup):
        task, data, *_ = study
        student = task.build_student(setup.teacher_shaped, data, CPU)
        quality, _ = scores_and_text(task.evaluate(student, data, "eval", CPU))
        for name, value in quality.items():
            assert value == pytest.approx(data.meta["teacher_metrics"][name], abs=1e-4), name

    def test_parameter_counts_from_the_architecture_equal_the_built_students(self, study):
        task, data, _, fits, _ = study
        for seed in range(6):
            arch = _arch(fits, seed)
            counts = task.param_counts(arch, data)
            size = task.size(task.build_student(arch, data, CPU), data, CPU)
            assert counts == {k: size[k] for k in ("params", "non_embedding_params")}, task.describe(arch)

    def test_forward_gives_every_value_the_task_declares(self, study):
        task, data, loss, fits, _ = study
        student = task.build_student(_arch(fits), data, CPU)
        idx = np.arange(3)
        batch = task.batch(data, "train", idx, CPU)
        teacher = CachedTeacher(data, loss.needs(), CPU).outputs("train", idx, batch)  # every group the task computes
        out = task.forward(student, batch, set(task.values), teacher)
        assert set(task.values) <= set(out)

    def test_live_teacher_outputs_match_the_cached_ones(self, study):
        task, data, loss, fits, _ = study
        idx = np.array([0, 2, 5])
        batch = task.batch(data, "train", idx, CPU)
        cached = CachedTeacher(data, loss.needs(), CPU)
        live = LiveTeacher(task, task.load_teacher(data.teacher_source), loss.needs(), loss)
        a, b = cached.outputs("train", idx, batch), live.outputs("train", idx, batch)
        # a teacher of the student's tokenizer gives every group but those of one of another tokenizer
        assert set(a) == set(b) == {v for g in loss.needs() - ALIGNED_GROUPS for v in task.outputs[g]}
        for name in a:
            assert a[name].shape == b[name].shape, name
            if a[name].is_floating_point():  # the cache keeps float16 where the declared array says so
                torch.testing.assert_close(b[name].float(), a[name].float(), rtol=2e-3, atol=2e-3)
            else:  # token ids (top-k, generated sequences): the same, decoded as the study decodes
                assert torch.equal(b[name].long(), a[name].long()), name
        # several teachers are a weighted list: half the cache and half the live teacher is one teacher
        torch.manual_seed(0)
        arch = _arch(fits)
        student = task.build_student(arch, data, CPU).eval()  # no dropout: the same forward each time
        one = make_loss(task, student, data, loss, [WeightedTeacher(cached)], CPU, arch=arch)(idx)
        halves = [WeightedTeacher(cached, 0.25), WeightedTeacher(cached, 0.75)]
        split = make_loss(task, student, data, loss, halves, CPU, arch=arch)
        assert split(idx).item() == pytest.approx(one.item(), rel=1e-6)
        mixed = make_loss(task, student, data, loss, [WeightedTeacher(cached, 0.5), WeightedTeacher(live, 0.5)], CPU, arch=arch)
        assert mixed(idx).item() == pytest.approx(one.item(), rel=1e-2)  # the cache's float16 against full precision

    def test_the_export_loads_with_the_ecosystems_own_loader(self, study, tmp_path):
        task, data, loss, fits, _ = study
        torch.manual_seed(0)
        student = task.build_student(_arch(fits), data, CPU)
        folder = tmp_path / "export"
        folder.mkdir()
        task.export(student, data, folder)
        code = task.card.usage.format(path=folder) + "\nassert 'nas' not in sys.modules and 'distill' not in sys.modules\n"
        proc = subprocess.run(
            [sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not any(p.suffix == ".bin" for p in folder.rglob("*"))  # safetensors only

    def test_the_runtime_graphs_score_as_pytorch_and_run_without_the_project(self, study, tmp_path):
        """The ONNX graphs in fp32 give the PyTorch student's held-out scores; in int8 they run
        and are smaller; the speed metrics are measured; and the export's runtime files run
        with the card's snippet in a process that imports neither torch nor this project."""
        task, data, loss, fits, _ = study
        torch.manual_seed(0)
        student = task.build_student(_arch(fits, seed=1), data, CPU).eval()
        expected = scores_and_text(task.evaluate(student, data, "eval", CPU))[0]
        folder = tmp_path / "export"
        folder.mkdir()
        task.export(student, data, folder)
        files = runtime.export(task, student, data, folder / runtime.FOLDER)
        fp32 = runtime.sessions(files["fp32"], threads=1)
        got = scores_and_text(task.runtime_evaluate(fp32, data, "eval"))[0]
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-3, abs=1e-3), name
        measured = runtime.measure_files(task, files["int8"], data, "int8", threads=1)
        declared = {m.name for m in task.metrics if m.runtime == "int8"}
        assert set(measured) == declared
        assert all(np.isfinite(v) for v in measured.values())
        assert measured["runtime_int8_file_mb"] < runtime.files_mb(files["fp32"])
        for precision in ("", "_int8"):
            code = task.card.runtime_usage.format(path=folder, file=f"{precision}.onnx")
            code += "\nassert not {'torch', 'nas', 'distill'} & set(sys.modules)\n"
            proc = subprocess.run(
                [sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, cwd=tmp_path, timeout=300
            )
            assert proc.returncode == 0, proc.stderr[-3000:]

    def test_divergences_over_the_whole_vocabulary_from_a_live_teacher(self, study):
        """Every task that gives next-token logits: a live teacher's full logits, and its top k
        with k the whole vocabulary, give the same divergence."""
        task, data, loss, fits, _ = study
        if "logits" not in task.outputs:
            pytest.skip(f"{task.name} has no next-token distribution")
        vocab = data.teacher_config().vocab_size
        teacher = task.load_teacher(data.teacher_source)
        torch.manual_seed(0)
        student = task.build_student(_arch(fits), data, CPU).eval()
        idx = np.array([0, 1, 2])
        values = []
        for full in (True, False):
            params = {**dataclasses.asdict(task.loss_params()), "top_k": vocab, "full_vocabulary": full}
            live = LossConfig({"reverse_kl": 1.0, "jsd": 1.0, "tv": 1.0}, params, "live")
            assert live.needs() == ({"logits"} if full else {"topk"})
            provider = WeightedTeacher(LiveTeacher(task, teacher, live.needs(), live))
            values.append(make_loss(task, student, data, live, [provider], CPU)(idx).item())
        assert np.isfinite(values[0]) and values[0] == pytest.approx(values[1], rel=1e-4)

    def test_on_policy_batches_are_the_students_own_outputs_scored_by_a_live_teacher(self, study):
        from distill.losses import topk_kd_loss
        from distill.objective import on_policy_step
        from distill.teacher_outputs import on_policy_teacher

        task, data, _, fits, _ = study
        if not task.samples_on_policy:
            pytest.skip(f"{task.name} has no outputs of its own")
        torch.manual_seed(0)
        student = task.build_student(_arch(fits), data, CPU)
        idx = np.array([0, 1, 2, 3])
        batch = task.batch(data, "train", idx, CPU)
        torch.manual_seed(1)
        sampled = task.on_policy_batch(student, batch)
        assert student.training  # back to training after sampling
        assert set(sampled.inputs) == set(batch.inputs)
        changed = [k for k in batch.inputs if not torch.equal(sampled.inputs[k], batch.inputs[k])]
        assert changed, "the student's outputs are not the data"
        loss = LossConfig({"forward_kl": 1.0, "ce": 1.0}, dataclasses.asdict(task.loss_params()))
        live = on_policy_teacher(task, data, loss, CPU, 1.0)
        cached = [WeightedTeacher(CachedTeacher(data, loss.needs(), CPU))]
        # every batch on-policy: the forward KL to the live teacher on the student's own samples, no CE
        student.eval()  # the same forward pass each time (no dropout)
        torch.manual_seed(1)
        got = make_loss(task, student, data, loss, cached, CPU, on_policy=1.0, live=live)(idx)
        torch.manual_seed(1)
        again = task.on_policy_batch(student, batch)
        out = task.forward(student, again, {"student_logits", "mask"}, {})
        teacher = live.provider.outputs("train", idx, again)
        want = topk_kd_loss(out["student_logits"], teacher["teacher_logprobs"], teacher["teacher_indices"], loss.params["temperature"], out["mask"])
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
        off = make_loss(task, student, data, loss, cached, CPU)(idx)
        assert make_loss(task, student, data, loss, cached, CPU, on_policy=0.0, live=live)(idx).item() == off.item()
        # a fixed share of the batches, decided by the batch (a resumed run decides alike)
        draws = [on_policy_step(np.arange(i, i + 4), 0.3) for i in range(400)]
        assert 0.2 < np.mean(draws) < 0.4 and draws == [on_policy_step(np.arange(i, i + 4), 0.3) for i in range(400)]

    def test_a_resumed_run_with_projections_ends_with_the_same_weights_and_ships_none(self, study, tmp_path):
        """Intermediate-layer terms train projections with the student: they are checkpointed and
        resumed with it, and gone from the student when the run ends."""
        from distill.loop import TRAINING_STATE

        task, data, loss, fits, _ = study
        terms = {"hidden": 1.0, "hidden_cosine": 1.0, "attention": 1.0}
        if type(task).stacks is Task.stacks:  # a task that has stacks must allow these terms below
            pytest.skip(f"{task.name} has no stacks of layers")
        layers = LossConfig({**task.default_weights, **terms}, loss.params)
        teachers = [WeightedTeacher(CachedTeacher(data, layers.needs(), CPU))]
        arch = next(
            a for a in (_arch(fits, seed) for seed in range(50))
            if any(s.student_width != s.teacher_width for s in task.stacks(a, data).values())
        )  # fmt: skip
        budget = Budget(steps=4, batch_size=4, checkpoint_every=1)

        def run(folder, stop_after=None, resume=False):
            torch.manual_seed(0)
            student = task.build_student(arch, data, CPU)
            fn = make_loss(task, student, data, layers, teachers, CPU, arch=arch)
            calls = []

            def loss_fn(idx):
                calls.append(1)
                if stop_after is not None and len(calls) > stop_after:
                    raise KeyboardInterrupt  # killed after `stop_after` steps
                return fn(idx)

            try:
                train(student, budget, loss_fn, task.lengths(data, "train"), checkpoint_dir=folder, resume=resume)
            except KeyboardInterrupt:
                return None
            return student

        whole = run(tmp_path / "whole")
        assert run(tmp_path / "killed", stop_after=2) is None
        saved = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
        assert any(k.startswith(TRAINING_STATE) for k in saved)  # the projections are in the checkpoint
        resumed = run(tmp_path / "killed", resume=True)
        assert whole.state_dict().keys() == resumed.state_dict().keys()
        for name, value in whole.state_dict().items():
            assert torch.equal(value, resumed.state_dict()[name]), name
        assert not hasattr(whole, TRAINING_STATE) and not any(k.startswith(TRAINING_STATE) for k in whole.state_dict())

    def test_two_identical_teachers_equal_one(self, study):
        """Fixed weights (normalized) and a choice per token by confidence, over two copies of the
        study's teacher, give the loss of the teacher alone."""
        from distill.teacher_outputs import ChosenTeacher

        task, data, loss, fits, _ = study
        if "confidence" not in task.outputs:
            pytest.skip(f"{task.name} has no next-token distribution")
        torch.manual_seed(0)
        arch = _arch(fits)
        student = task.build_student(arch, data, CPU).eval()
        idx = np.array([0, 1, 2, 3])
        cached = CachedTeacher(data, loss.needs(), CPU)
        one = make_loss(task, student, data, loss, [WeightedTeacher(cached)], CPU, arch=arch)(idx).item()
        twice = LossConfig(loss.weights, loss.params, teacher_weights=(2.0, 2.0))
        pair = [WeightedTeacher(cached, w) for w in twice.weights_of_teachers(2)]
        assert make_loss(task, student, data, twice, pair, CPU, arch=arch)(idx).item() == pytest.approx(one, rel=1e-6)
        weights = {"forward_kl": 1.0, "ce": 1.0, "jsd": 1.0}
        alone = LossConfig(weights, loss.params, "live")
        teacher = task.load_teacher(data.teacher_source)
        single = make_loss(task, student, data, alone, [WeightedTeacher(LiveTeacher(task, teacher, alone.needs(), alone))], CPU)
        for rule in ("lowest_entropy", "lowest_loss"):
            chosen = LossConfig(weights, loss.params, "live", teacher_weights=(1.0, 1.0), combine=rule)
            live = LiveTeacher(task, teacher, chosen.needs(), chosen)
            both = make_loss(task, student, data, chosen, [WeightedTeacher(ChosenTeacher([live, live], rule))], CPU)
            assert both(idx).item() == pytest.approx(single(idx).item(), rel=1e-6), rule
