"""Sentence pairs for translation: gettext catalogs, the hub's translation layout and two
text columns, what is skipped and why, and splits by source sentence."""

import json

import polib
import pytest

from distill.errors import InputError
from distill.tasks.pairs import PairDataConfig, load_pairs


def _catalog(path, language="de"):
    po = polib.POFile()
    po.metadata = {"Language": language, "Content-Type": "text/plain; charset=UTF-8"}
    entries = [
        ("Albania", "Albanien", []),
        ("Algeria", "Algerien", []),
        ("Andorra", "Andorra", []),  # untranslated: msgstr equal to msgid
        ("Angola", "", []),  # empty
        ("Anguilla", "Angwilla", ["fuzzy"]),
        ("Austria", "Österreich", []),
        ("Belgium", "Belgien", []),
        ("Albania", "Albanien (Republik)", []),  # a repeated source
        *[(f"Region number {i}", f"Region Nummer {i}", []) for i in range(30)],
    ]
    for msgid, msgstr, flags in entries:
        po.append(polib.POEntry(msgid=msgid, msgstr=msgstr, flags=flags))
    po.append(polib.POEntry(msgid="Old entry", msgstr="Alter Eintrag", obsolete=True))
    po.save(str(path))
    return path


def _mo_bytes():
    from distill.tasks.pairs import package_catalogs

    return package_catalogs("pycountry", "de")[0].read_bytes()  # a real compiled catalog


def test_a_po_catalog_skips_and_counts_what_teaches_nothing(tmp_path):
    _catalog(tmp_path / "countries.po")
    splits, counts = load_pairs(PairDataConfig(files=("countries.po",)), tmp_path, seed=0)
    assert counts == {"read": 38, "kept": 34, "empty": 1, "untranslated": 1, "fuzzy": 1, "repeated source": 1}
    pairs = [p for split in splits.values() for p in split]
    assert len(pairs) == 34 and ("Albania", "Albanien") in pairs  # the first translation of a repeated source
    assert not {"Andorra", "Angola", "Anguilla", "Old entry"} & {s for s, _ in pairs}


def test_the_mo_catalogs_a_package_ships_split_by_source_sentence(tmp_path):
    cfg = PairDataConfig(package="pycountry", pair=("en", "de"))
    splits, counts = load_pairs(cfg, tmp_path, seed=0)
    assert counts["kept"] > 3000 and counts["untranslated"] > 1000 and counts["fuzzy"] == 0
    sources = {name: {s for s, _ in pairs} for name, pairs in splits.items()}
    assert not sources["train"] & sources["eval"] and not sources["train"] & sources["valid"]
    assert not sources["valid"] & sources["eval"]
    assert abs(len(splits["eval"]) - 0.1 * counts["kept"]) <= 1
    assert ("Albania", "Albanien") in [p for split in splits.values() for p in split]
    again, _ = load_pairs(cfg, tmp_path, seed=0)
    assert again == splits
    other, _ = load_pairs(cfg, tmp_path, seed=1)
    assert other["eval"] != splits["eval"]


def test_the_translation_layout_and_two_columns_read_the_same_pairs(tmp_path):
    rows = [{"en": f"The house number {i}.", "de": f"Das Haus Nummer {i}."} for i in range(20)]
    rows += [{"en": "", "de": "Leer."}, {"en": "OK", "de": "OK"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"translation": r}) + "\n" for r in rows))
    (tmp_path / "cols.jsonl").write_text("".join(json.dumps({"src": r["en"], "tgt": r["de"]}) + "\n" for r in rows))
    layout, counts = load_pairs(PairDataConfig(source="json", files=("pairs.jsonl",)), tmp_path, seed=3)
    columns, _ = load_pairs(
        PairDataConfig(source="json", files=("cols.jsonl",), source_column="src", target_column="tgt"), tmp_path, seed=3
    )
    assert layout == columns and counts["kept"] == 20 and counts["empty"] == 1 and counts["untranslated"] == 1
    reverse, _ = load_pairs(PairDataConfig(source="json", files=("pairs.jsonl",), pair=("de", "en")), tmp_path, seed=3)
    assert {(t, s) for split in reverse.values() for s, t in split} == {p for split in layout.values() for p in split}


@pytest.mark.parametrize(
    "make, cfg, key",
    [
        (lambda d: (d / "p.jsonl").write_text(json.dumps({"translation": {"en": "a b", "fr": "c d"}}) + "\n"),
         dict(source="json", files=("p.jsonl",)), "data.pair"),
        (lambda d: _catalog(d / "fr.po", language="fr"), dict(files=("fr.po",)), "data.pair"),
        (lambda d: (d / "notes.po").write_text("hello world\nnot a catalog\n"), dict(files=("notes.po",)), "data.files"),
        (lambda d: (d / "notes.txt").write_text("hello\n"), dict(files=("notes.txt",)), "data.files"),
        (lambda d: (d / "p.jsonl").write_text(json.dumps({"translation": {"en": "Same", "de": "Same"}}) + "\n"),
         dict(source="json", files=("p.jsonl",)), "data.source"),
        (lambda d: None, dict(package="pycountry", pair=("en", "xx")), "data.pair"),
        (lambda d: None, dict(package="no_such_package_here"), "data.package"),
        (lambda d: None, dict(package="no_such_parent.child"), "data.package"),
        (lambda d: (d / "cut.mo").write_bytes(_mo_bytes()[:40]), dict(files=("cut.mo",)), "data.files"),
        (lambda d: (d / "n.jsonl").write_text(json.dumps({"a": 1, "b": "zwei"}) + "\n"),
         dict(source="json", files=("n.jsonl",), source_column="a", target_column="b"), "data.source"),
    ],
)
def test_bad_data_is_one_error_naming_the_key(tmp_path, make, cfg, key):
    make(tmp_path)
    with pytest.raises(InputError, match=f"^{key}: "):
        load_pairs(PairDataConfig(**cfg), tmp_path, seed=0)


@pytest.mark.parametrize(
    "cfg, key",
    [
        (dict(pair=("en",)), "pair"),
        (dict(pair=("en", "en"), package="pycountry"), "pair"),
        (dict(), "files"),
        (dict(package="pycountry", files=("a.po",)), "files"),
        (dict(source="json"), "files"),
        (dict(source="json", files=("a.json",), package="pycountry"), "package"),
        (dict(package="pycountry", source_column="en"), "source_column"),
        (dict(package="pycountry", max_length=2), "max_length"),
    ],
)
def test_bad_data_settings_name_their_key(cfg, key):
    with pytest.raises(ValueError, match=f"^{key}: "):
        PairDataConfig(**cfg)
