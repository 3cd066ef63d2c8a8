"""Distillation methods side by side: one fixed student, the same budget and data order, 3 seeds.

On the causal-LM demo (studies/demo-lm.toml: perplexity, KL to the teacher, top-1 agreement)
and the translation demo (studies/demo-mt.toml: BLEU, chrF), each method trains the same
student architecture from random weights for the same steps on the same batches (the data
order is the seed's), and is scored on the study's held-out split:

- CE only (no teacher), forward KL, reverse KL, generalized JSD (beta 0.5), skew KL
  (alpha 0.1), self-evolution KD and its earlier proxy form, each divergence with the demo's
  cross-entropy weight 0.5;
- intermediate layers + KL: forward KL, CE and the hidden-state MSE of mapped layers;
- two teachers: forward KL and CE against the demo teacher and a second, smaller teacher
  trained on the same text with the same tokenizer, weighted equally.

Prints one table (mean and spread over the seeds) and writes it, with every run, to --out.

    python benchmarks/recipes.py [--tasks causal-lm translation] [--seeds 3] [--lm-steps 300] [--mt-steps 1200]

`--paired` is the fair test of a method against word-level KD (forward KL + CE): a student
that is competent from the start (sliced from the teacher, whose quality it nearly has
after a few hundred steps), a longer budget, at least 10 seeds with the same data order per
seed across arms, each run's checkpoint chosen on the validation split every `--eval-every`
steps and scored on the held-out split; it prints each arm's mean difference to its
baseline with a 95 % interval (Student's t over the paired seeds):

    python benchmarks/recipes.py --paired [--seeds 10] [--lm-steps 500] [--mt-steps 3000] [--shard 0/2]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from distill import LossConfig, make_loss, study_teachers, train
from distill import losses as loss_registry
from distill.tasks.base import scores_and_text
from nas.prepare import prepare_other_teachers, prepare_study
from nas.spec import StudySpec, load_spec

ROOT = Path(__file__).resolve().parents[1]

DEMOS = {
    "causal-lm": {
        "spec": "studies/demo-lm.toml",
        "student": {
            "family": "llama", "layers": 2, "heads": 4, "kv_heads": 4, "head_dim": 32, "ffn_ratio": 2.0,
            "tie_embeddings": True, "init": "random", "layer_pick": "even",
        },
        "second_teacher": {"layers": 3, "hidden": 128, "heads": 4},
        "metrics": ("perplexity", "kl", "top1_agreement"),
    },
    "translation": {
        "spec": "studies/demo-mt.toml",
        "student": {
            "family": "marian", "encoder_layers": 2, "decoder_layers": 1, "heads": 4, "head_dim": 32,
            "ffn_ratio": 2.0, "share_embeddings": True, "init": "random", "layer_pick": "even",
        },
        "second_teacher": {"layers": 2, "hidden": 96, "heads": 4},
        "metrics": ("bleu", "chrf"),
    },
}  # fmt: skip

# name -> (term weights, two teachers)
METHODS = {
    "CE only": ({"ce": 1.0}, False),
    "forward KL": ({"forward_kl": 1.0, "ce": 0.5}, False),
    "reverse KL": ({"reverse_kl": 1.0, "ce": 0.5}, False),
    "generalized JSD": ({"jsd": 1.0, "ce": 0.5}, False),
    "skew KL": ({"skew_kl": 1.0, "ce": 0.5}, False),
    "intermediate + KL": ({"forward_kl": 1.0, "ce": 0.5, "hidden": 1.0}, False),
    "two teachers": ({"forward_kl": 1.0, "ce": 0.5}, True),
    "self-evolution KD": ({"self_evolution_kd": 1.0, "ce": 0.5}, False),
    "self-evolution KD, proxy form": ({"self_evolution_proxy": 1.0, "ce": 0.5}, False),
}


# The paired comparison: name -> (term weights, teachers' settings, the arm it is compared with).
# "second": the demo's second teacher, a smaller model with the same tokenizer; "other": a teacher
# of another tokenizer (and, for the causal LM, another family: Llama), trained on the same text.
BASELINE = "word-level KD"
PAIRED = {
    BASELINE: ({"forward_kl": 1.0, "ce": 0.5}, {}, None),
    "self-evolution KD": ({"self_evolution_kd": 1.0, "ce": 0.5}, {}, BASELINE),
    "self-evolution KD, proxy form": ({"self_evolution_proxy": 1.0, "ce": 0.5}, {}, BASELINE),
    "two teachers chosen per token, word-level KD": (
        {"forward_kl": 1.0, "ce": 0.5}, {"second": "second", "combine": "lowest_loss"}, BASELINE
    ),
    "two teachers chosen per token, self-evolution KD": (
        {"self_evolution_kd": 1.0, "ce": 0.5}, {"second": "second", "combine": "lowest_loss"},
        "two teachers chosen per token, word-level KD",
    ),
    "two teachers of one tokenizer, word-level KD": ({"forward_kl": 1.0, "ce": 0.5}, {"second": "second"}, BASELINE),
    "second teacher of another tokenizer, ULD": (
        {"forward_kl": 1.0, "ce": 0.5, "uld": 1.0}, {"second": "other"}, "two teachers of one tokenizer, word-level KD"
    ),
}  # fmt: skip

OTHER_TEACHER = {  # the teacher of another tokenizer: its folder's suffix, [teacher.train] settings beside the demo's
    "causal-lm": ("-llama", {"family": "llama", "vocab_size": 3072}),  # as studies/demo-lm-experts.toml's
    "translation": ("-other", {"vocab_size": 640}),
}

# Students that are competent from the start (sliced from the teacher, layers spread evenly; the
# translation student after a warm-up of cross-entropy), and that the teacher stays clearly
# better than: on the translation demo, a teacher trained longer (6,000 steps, BLEU 60.8)
# learns its training pairs by heart (its top token is the reference at all of them, with
# probability 0.999), which leaves nothing to distill on them but the references; a student of
# width 64 passes the demo's teacher (BLEU 49.0) within 3,300 steps, one of width 32 does not.
COMPETENT = {
    "causal-lm": {
        "family": "gpt2", "layers": 2, "heads": 4, "kv_heads": 4, "head_dim": 48, "ffn_ratio": 4.0,
        "tie_embeddings": True, "init": "teacher", "layer_pick": "even",
    },
    "translation": {
        "family": "marian", "encoder_layers": 1, "decoder_layers": 1, "heads": 1, "head_dim": 32,
        "ffn_ratio": 2.0, "share_embeddings": True, "init": "teacher", "layer_pick": "even",
    },
}  # fmt: skip


def _proxy_form(
    student_logits, labels, teacher_logprobs=None, teacher_indices=None, temperature=1.0, mask=None,
    teacher_logits=None,
):  # fmt: skip
    """The earlier form of self-evolution KD, for the comparison: the hardest half of each
    micro-batch's tokens (by KL(R || Q), R = (onehot(y) + P) / 2) against the proxy
    0.5 R + 0.5 Q on the student's side, KL(P || proxy); the others as forward KL."""
    import math

    ls = loss_registry
    teacher = (teacher_logprobs, teacher_indices, teacher_logits)
    counted = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.bool()
    with torch.no_grad():
        hardness = ls.positionwise(ls._self_evolution_difficulty, student_logits.detach(), *teacher, temperature, extras=(labels,))
    k = math.ceil(0.5 * int(counted.sum()))
    hard = counted & (hardness >= hardness[counted].topk(k).values[-1]) if k else torch.zeros_like(counted)

    def kind(sup, params, labels, hard):
        proxy = ls._mixture(ls._self_evolution_prior(sup, labels), sup.student, 0.5)
        return torch.where(hard, ls._kl(sup, sup.teacher, proxy), ls._kl(sup, sup.teacher, sup.student))

    return ls.divergence(kind, student_logits, *teacher, temperature, mask, extras=(labels, hard))


