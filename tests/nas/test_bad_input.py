"""Bad input to the `nas` command line, one table: every case is one line on stderr,
`error: <spec file>: <key>: <what is wrong and what is allowed>`, exit code 2, no traceback,
and the trials stored in the study the spec points to are left as they were.

The module keeps one folder: a causal-LM spec (`lm`) and an embedding spec (`emb`) for tiny
teachers, each with a study of its own name in its default SQLite storage holding trials
added through Optuna, and the small data files and folders the cases read. Errors about the
spec file itself (not one of its keys) name it `SPEC`, as the command line's help does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from nas.cli import main
from tests.conftest import corpus, write_embedding_spec, write_spec

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Bad:
    """One bad input and the error it must give."""

    key: str
    """the key the error names (a spec key, a command-line option, or SPEC for the file)"""
    says: str
    """a regular expression the rest of the line matches (re.search)"""
    args: tuple[str, ...] = ()
    """after the spec: overrides and options; {dir}, {gpt2}, {bert}, {bin_only} and {bad_config} are paths"""
    command: str = "search"
    spec: str = "lm"
    """lm or emb (the module's specs), or a file name in the module's folder"""
    edit: tuple[str, str] | None = None
    """the lm spec's text with this replacement, written to a spec file of its own (same study)"""
    encoding: str = "utf-8"
    """of that file (another than UTF-8: the lm spec as it is, in this encoding)"""
    in_subprocess: bool = False
    """run `python -m nas.cli` (where a traceback would escape the process)"""


BRIEF = "[brief]\nsteps = 4"  # lm's brief budget, an anchor for edits
DATA = 'source = "json"\nfiles = ["docs.jsonl"]\ntext_column = "body"\nblock_length = 32\ntrain_blocks = 64\neval_blocks = 8\n'
CUT = DATA.split('text_column = "body"\n')[1]
MIX = '[[data.mix]]\nsource = "json"\nfiles = ["docs.jsonl"]\ntext_column = "body"\nweight = 3\n[[data.mix]]\nsource = "text"\nfiles = ["more.txt"]\nweight = 1\n'
"""lm's [data] (an anchor), the same without its source (the cut alone), and a mixture of two parts"""

# fmt: off
CASES = [
    # -- the spec file and its TOML
    pytest.param(Bad("SPEC", r"^file not found \(a study spec is a \.toml file", spec="nope.toml"), id="missing-file"),
    pytest.param(
        Bad("SPEC", r"^not UTF-8 text \(found UTF-16\); TOML files are UTF-8", encoding="utf-16", in_subprocess=True),
        id="utf-16-file",
    ),
    pytest.param(Bad("distill", r"^the section is now \[brief\] \(the brief run of every trial; its \[distill\.loss\] table is \[loss\]\)$", edit=(BRIEF, "[distill]\nsteps = 4")), id="renamed-section"),
    pytest.param(Bad("brief.steps", r"^not valid TOML \(line \d+, column \d+\): Expected newline", edit=(BRIEF, BRIEF + " 4")), id="toml-syntax"),
    pytest.param(Bad("study.name", r"^not valid TOML \(line \d+, column \d+\): Cannot overwrite a value", edit=('name = "lm"', 'name = "lm"\nname = "lm2"')), id="toml-duplicate-key"),
    pytest.param(Bad("studdy", r"^unknown section; allowed: study, teacher, data", edit=("[loss]", "[studdy]\ntrials = 2\n\n[loss]")), id="unknown-section"),
    pytest.param(Bad("teacher.revison", r"^unknown key; allowed: model, package, revision, train, trust_remote_code$", edit=("[teacher]\n", "[teacher]\nrevison = 'abc'\n")), id="unknown-key"),
    pytest.param(Bad("teacher[0].layers", r"^unknown key; allowed: model, package", edit=("[teacher]\n", "[[teacher]]\nlayers = 2\n")), id="teacher-table-unknown-key"),
    pytest.param(Bad("brief.steps", r"^must be int, got '4'$", edit=(BRIEF, '[brief]\nsteps = "4"')), id="string-for-int"),
    pytest.param(Bad("data.text_column", r"^must be str, got \['body'\]$", args=("data.text_column=['body']",)), id="list-for-string"),
    # -- overrides
    pytest.param(Bad("brief.stepz", r"^unknown key; allowed: .*steps", args=("brief.stepz=3",)), id="override-unknown-key"),
    pytest.param(Bad("brief.steps", r"^must be int, got 'abc'$", args=("brief.steps=abc",)), id="override-bad-value"),
    pytest.param(Bad("steps", r"^an override must be section\.key=value, e\.g\. brief\.steps=50", args=("steps=3",)), id="override-without-section"),
    pytest.param(Bad("study.name", r"^not a table; the override 'study\.name\.x=1' sets a key inside it", args=("study.name.x=1",)), id="override-inside-a-value"),
    # -- the study and the command line
    pytest.param(Bad("--storage", r"is not a URL; give an Optuna storage URL such as sqlite:///", args=("--storage", "{dir}/lm/optuna.db")), id="storage-bare-path"),
    pytest.param(Bad("--storage", r"unknown database 'mongodb'; give an Optuna storage URL", args=("--storage", "mongodb://localhost/lm")), id="storage-unknown-scheme"),
    pytest.param(Bad("study.storage", r"'optuna\.db' is not a URL", args=("study.storage=optuna.db",)), id="spec-storage-bare-path"),
    pytest.param(Bad("--trials", r"^must be >= 1, got 0$", args=("--trials", "0")), id="trials-0"),
    pytest.param(Bad("study.concurrency", r"^must be >= 1, got 0$", args=("study.concurrency=0",)), id="concurrency-0"),
    pytest.param(Bad("study.sampler", r"^unknown 'cmaes'; allowed: tpe, nsga2, gp, random$", args=("study.sampler='cmaes'",)), id="unknown-sampler"),
    pytest.param(Bad("study.task", r"^unknown 'summarization'; allowed: causal-lm, embedding, translation$", args=("study.task='summarization'",)), id="unknown-task"),
    pytest.param(Bad("--best", r"^unknown metric 'bleu'; allowed: perplexity, kl, top1_agreement, runtime_fp32_perplexity, ", command="distill", args=("--best", "bleu")), id="distill-best-unknown-metric"),
    pytest.param(Bad("--trial", r"^no trial 99 in study 'lm' \(0-2\)$", command="distill", args=("--trial", "99")), id="distill-trial-out-of-range"),
    pytest.param(Bad("--trial", r"^trial 2 is FAIL, not COMPLETE", command="distill", args=("--trial", "2")), id="distill-failed-trial"),
    pytest.param(Bad("fidelity", r"^the command is now rank-check \(nas rank-check, same arguments\)$", command="fidelity", args=("--trials", "3")), id="renamed-command"),
    pytest.param(Bad("--trials", r"^at least 3 trials are needed to rank, got 2$", command="rank-check", args=("--trials", "2")), id="rank-check-2-trials"),
    pytest.param(Bad("study.name", r"^no study 'nosuch' yet \(.* does not exist\); run `nas search` first$", command="pareto", args=("study.name='nosuch'",)), id="pareto-no-storage"),
    # -- budgets, loss, objectives, constraints, resources
    pytest.param(Bad("brief.steps", r"^must be >= 1 \(or set tokens\), got 0$", args=("brief.steps=0",)), id="steps-0"),
    pytest.param(Bad("brief.batch_size", r"^must be >= 1, got -1$", args=("brief.batch_size=-1",)), id="batch-size-negative"),
    pytest.param(Bad("full.lr", r"^must be > 0, got 0\.0$", args=("full.lr=0",)), id="full-lr-0"),
    pytest.param(Bad("data.eval_fraction", r"^must be between 0 and 1, got 1\.5$", args=("data.eval_fraction=1.5",)), id="fraction-out-of-range"),
    pytest.param(Bad("objectives.quality", r"^'bleu' is not a metric of task causal-lm; allowed: perplexity, kl, top1_agreement, runtime_fp32_perplexity, ", args=("objectives.quality=['bleu']",)), id="objective-not-of-task"),
    pytest.param(Bad("constraints.flops", r"^not a metric of task causal-lm; allowed: perplexity", args=("constraints.flops=1e9",)), id="constraint-unknown-metric"),
    pytest.param(Bad("loss.cosine", r"^not a loss term or parameter of task causal-lm; allowed: ce, forward_kl", args=("loss.cosine=1.0",)), id="loss-term-not-of-task"),
    pytest.param(Bad("loss.temperature", r"^must be > 0, got 0\.0$", args=("loss.temperature=0",)), id="temperature-0"),
    pytest.param(Bad("loss.uld", r"^teaches from a \[\[teacher\]\] whose tokenizer is not the student's, beside the first; the spec has one teacher", args=("loss.uld=1.0",)), id="uld-with-one-teacher"),
    pytest.param(Bad("resources.cpus", r"^must be a number > 0, got nan$", args=("resources.cpus=nan",)), id="cpus-nan"),
    pytest.param(Bad("resources.gpus", r"^each trial asks for 1 GPU\(s\); this machine has 0; set resources\.gpus = 0", args=("resources.gpus=1",)), id="gpus-without-a-gpu", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    pytest.param(Bad("resources.cpus", r"^each trial asks for 4096 CPUs; this machine has \d+$", args=("resources.cpus=4096",)), id="cpus-beyond-the-machine"),
    pytest.param(Bad("resources.precision", r"^must be one of 'auto', 'bf16', 'fp32', got 'fp16'$", args=("resources.precision='fp16'",)), id="precision-unknown"),
    # -- the teacher
    pytest.param(Bad("teacher.trust_remote_code", r"needs teacher\.revision pinned to a commit \(40 hex digits\).*; got no revision$", args=("teacher.trust_remote_code=true",)), id="remote-code-unpinned"),
    pytest.param(Bad("teacher.trust_remote_code", r"not a branch or tag; got revision 'main'$", args=("teacher.trust_remote_code=true", "teacher.revision='main'")), id="remote-code-on-a-branch"),
    pytest.param(Bad("teacher.train.heads", r"^must be >= 1, got 0$", edit=("[data]", "[teacher.train]\nheads = 0\n\n[data]")), id="teacher-train-0-heads"),
    pytest.param(Bad("teacher.train.hidden", r"^must be a multiple of heads \(3\), got 100$", edit=("[data]", "[teacher.train]\nhidden = 100\nheads = 3\n\n[data]")), id="teacher-train-heads-not-dividing"),
    pytest.param(Bad("teacher.model", r"^folder '.*no-teacher' does not exist \(or has no config\.json\)", args=("teacher.model='{dir}/no-teacher'",)), id="missing-teacher-folder"),
    pytest.param(Bad("teacher.model", r"^cannot load 'no-such-user/no-such-model': ", args=("teacher.model='no-such-user/no-such-model'",)), id="hub-teacher-unreachable"),
    pytest.param(Bad("teacher.model", r"^cannot load '.*bad-config': config\.json: field 'n_embd' expected int, got str \(value: 'wide'\)$", args=("teacher.model='{bad_config}'",)), id="teacher-config-wrong-type"),
    pytest.param(Bad("teacher.model", r"holds pytorch_model\.bin but no \.safetensors weights; teachers load from safetensors only", args=("teacher.model='{bin_only}'",)), id="teacher-without-safetensors"),
    pytest.param(Bad("teacher.model", r"^causal-LM students learn from a decoder-only teacher .* encoder-only 'bert' model", args=("teacher.model='{bert}'",)), id="causal-study-on-bert"),
    pytest.param(Bad("teacher.model", r"^embedding students are BERT encoders; the teacher is 'gpt2'$", spec="emb", args=("teacher.model='{gpt2}'",)), id="embedding-study-on-gpt2"),
    pytest.param(Bad("space.layers", r"^a student depth of 8 exceeds the teacher's 4", spec="emb", args=("space.layers=[1, 8]",)), id="encoder-space-deeper-than-teacher"),
    pytest.param(Bad("data.block_length", r"^128 tokens exceed the teacher's 64 positions \(max_position_embeddings\); at most 64$", args=("data.block_length=128",)), id="block-length-beyond-positions"),
    pytest.param(Bad("data.block_length", r"^96 tokens exceed the teacher's 64 positions", spec="emb", args=("data.block_length=96",)), id="embedding-block-length-beyond-positions"),
    pytest.param(Bad("loss.top_k", r"^100000 exceeds the teacher's vocabulary \(\d+\)$", args=("loss.top_k=100000",)), id="top-k-beyond-vocabulary"),
    # -- the data
    pytest.param(Bad("data.config", r"has several configurations and needs one named; configurations: first, second$", args=("data.source='{dir}/two-configs'", "data.files=[]")), id="dataset-needs-a-config"),
    pytest.param(Bad("data.config", r"has no configuration 'third'; configurations: first, second$", args=("data.source='{dir}/two-configs'", "data.files=[]", "data.config='third'")), id="dataset-unknown-config"),
    pytest.param(Bad("data.split", r"^the data has no split 'validation'; splits: train$", args=("data.split='validation'",)), id="split-not-in-data"),
    pytest.param(Bad("data.text_column", r"^'n' holds int64, not text; text columns: body$", args=("data.files=['numbers.jsonl']", "data.text_column='n'")), id="text-column-of-numbers"),
    pytest.param(Bad("data.text_column", r"^'text' is not a column of the data; columns: body$", args=("data.text_column='text'",)), id="text-column-missing"),
    pytest.param(Bad("data.valid_fraction", r"^3 documents leave none for training \(2 held out for evaluation .*, 1 for validation", args=("data.files=['three.jsonl']", "data.eval_fraction=0.5", "data.valid_fraction=0.5")), id="too-few-documents-for-fractions"),
    pytest.param(Bad("data.files", r"^cannot read them as json: JSON parse error: Invalid value\. in row 1$", args=("data.files=['broken.jsonl']",)), id="malformed-data-file"),
    pytest.param(Bad("data.source", r"^needs at least 3 non-empty documents, found 2$", args=("data.files=['two.jsonl']",)), id="too-few-documents"),
    pytest.param(Bad("data.source", r"^with \[\[data\.mix\]\] each part names its own source; move it into a \[\[data\.mix\]\] table$", edit=(DATA, DATA + MIX)), id="mix-beside-a-source"),
    pytest.param(Bad("data.mix[1].block_length", r"^unknown key; allowed: weight, source, config, files, text_column, split \(the rest is \[data\]'s\)$", edit=(DATA, CUT + MIX + "block_length = 8\n")), id="mix-part-unknown-key"),
    pytest.param(Bad("data.mix[1].weight", r"^required \(its share of the examples\)$", edit=(DATA, CUT + MIX.replace("weight = 1\n", ""))), id="mix-part-without-weight"),
    pytest.param(Bad("data.mix[0].weight", r"^must be a number above 0, got 0\.0$", edit=(DATA, CUT + MIX.replace("weight = 3", "weight = 0"))), id="mix-weight-zero"),
    pytest.param(Bad("data.mix[1].files", r"^source 'text' needs at least one file$", edit=(DATA, CUT + MIX.replace('files = ["more.txt"]\n', ""))), id="mix-part-invalid"),
    pytest.param(Bad("data.mix[1].files", r"^'nope\.txt' does not exist$", edit=(DATA, CUT + MIX.replace("more.txt", "nope.txt"))), id="mix-part-file-missing"),
    pytest.param(Bad("data.stopping_strategy", r"^must be one of first_exhausted, all_exhausted, all_exhausted_without_replacement, got 'longest'$", edit=(DATA, CUT + "stopping_strategy = 'longest'\n" + MIX)), id="mix-stopping-unknown"),
    pytest.param(Bad("data.stopping_strategy", r"^only for a mixture of sources \(\[\[data\.mix\]\] tables\)$", args=("data.stopping_strategy='all_exhausted'",)), id="stopping-without-mix"),
    pytest.param(Bad("data.sentences", r"^must be between 0 and 1 \(a share of the paragraphs\), got 1\.5$", spec="emb", args=("data.sentences=1.5",)), id="sentence-share-out-of-range"),
    pytest.param(Bad("data.files", r"^'nope\.jsonl' does not exist$", args=("data.files=['nope.jsonl']",)), id="data-file-missing"),
    pytest.param(Bad("data.source", r"^folder './no-such-folder' does not exist", args=("data.source='./no-such-folder'", "data.files=[]")), id="dataset-folder-missing"),
    pytest.param(Bad("data.source", r"^cannot read 'no-such-user/no-such-dataset': ", args=("data.source='no-such-user/no-such-dataset'", "data.files=[]")), id="hub-dataset-unreachable"),
]
# fmt: on


def _add_trials(study: optuna.Study, arch: dict, metrics: list[dict]) -> None:
    """COMPLETE trials with `metrics` (plausible attributes of a trained student), then one FAIL."""
    names = study.metric_names
    for i, m in enumerate(metrics):
        layers = i + 1
        study.add_trial(
            create_trial(
                params={"layers": layers, "heads": 2},
                distributions={"layers": IntDistribution(1, 2), "heads": CategoricalDistribution([2, 4])},
                values=[m[n] for n in names],
                user_attrs={"arch": arch | {"layers": layers}, "arch_short": f"L{layers} H2", **m, "steps": 4},
            )
        )
    study.add_trial(
        create_trial(state=TrialState.FAIL, user_attrs={"arch": arch, "fail_reason": "RuntimeError: out of memory"})
    )


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, teacher_dirs, sentence_teacher) -> Path:
    """The module's folder: the specs, their stored studies, the data the cases read."""
    folder = tmp_path_factory.mktemp("bad-input")
    write_spec(folder, teacher_dirs["gpt2"], name="lm")
    write_embedding_spec(folder, sentence_teacher, name="emb")
    lm = optuna.create_study(storage=_url(folder, "lm"), study_name="lm", directions=["minimize", "minimize"])
    lm.set_metric_names(["perplexity", "params"])
    lm.set_user_attr("task", "causal-lm")
    decoder = {"family": "gpt2", "heads": 2, "kv_heads": 2, "head_dim": 8, "ffn_ratio": 2.0, "tie_embeddings": True}
    _add_trials(
        lm,
        decoder | {"init": "random", "layer_pick": "even"},
        [
            {"perplexity": 480.0, "kl": 1.9, "top1_agreement": 0.11, "params": 18_000, "non_embedding_params": 1_600},
            {"perplexity": 410.0, "kl": 1.7, "top1_agreement": 0.14, "params": 19_600, "non_embedding_params": 3_200},
        ],
    )
    emb = optuna.create_study(
        storage=_url(folder, "emb"), study_name="emb", directions=["maximize", "maximize", "minimize", "minimize"]
    )
    emb.set_metric_names(["cosine", "spearman", "non_embedding_params", "latency_ms_b32"])
    emb.set_user_attr("task", "embedding")
    encoder = {"family": "bert", "heads": 2, "head_dim": 8, "ffn_ratio": 2.0, "init": "teacher", "layer_pick": "even"}
    _add_trials(
        emb,
        encoder,
        [
            {"cosine": 0.81, "spearman": 0.62, "non_embedding_params": 2_400, "latency_ms_b32": 0.05, "params": 10_600},
            {"cosine": 0.86, "spearman": 0.70, "non_embedding_params": 4_800, "latency_ms_b32": 0.08, "params": 13_000},
        ],
    )
    # A local `datasets` folder with two configurations: loading it needs one named.
    for config in ("a", "b"):
        (folder / "two-configs" / config).mkdir(parents=True)
        (folder / "two-configs" / config / "train.jsonl").write_text(
            "\n".join(json.dumps({"body": t}) for t in corpus())
        )
    (folder / "two-configs" / "README.md").write_text(
        "---\nconfigs:\n- config_name: first\n  data_files: a/*.jsonl\n- config_name: second\n  data_files: b/*.jsonl\n---\n"
    )
    (folder / "numbers.jsonl").write_text("\n".join(json.dumps({"body": t, "n": i}) for i, t in enumerate(corpus())))
    (folder / "more.txt").write_text("\n".join(reversed(corpus())))  # a second part of a mixture
    (folder / "broken.jsonl").write_text(json.dumps({"body": corpus()[0]}) + '\n{"body": unquoted}\n')
    for name, count in (("three", 3), ("two", 2)):
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in corpus()[:count]))
    # A teacher folder with pickled weights only.
    from safetensors.torch import load_file

    bin_only = shutil.copytree(teacher_dirs["gpt2"], folder / "bin-only")
    torch.save(load_file(bin_only / "model.safetensors"), bin_only / "pytorch_model.bin")
    (bin_only / "model.safetensors").unlink()
    # A teacher folder whose config.json has a field of the wrong type.
    bad_config = shutil.copytree(teacher_dirs["gpt2"], folder / "bad-config")
    config = json.loads((bad_config / "config.json").read_text())
    (bad_config / "config.json").write_text(json.dumps({**config, "n_embd": "wide"}))
    return folder


