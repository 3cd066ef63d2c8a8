"""A data section that mixes several sources by weight (`[[data.mix]]`), for every task:
each part split on its own, the splits interleaved by `datasets`, and what each part gave
reported; and embedding items cut into sentences."""

import json

import pytest

from distill.data import DataConfig, Part, load_examples
from distill.tasks import get_task
from distill.tasks.embedding import items
from distill.tasks.pairs import PairDataConfig


def _documents(tmp_path, name, n):
    lines = [f"{name} document number {i} holds one paragraph, long enough to count as text." for i in range(n)]
    (tmp_path / f"{name}.txt").write_text("\n".join(lines))
    return set(lines)


def _mixture(**kwargs):
    parts = (Part(3.0, {"source": "text", "files": ("alpha.txt",)}), Part(1.0, {"source": "text", "files": ("beta.txt",)}))
    return DataConfig(mix=parts, **kwargs)


def test_a_mixture_draws_each_split_by_weight_and_holds_no_example_twice(tmp_path):
    alpha, beta = _documents(tmp_path, "alpha", 400), _documents(tmp_path, "beta", 100)
    task = get_task("causal-lm")
    mixed = load_examples(task, _mixture(), tmp_path, seed=0)

    train = mixed["train"]
    assert len(set(train)) == len(train)  # first_exhausted: nothing repeated
    share = sum(d in alpha for d in train) / len(train)
    assert 0.65 < share < 0.85, share  # the weights 3 : 1
    # the held-out splits are each part's own, whole: every held-out document, once
    for split in ("valid", "eval"):
        alone = [load_examples(task, DataConfig(source="text", files=(f,)), tmp_path, seed=0)[split] for f in ("alpha.txt", "beta.txt")]
        assert sorted(mixed[split]) == sorted(alone[0] + alone[1])
    assert not set(train) & set(mixed["valid"]) and not set(train) & set(mixed["eval"])
    assert set(train) <= alpha | beta

    info = mixed.info
    assert set(info) == {"mix 0: text (alpha.txt), weight 0.75", "mix 1: text (beta.txt), weight 0.25"}
    assert sum(counts["train"] for counts in info.values()) == len(train)
    assert info["mix 1: text (beta.txt), weight 0.25"]["eval"] == sum(d in beta for d in mixed["eval"])


def test_a_mixture_can_repeat_its_smaller_part_and_follows_the_seed(tmp_path):
    alpha, beta = _documents(tmp_path, "alpha", 400), _documents(tmp_path, "beta", 100)
    task = get_task("causal-lm")
    every = load_examples(task, _mixture(stopping_strategy="all_exhausted"), tmp_path, seed=0)["train"]
    once = load_examples(task, _mixture(), tmp_path, seed=0)["train"]
    assert set(every) >= set(once) and len(every) > len(set(every))  # beta's documents come again
    assert {d for d in every if d in alpha} == {d for d in once + every if d in alpha}  # all of alpha's training documents
    assert load_examples(task, _mixture(), tmp_path, seed=0)["train"] == once
    assert load_examples(task, _mixture(), tmp_path, seed=1)["train"] != once
    assert len({d for d in every if d in beta}) == len({d for d in once + every if d in beta})  # no beta document lost


def test_a_translation_mixture_reports_what_each_part_skipped(tmp_path):
    for name, n in (("first", 60), ("second", 30)):
        rows = [{"translation": {"en": f"{name} sentence {i}", "de": f"{name} Satz {i}"}} for i in range(n)]
        rows.append({"translation": {"en": f"{name} same", "de": f"{name} same"}})  # untranslated
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    parts = tuple(Part(1.0, {"source": "json", "files": (f"{name}.jsonl",)}) for name in ("first", "second"))
    mixed = load_examples(get_task("translation"), PairDataConfig(source="json", files=("first.jsonl",), mix=parts), tmp_path, seed=0)
    assert all(isinstance(p, tuple) and len(p) == 2 for p in mixed["train"])
    assert mixed.info["mix 1: json (second.jsonl), weight 0.5, pairs"]["untranslated"] == 1
    assert {s.split()[0] for s, _ in mixed["train"]} == {"first", "second"}


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_a_share_of_paragraphs_is_embedded_as_its_sentences(share):
    docs = [f"Paragraph {i} opens here, at its start. It goes on for a second sentence! Does it end after this one? Yes, it ends right now." for i in range(40)]
    cut = items(docs, share)
    whole = sum(c in docs for c in cut)
    assert whole == round(40 * (1 - share)) if share in (0.0, 1.0) else 10 < whole < 30
    assert len(cut) == whole + 4 * (40 - whole)  # a cut paragraph gives its 4 sentences
    assert items(docs, share) == cut  # which paragraphs are cut depends on their text alone


def test_prose_keeps_the_sentences_of_a_docstring_and_drops_its_code_and_tables():
    from distill.data import prose

    doc = (
        "Return the sum of the two numbers, as a new number of the same kind.\n\n"
        "Parameters\n----------\nx : int\n    The first number to add to the other one.\n\n"
        ">>> add(1, 2)\n3\n\n"
        "Example::\n\n    add(1, 2)\n\n"
        "Short line.\n\n"
        "The result does not overflow: Python's integers grow as needed, without limit."
    )
    assert prose(doc) == [
        "Return the sum of the two numbers, as a new number of the same kind.",
        "The result does not overflow: Python's integers grow as needed, without limit.",
    ]


def test_english_prose_is_wikipedia_and_news_as_plain_paragraphs():
    from distill.data import _wiki_text, english_prose

    markup = (
        "{{Infobox person|name=Ada {{nowrap|Lovelace}}}}\n"
        "'''Ada Lovelace''' was an English [[mathematician]] and [[Writer|writer]], chiefly known for her work "
        "on the proposed mechanical general-purpose computer.<ref name=\"a\">A book, p. 3.</ref>\n"
        "== Life ==\n"
        "* a list item that is long enough to be kept if lists were kept, which they are not here at all\n"
        "[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace]]]]\n"
        "She was the only legitimate child of the poet Lord Byron and the reformer Anne Isabella Milbanke&amp;nbsp;Byron.\n"
    )
    assert _wiki_text(markup) == (
        "Ada Lovelace was an English mathematician and writer, chiefly known for her work on the proposed mechanical "
        "general-purpose computer.\n\n"
        "She was the only legitimate child of the poet Lord Byron and the reformer Anne Isabella Milbanke\xa0Byron."
    )
    assert _wiki_text("#REDIRECT [[Somewhere else]]") == ""
    docs = english_prose()
    assert len(docs) > 350 and english_prose() == docs  # 101 articles and 300 news articles, in a fixed order
    text = "\n\n".join(docs)
    assert not any(mark in text for mark in ("[[", "{{", "<ref", "&nbsp;", "'''"))
    assert "Southern Highlands of New South Wales" in text  # the first news article