loss_registry.LOSSES.setdefault(
    "self_evolution_proxy", loss_registry.LossTerm(_proxy_form, ("topk",), "self-evolution KD, the earlier proxy form")
)


def two_teachers(task: str) -> StudySpec:
    """The demo's spec in fp32 (the tables were recorded in it) with its second teacher, a
    smaller one trained on first use on the same text with the same tokenizer."""
    demo = DEMOS[task]
    spec = load_spec(ROOT / demo["spec"], ["resources.precision='fp32'"])
    first = spec.teacher
    train = dataclasses.replace(first.train, **demo["second_teacher"])
    second = dataclasses.replace(first, model=first.model.rstrip("/") + "-2", train=train)
    return dataclasses.replace(spec, other_teachers=(second,), loss=dataclasses.replace(spec.loss, teacher_weights=(1.0, 1.0)))


def studies(task: str) -> tuple[StudySpec, object, tuple]:
    """`two_teachers`, both teachers' outputs cached with everything the methods need."""
    spec = two_teachers(task)
    weights = {**spec.loss.weights, "hidden": 1.0}  # the cache holds the hidden states too
    spec = dataclasses.replace(spec, loss=dataclasses.replace(spec.loss, weights=weights))
    data = prepare_study(spec)
    # the second teacher is smaller: its next-token outputs alone (its hidden states have another shape)
    plain = dataclasses.replace(spec.loss, weights=dict(spec.loss.weights) | {"hidden": 0.0})
    return spec, data, prepare_other_teachers(dataclasses.replace(spec, loss=plain), data)