def _url(folder: Path, name: str) -> str:
    """The default storage of study `name` of a spec in `folder` (made as `nas search` makes it)."""
    (folder / name).mkdir(exist_ok=True)
    return f"sqlite:///{folder / name / 'optuna.db'}"


@pytest.fixture(scope="module")
def storages(study_dir) -> dict[str, optuna.storages.RDBStorage]:
    """The module's storages, opened once (each read goes to the database)."""
    return {name: optuna.storages.RDBStorage(_url(study_dir, name)) for name in ("lm", "emb")}


def _stored(storages: dict[str, optuna.storages.RDBStorage]) -> dict[str, list[tuple]]:
    """Every study's trials in the module's storages: number, state, values, user attributes."""
    return {
        f"{name}/{study.study_name}": [
            (t.number, t.state.name, t.values, t.user_attrs)
            for t in storage.get_all_trials(storage.get_study_id_from_name(study.study_name), deepcopy=False)
        ]
        for name, storage in storages.items()
        for study in storage.get_all_studies()
    }


@pytest.fixture
def no_ray(monkeypatch):
    """Bad input is reported before Ray starts (starting it takes seconds and prints to stderr)
    and never starts a trial: a case that gets there fails at once."""
    import ray
    from ray import tune

    def reached(*args, **kwargs):
        raise RuntimeError("the bad input reached Ray: it must be reported before Ray starts")

    monkeypatch.setattr(ray, "init", reached)
    monkeypatch.setattr(tune, "Tuner", reached)


