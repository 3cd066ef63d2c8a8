import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import InputError
from nas.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "studies").glob("*.toml"))


def test_the_shipped_specs_and_the_default():
    from nas.cli import DEFAULT_SPEC

    assert {"demo.toml", "demo-lm.toml", "demo-mt.toml"} <= {p.name for p in SHIPPED}
    assert DEFAULT_SPEC == "studies/demo.toml" and load_spec(ROOT / DEFAULT_SPEC).study.task == "embedding"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_spec_loads(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.out_dir == path.parent.resolve() / path.stem
    assert spec.storage_url.startswith("sqlite:///")
    assert spec.objectives.metrics


def test_overrides_are_typed_and_checked(tmp_path):
    spec = load_spec(
        ROOT / "studies/demo-lm.toml",
        ["study.trials=4", "brief.steps=50", "brief.lr=1e-3", "space.families=['llama']"],
    )
    assert (spec.study.trials, spec.brief.steps, spec.brief.lr, spec.space.families) == (4, 50, 1e-3, ("llama",))
    with pytest.raises(SpecError, match=r"^brief\.stepz: unknown key; allowed: .*steps"):
        load_spec(ROOT / "studies/demo-lm.toml", ["brief.stepz=3"])
    with pytest.raises(SpecError, match="section.key=value"):
        load_spec(ROOT / "studies/demo-lm.toml", ["steps=3"])


BAD = {
    "unknown key": ("[teacher]\nmodel='x'\n[study]\ntrails=3\n", r"study\.trails: unknown key; allowed: "),
    "unknown section": ("[teacher]\nmodel='x'\n[studdy]\n", r"studdy: unknown section; allowed: study"),
    "malformed": ("[teacher\nmodel='x'", r"^teacher: not valid TOML \(line 1, column 9\): Expected ']'"),
    "malformed value": ("[teacher]\nmodel='x'\n[study]\ntrials = 3 4\n", r"^study\.trials: not valid TOML \(line 4, column 12\)"),
    "empty space": ("[teacher]\nmodel='x'\n[space]\nlayers=[4, 2]\n", r"space\.layers: needs 1 <= min <= max"),
    "empty choices": ("[teacher]\nmodel='x'\n[space]\nheads=[]\n", r"space\.heads: needs at least one choice"),
    "wrong type": ("[teacher]\nmodel='x'\n[brief]\nsteps='many'\n", r"brief\.steps: must be int"),
    "no teacher": ("[study]\ntrials=2\n", r"teacher: required section"),
    "bad metric": (
        "[teacher]\nmodel='x'\n[objectives]\nquality=['bleu']\n",
        r"objectives\.quality: 'bleu' is not a metric of task causal-lm; allowed: perplexity, kl, top1_agreement",
    ),
    "bad gpus": ("[teacher]\nmodel='x'\n[resources]\ngpus=1.5\n", r"resources\.gpus: must be a fraction"),
    "bad precision": ("[teacher]\nmodel='x'\n[resources]\nprecision='fp16'\n", r"resources\.precision: must be one of 'auto', 'bf16', 'fp32'"),
    "workers of a brief run": ("[teacher]\nmodel='x'\n[brief]\nworkers=2\n", r"brief\.workers: each trial's brief run is one process"),
    "workers that split no batch": (
        "[teacher]\nmodel='x'\n[full]\nbatch_size=6\ngrad_accum=2\nworkers=2\n",
        r"full\.workers: must be >= 1 and workers x grad_accum \(2\) must divide batch_size \(6\), got 2",
    ),
    "nested": (
        "[teacher]\nmodel='./t'\n[teacher.train]\nhidden=100\nheads=3\n",
        r"teacher\.train\.hidden: must be a multiple of heads",
    ),
    "bad sampler": ("[teacher]\nmodel='x'\n[study]\nsampler='cmaes'\n", r"study\.sampler: .*tpe, nsga2, gp, random"),
    "bad constraint": (
        "[teacher]\nmodel='x'\n[constraints]\nflops=1e9\n",
        r"constraints\.flops: not a metric of task causal-lm; allowed: perplexity",
    ),
    "infinite constraint": (
        "[teacher]\nmodel='x'\n[constraints]\nparams=inf\n",
        r"constraints\.params: must be a finite number, got inf",
    ),
    "bad rungs": ("[teacher]\nmodel='x'\n[multi_fidelity]\nrungs=[0.5, 0.25]\n", r"multi_fidelity\.rungs: increasing"),
    "eval without name": ("[teacher]\nmodel='x'\n[[eval]]\nsource='pydoc-topics'\n", r"eval\[0\]\.name: required"),
    "eval twice": (
        "[teacher]\nmodel='x'\n[[eval]]\nname='a'\nsource='pydoc-topics'\n[[eval]]\nname='a'\nsource='pydoc-topics'\n",
        r"eval\[1\]\.name: 'a' is used",
    ),
    "on-policy share": ("[teacher]\nmodel='x'\n[full]\non_policy=1.5\n", r"full\.on_policy: a share of the batches, between 0 and 1"),
    "on-policy without a divergence": (
        "[teacher]\nmodel='x'\n[brief]\non_policy=0.5\n[loss]\nforward_kl=0.0\nce=1.0\n",
        r"brief\.on_policy: needs a divergence term that reads no reference in \[loss\]",
    ),
    "on-policy with self-evolution KD alone": (
        "[teacher]\nmodel='x'\n[brief]\non_policy=0.5\n[loss]\nforward_kl=0.0\nself_evolution_kd=1.0\n",
        r"brief\.on_policy: needs a divergence term that reads no reference",
    ),
    "on-policy with two teachers": (
        "[[teacher]]\nmodel='x'\n[[teacher]]\nmodel='y'\n[full]\non_policy=0.5\n",
        r"^full\.on_policy: on-policy batches are scored by one live teacher; the spec lists 2$",
    ),
    "on-policy embeddings": (
        "[study]\ntask='embedding'\n[teacher]\nmodel='x'\n[full]\non_policy=0.5\n",
        r"full\.on_policy: task embedding has no outputs of its own to learn from",
    ),
    "eval named eval": ("[teacher]\nmodel='x'\n[[eval]]\nname='eval'\nsource='pydoc-topics'\n", r"eval\[0\]\.name: 'eval' names the study's own"),
    "eval key": (
        "[teacher]\nmodel='x'\n[[eval]]\nname='a'\nsource='pydoc-topics'\nblock_length=8\n",
        r"eval\[0\]\.block_length: unknown key; allowed: name, source",
    ),
    "eval files": ("[teacher]\nmodel='x'\n[[eval]]\nname='a'\nsource='json'\n", r"eval\[0\]\.files: source 'json' needs"),
}


def test_eval_sets_take_the_rest_from_data(tmp_path):
    path = tmp_path / "evals.toml"
    path.write_text(
        "[teacher]\nmodel='x'\n[data]\nblock_length=64\neval_blocks=9\n"
        "[[eval]]\nname='mail'\nsource='json'\nfiles=['m.jsonl']\ntext_column='body'\n"
    )
    (only,) = load_spec(path).evals
    assert only.name == "mail" and only.data.files == ("m.jsonl",) and only.data.text_column == "body"
    assert only.data.block_length == 64 and only.data.eval_blocks == 0  # all of it unless the table says


@pytest.mark.parametrize("text, message", BAD.values(), ids=BAD.keys())
def test_bad_specs_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def _nas(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # `nas` in subprocesses
def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD["unknown key"][0])
    for args in (["search", str(path)], ["search", str(tmp_path / "missing.toml")], ["pareto", str(path)]):
        proc = _nas(*args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert "study.trails: unknown key" in _nas("search", str(path)).stderr


@pytest.mark.slow  # `nas` in subprocesses
def test_cli_missing_teacher_folder_and_missing_text_column(tmp_path, teacher_dirs):
    from tests.conftest import write_spec

    spec = write_spec(tmp_path, tmp_path / "no-such-teacher", name="noteacher")
    proc = _nas("search", str(spec))
    assert proc.returncode == 2 and "teacher.model: folder" in proc.stderr and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    spec = write_spec(tmp_path, teacher_dirs["gpt2"], name="nocolumn")
    proc = _nas("search", str(spec), "data.text_column='text'")
    assert proc.returncode == 2, proc.stderr
    assert "data.text_column: 'text' is not a column of the data; columns: body" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_loss_has_its_own_section_checked_against_the_task(tmp_path):
    spec = load_spec(ROOT / "studies/demo-lm.toml", ["loss.ce=0.0", "loss.temperature=3"])
    assert spec.loss.weights == {"forward_kl": 1.0, "ce": 0.0} and spec.loss.params["temperature"] == 3.0 and spec.loss.params["top_k"] == 32
    assert [name for name, _, _ in spec.loss.active()] == ["forward_kl"] and spec.loss.needs() == {"topk"}
    assert spec.full.eval_every == 100 and spec.brief.eval_every == 0  # one budget type, two defaults
    emb = load_spec(ROOT / "studies/demo.toml", ["loss.hidden=0.5"])
    assert emb.loss.needs() == {"sentence_embedding", "hidden_states"} and emb.loss.params == {"layer_map": "init", "similarity_temperature": 0.05}
    layers = load_spec(ROOT / "studies/demo-lm.toml", ["loss.hidden=1", "loss.attention=0.5", "loss.layer_map=[0, 2, 4]"])
    assert layers.loss.params["layer_map"] == (0, 2, 4) and layers.loss.needs() == {"topk", "hidden_states", "attentions"}
    assert "mapped by the list [0, 2, 4]" in layers.loss.describe()
    assert load_spec(ROOT / "studies/demo-lm.toml", ["loss.layer_map='last-2'"]).loss.params["layer_map"] == "last-2"
    refused = {
        "loss.cosine=1.0": r"^loss\.cosine: not a loss term or parameter of task causal-lm; allowed: ce, forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl, tv, self_evolution_kd, uld, hidden, hidden_cosine, attention, temperature, top_k, jsd_beta, skew_alpha, self_evolution_prior, full_vocabulary, layer_map",
        "loss.self_evolution_prior=1.5": r"^loss\.self_evolution_prior: must be between 0 and 1, got 1\.5",
        "loss.layer_map='middle'": r"^loss\.layer_map: must be one of init, uniform, last-K or a list of teacher states, got 'middle'$",
        "loss.layer_map=1.5": r"^loss\.layer_map: must be str or a list, got 1\.5$",
        "loss.layer_map=['a']": r"^loss\.layer_map: must be str or a list, got \['a'\]$",
        "loss.forward_kl=0": r"^loss: at least one term needs a weight > 0; terms: ce, forward_kl",
        "brief.patience=3": r"^brief\.patience: the brief run of a trial neither validates nor checkpoints",
        "loss.top_k=0": r"^loss\.top_k: must be >= 1",
        "loss.teacher_outputs='remote'": r"^loss\.teacher_outputs: must be one of cached, live",
        "brief.kd_weight=1.0": r"^brief\.kd_weight: the loss has its own section now: \[loss\] forward_kl",
        "full.loss.ce=1.0": r"^full\.loss: unknown key",
    }
    for override, message in refused.items():
        args = [override]
        if override == "loss.forward_kl=0":
            args.append("loss.ce=0")
        with pytest.raises(SpecError, match=message):
            load_spec(ROOT / "studies/demo-lm.toml", args)
    with pytest.raises(SpecError, match=r"^teacher\.train: task embedding cannot train its teacher"):
        load_spec(ROOT / "studies/demo.toml", ["teacher.package=''", "teacher.model='./t'", "teacher.train.steps=3"])
    with pytest.raises(SpecError, match=r"^study\.task: unknown 'summarization'; allowed: causal-lm, embedding"):
        load_spec(ROOT / "studies/demo.toml", ["study.task='summarization'"])


def test_several_teachers_are_teacher_tables_with_their_combination(tmp_path):
    text = (ROOT / "studies/demo-lm.toml").read_text()
    start = text.index("[teacher]")
    end = text.index("\n[data]", start)
    first = text[start:end].replace("[teacher]", "[[teacher]]")  # [teacher.train] stays with its teacher
    two = text[:start] + first + "\n" + first.replace("demo-lm/teacher", "demo-lm/teacher-2") + text[end:]
    path = tmp_path / "two.toml"
    path.write_text(two)
    spec = load_spec(path, ["loss.teacher_weights=[3, 1]"])
    assert spec.teacher.train is not None and spec.other_teachers[0].train is not None
    assert spec.other_teachers[0].model != spec.teacher.model and spec.loss.teacher_weights == (3.0, 1.0)
    assert load_spec(path).loss.teacher_weights == (1.0, 1.0)  # equal by default
    assert load_spec(path, ["loss.combine='lowest_entropy'"]).loss.needs() == {"topk", "confidence"}
    with pytest.raises(SpecError, match=r"^loss\.teacher_weights: 3 weight\(s\) for 2 teacher\(s\)"):
        load_spec(path, ["loss.teacher_weights=[1, 1, 1]"])
    with pytest.raises(SpecError, match=r'^loss\.combine: lowest_loss chooses .*; hidden need combine = "weights"'):
        load_spec(path, ["loss.combine='lowest_loss'", "loss.hidden=1.0"])
    with pytest.raises(SpecError, match=r"^loss\.combine: lowest_entropy chooses among several teachers; the spec lists one"):
        load_spec(ROOT / "studies/demo-lm.toml", ["loss.combine='lowest_entropy'"])
    path.write_text(two.replace("[[teacher]]\n", "[[teacher]]\nlayers = 2\n", 1))
    with pytest.raises(SpecError, match=r"^teacher\[0\]\.layers: unknown key"):
        load_spec(path)


def test_workers_that_ray_cannot_place_at_once_are_refused(tmp_path):
    from nas.parallel import check_workers

    path = tmp_path / "workers.toml"
    path.write_text("[teacher]\nmodel='x'\n[full]\nworkers=3\nbatch_size=12\n[resources]\ncpus=2\n")
    spec = load_spec(path)
    check_workers(spec, [{"CPU": 4.0}, {"CPU": 2.0}])  # 2 + 1 fit
    with pytest.raises(InputError, match=r"^full\.workers: 3 workers of 2 CPU\(s\) each .*the 2 node\(s\) of this Ray hold 2$"):
        check_workers(spec, [{"CPU": 4.0}, {"CPU": 1.0}])