def run(task: str, spec: StudySpec, data, others, method: str, seed: int, steps: int) -> dict:
    weights, two = METHODS[method]
    arch = DEMOS[task]["student"]
    loss = LossConfig(weights, spec.loss.params, teacher_weights=(1.0, 1.0) if two else ())
    budget = dataclasses.replace(spec.brief, steps=steps)
    cpu = torch.device("cpu")
    torch.manual_seed(seed)
    student = spec.task.build_student(arch, data, cpu)
    teachers = study_teachers(spec.task, data, loss, cpu, others if two else ())
    loss_fn = make_loss(spec.task, student, data, loss, teachers, cpu, arch=arch)
    start = time.perf_counter()
    train(student, budget, loss_fn, spec.task.lengths(data, "train"), seed=seed)
    seconds = time.perf_counter() - start
    quality, _ = scores_and_text(spec.task.evaluate(student, data, "eval", cpu))
    return {"task": task, "method": method, "seed": seed, "steps": steps, "seconds": seconds, **quality}


def paired_studies(task: str) -> tuple[StudySpec, object, dict]:
    """The demo with its second teacher and a teacher of another tokenizer, cached for the
    paired arms (the first two: top k and each teacher's confidence per token; the other:
    its outputs aligned with the student's tokens)."""
    spec = two_teachers(task)
    loss = dataclasses.replace(
        spec.loss, weights=dict(PAIRED[BASELINE][0]), teacher_weights=(1.0, 1.0), combine="lowest_loss"
    )
    first, second = spec.teacher, spec.other_teachers[0]
    spec = dataclasses.replace(spec, loss=loss)
    data = prepare_study(spec)
    (same,) = prepare_other_teachers(spec, data)
    suffix, settings = OTHER_TEACHER[task]
    other = dataclasses.replace(first, model=first.model.rstrip("/") + suffix, train=dataclasses.replace(first.train, **settings))
    aligned = dataclasses.replace(spec, other_teachers=(other,), loss=dataclasses.replace(
        loss, weights={"uld": 1.0, "ce": 0.5}, combine="weights"))  # fmt: skip
    (foreign,) = prepare_other_teachers(aligned, data)
    assert second.model != other.model and foreign.aligned
    return spec, data, {"second": same, "other": foreign}