def _argv(
    case: Bad, name: str, folder: Path, teacher_dirs: dict[str, Path], sentence_teacher: Path
) -> tuple[str, list[str]]:
    """The spec argument and the whole command line of `case` (`name`: its spec file, if edited)."""
    paths = {
        "dir": str(folder),
        "gpt2": str(teacher_dirs["gpt2"]),
        "bert": str(sentence_teacher),
        "bin_only": str(folder / "bin-only"),
        "bad_config": str(folder / "bad-config"),
    }
    if case.edit is not None or case.encoding != "utf-8":
        text = (folder / "lm.toml").read_text()
        old, new = case.edit or ("", "")
        assert old in text, old
        spec = folder / f"{name}.toml"
        spec.write_text(text.replace(old, new, 1), encoding=case.encoding)
    else:
        spec = folder / (f"{case.spec}.toml" if case.spec in ("lm", "emb") else case.spec)
    args = [a.format(**paths) for a in case.args]
    return str(spec), [case.command, str(spec), *args]


def _printed(record: logging.LogRecord) -> bool:
    """Whether `nas`'s command line prints `record` on stderr: its own loggers from INFO up, the
    libraries' from WARNING up (see `nas.cli.main`)."""
    ours = record.name.split(".")[0] in ("nas", "distill")
    return record.levelno >= (logging.INFO if ours else logging.WARNING)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_the_key(
    case, request, study_dir, storages, teacher_dirs, sentence_teacher, capsys, caplog, no_ray
):
    spec, argv = _argv(case, request.node.callspec.id, study_dir, teacher_dirs, sentence_teacher)
    before = _stored(storages)
    assert before["lm/lm"] and before["emb/emb"]
    if case.in_subprocess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "nas.cli", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        capsys.readouterr()
        with caplog.at_level(logging.INFO):
            try:
                code = main(argv)
            except BaseException as exc:  # noqa: BLE001 - what escapes is the failure this test reports
                pytest.fail(f"{type(exc).__name__} escaped: {exc}")
        out, err = capsys.readouterr()
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        # What the command line's logging prints to stderr besides the error (pytest captures it here).
        printed = [f"{r.name}: {r.getMessage()}" for r in caplog.records if _printed(r)]
        assert not printed, f"logged before the error: {printed}"
    assert "Traceback" not in out + err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = f"error: {spec}: {case.key}: "
    assert lines[0].startswith(prefix), lines[0]
    assert re.search(case.says, lines[0][len(prefix) :]), lines[0]
    assert _stored(storages) == before


def test_the_table_covers_enough_cases():
    assert len(CASES) >= 32 and len({c.id for c in CASES}) == len(CASES)


def test_remote_code_runs_only_pinned_and_is_logged(tmp_path, caplog):
    """trust_remote_code with a revision pinned to a commit loads, and says so in the log."""
    from distill.teachers import teacher_source
    from nas.spec import load_spec

    commit = "0123456789abcdef0123456789abcdef01234567"
    path = tmp_path / "remote.toml"
    path.write_text(f"[teacher]\nmodel = 'someone/model'\ntrust_remote_code = true\nrevision = '{commit}'\n")
    spec = load_spec(path)
    with caplog.at_level(logging.WARNING, logger="distill.teachers"):
        source = teacher_source(spec.teacher, spec.base_dir)
    assert source.trust_remote_code and source.revision == commit
    assert f"someone/model@{commit}: its own code may run (trust_remote_code)" in caplog.text