def warm_student(task: str, spec: StudySpec, data, seed: int, steps: int) -> torch.nn.Module:
    """The competent student of `task` for `seed`: sliced from the teacher, then `steps` of
    cross-entropy on the references (no teacher), the same for every arm of the seed (kept
    in the study's folder, so that every arm and shard starts from one copy)."""
    cpu = torch.device("cpu")
    torch.manual_seed(seed)
    student = spec.task.build_student(COMPETENT[task], data, cpu)
    if steps <= 0:
        return student
    shape = hashlib.sha256(json.dumps(COMPETENT[task], sort_keys=True).encode()).hexdigest()[:8]
    path = spec.out_dir / "benchmark-warm" / f"{data.path.name}-{shape}-{seed}-{steps}.pt"
    if path.exists():
        student.load_state_dict(torch.load(path, weights_only=True))
        return student
    loss = make_loss(spec.task, student, data, LossConfig({"ce": 1.0}, spec.loss.params), [], cpu, arch=COMPETENT[task])
    train(student, dataclasses.replace(spec.brief, steps=steps), loss, spec.task.lengths(data, "train"), seed=seed + 1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(student.state_dict(), path.with_suffix(".partial"))
    path.with_suffix(".partial").rename(path)
    return student


def paired_run(
    task: str, spec: StudySpec, data, others: dict, arm: str, seed: int, steps: int, eval_every: int, warmup: int,
    lr: float = 0.0,
) -> dict:
    """One arm on one seed: the competent student, its checkpoint chosen on the validation
    split, scored on the held-out split; with what its loss terms noted of themselves."""
    weights, teachers, _ = PAIRED[arm]
    arch = COMPETENT[task]
    teachers = dict(teachers)
    second = (others[teachers.pop("second")],) if "second" in teachers else ()
    loss = LossConfig(weights, spec.loss.params, teacher_weights=(1.0, 1.0) if second else (), **teachers)
    budget = dataclasses.replace(spec.brief, steps=steps, eval_every=eval_every, lr=lr or spec.brief.lr)
    metric = DEMOS[task]["metrics"][0]
    sign = 1.0 if metric == "perplexity" else -1.0
    cpu = torch.device("cpu")
    student = warm_student(task, spec, data, seed, warmup)
    start_quality, _ = scores_and_text(spec.task.evaluate(student, data, "eval", cpu))
    loss_fn = make_loss(spec.task, student, data, loss, study_teachers(spec.task, data, loss, cpu, second), cpu, arch=arch)

    def validate(model):
        return sign * scores_and_text(spec.task.evaluate(model, data, "valid", cpu))[0][metric]

    start = time.perf_counter()
    result = train(student, budget, loss_fn, spec.task.lengths(data, "train"), seed=seed, validate=validate)
    seconds = time.perf_counter() - start
    quality, _ = scores_and_text(spec.task.evaluate(student, data, "eval", cpu))
    notes = {}
    for _, taken in result.diagnostics:
        for term, sums in taken.items():
            for key, value in sums.items():
                notes.setdefault(term, {}).setdefault(key, 0.0)
                notes[term][key] += value
    return {
        "task": task, "arm": arm, "seed": seed, "steps": steps, "warmup": warmup, "lr": budget.lr, "seconds": seconds,
        "best_step": result.best_step, "start": start_quality, **quality, "notes": notes,
        "teacher": data.teacher_metrics, "teachers": [d.teacher_name for d in (data, *second)],
    }  # fmt: skip


PAIRED_METRICS = {"translation": ("bleu", "chrf"), "causal-lm": ("perplexity",)}
CONTRASTS = [
    ("self-evolution KD", "self-evolution KD, proxy form"),
    ("second teacher of another tokenizer, ULD", BASELINE),  # the foreign teacher against none
]
"""pairs of arms compared with each other beside their baselines"""


def paired_table(rows: list[dict], tasks: list[str]) -> str:
    """Markdown, as the README shows it: per arm its baseline and, per task metric, the mean
    over the seeds it shares with the baseline and the paired difference with a 95 %
    interval; then the pairs per task, and what self-evolution KD noted of itself."""
    from paired import fmt, interval

    of = {t: {(r["arm"], r["seed"]): r for r in rows if r["task"] == t} for t in tasks}
    names = {"translation": "MT", "causal-lm": "LM"}
    head = [f"{names[t]} {m} | vs baseline" for t in tasks for m in PAIRED_METRICS[t]]
    lines = ["| arm | baseline | " + " | ".join(head) + f" | pairs ({' / '.join(names[t] for t in tasks)}) |"]
    lines.append("|---" * (3 + 2 * len(head)) + "|")
    notes = []
    for arm, (_, _, base) in PAIRED.items():
        cells, counts = [], []
        for t in tasks:
            seeds = sorted(s for (a, s) in of[t] if a == arm and (base is None or (base, s) in of[t]))
            counts.append(str(len(seeds)))
            for m in PAIRED_METRICS[t]:
                cells.append(f"{statistics.mean(of[t][(arm, s)][m] for s in seeds):.2f}" if seeds else "-")
                paired = [of[t][(arm, s)][m] - of[t][(base, s)][m] for s in seeds] if base else []
                cells.append(fmt(*interval(paired)).replace("-", "−") if len(paired) > 1 else "")
            se = [of[t][(arm, s)]["notes"]["self_evolution_kd"] for s in seeds if "self_evolution_kd" in of[t][(arm, s)]["notes"]]
            if se:
                total = {k: sum(n[k] for n in se) for k in se[0]}
                notes.append(
                    f"{names[t]}, {arm}: {total['hard_tokens'] / total['tokens']:.1%} of tokens hard (mean prior share "
                    f"{total['prior'] / total['hard_tokens']:.2f}), carrying {total['hard_gradient'] / total['gradient']:.1%} of its gradient"
                )
        lines.append(f"| {arm} | {base or ''} | " + " | ".join(cells) + f" | {' / '.join(counts)} |")
    for arm, other in CONTRASTS:
        for t in tasks:
            seeds = sorted(s for (a, s) in of[t] if a == arm and (other, s) in of[t])
            if len(seeds) > 1:
                diffs = ", ".join(
                    f"{m} {fmt(*interval([of[t][(arm, s)][m] - of[t][(other, s)][m] for s in seeds]))}" for m in PAIRED_METRICS[t]
                )
                notes.append(f"{names[t]}, {arm} minus {other}: {diffs} ({len(seeds)} pairs)")
    return "\n".join(lines + [""] + notes)


def table(rows: list[dict], tasks: list[str]) -> str:
    """Markdown: a row per method, `mean ± spread` (sample standard deviation) per task metric."""
    columns = [(t, m) for t in tasks for m in DEMOS[t]["metrics"]]
    head = "| method | " + " | ".join(f"{'LM' if t == 'causal-lm' else 'MT'} {m}" for t, m in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for method in METHODS:
        cells = []
        for t, m in columns:
            values = [r[m] for r in rows if r["task"] == t and r["method"] == method]
            if not values:
                cells.append("-")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            digits = 3 if m in ("kl", "top1_agreement") else 2
            cells.append(f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(DEMOS), choices=list(DEMOS))
    p.add_argument("--seeds", type=int, default=None, help="default 3 (--paired: 10)")
    p.add_argument("--lm-steps", type=int, default=None, help="steps of each causal-LM run (default: 300, the demo's brief budget; --paired: 500)")
    p.add_argument("--mt-steps", type=int, default=None, help="steps of each translation run (default: 1200, the demo's brief budget; --paired: 3000)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/recipes_runs.jsonl (--paired: paired_runs.jsonl)")
    p.add_argument("--paired", action="store_true", help="the fair test against word-level KD (see above)")
    p.add_argument("--arms", nargs="+", default=list(PAIRED), choices=list(PAIRED))
    p.add_argument("--eval-every", type=int, default=0, help="--paired: validate every this many steps (default: steps / 6)")
    p.add_argument("--lm-warmup", type=int, default=0, help="--paired: cross-entropy steps before distilling (causal LM)")
    p.add_argument("--mt-warmup", type=int, default=300, help="--paired: cross-entropy steps before distilling (translation)")
    p.add_argument("--lm-lr", type=float, default=0.0, help="--paired: peak learning rate (causal LM; default: the demo's brief lr)")
    p.add_argument("--mt-lr", type=float, default=0.0, help="--paired: peak learning rate (translation; default: the demo's brief lr)")
    p.add_argument("--shard", default="0/1", help="--paired: run the seeds s with s %% N == i of i/N (several processes)")
    p.add_argument("--table", action="store_true", help="print the table of the runs in --out and run nothing")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.paired:
        args.seeds, args.lm_steps, args.mt_steps = args.seeds or 10, args.lm_steps or 500, args.mt_steps or 3000
        paired_main(args)
        return
    args.seeds, args.lm_steps, args.mt_steps = args.seeds or 3, args.lm_steps or 300, args.mt_steps or 1200
    args.out = args.out or ROOT / "benchmarks" / "recipes_runs.jsonl"
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["task"], r["method"], r["seed"], r["steps"]) for r in rows}
    for task in args.tasks:
        spec, data, others = studies(task)
        steps = args.lm_steps if task == "causal-lm" else args.mt_steps
        for method in args.methods:
            for seed in range(args.seeds):
                if (task, method, seed, steps) in done:
                    continue  # a run of an earlier invocation: kept
                row = run(task, spec, data, others, method, seed, steps)
                print(json.dumps(row), flush=True)
                rows.append(row)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    steps = {t: (args.lm_steps if t == "causal-lm" else args.mt_steps) for t in args.tasks}
    rows = [r for r in rows if r["task"] in args.tasks and r["steps"] == steps[r["task"]] and r["seed"] < args.seeds]
    print(table(rows, args.tasks))


def paired_main(args: argparse.Namespace) -> None:
    out = args.out or ROOT / "benchmarks" / "paired_runs.jsonl"
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if not args.table:
        index, count = (int(x) for x in args.shard.split("/"))
        done = {(r["task"], r["arm"], r["seed"], r["steps"], r["warmup"]) for r in rows}
        for task in args.tasks:
            spec, data, others = paired_studies(task)
            steps = args.lm_steps if task == "causal-lm" else args.mt_steps
            warmup = args.lm_warmup if task == "causal-lm" else args.mt_warmup
            lr = args.lm_lr if task == "causal-lm" else args.mt_lr
            for seed in range(index, args.seeds, count):  # seeds outermost: every arm's pairs grow together
                for arm in args.arms:
                    if (task, arm, seed, steps, warmup) in done:
                        continue
                    every = args.eval_every or max(1, steps // 6)
                    row = paired_run(task, spec, data, others, arm, seed, steps, every, warmup, lr)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    steps = {t: (args.lm_steps if t == "causal-lm" else args.mt_steps) for t in args.tasks}
    warmup = {"causal-lm": args.lm_warmup, "translation": args.mt_warmup}
    kept = [r for r in rows if r["task"] in args.tasks and r["steps"] == steps[r["task"]] and r["warmup"] == warmup[r["task"]]]
    print(paired_table(kept, args.tasks))


if __name__ == "__main__":
    main()
