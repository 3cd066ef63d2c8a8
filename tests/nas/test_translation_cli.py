"""Bad input to a translation study (and a translation teacher given to a causal-LM study) is
one line on stderr naming the key, exit code 2, no traceback, from the command line."""

import subprocess
import sys

import pytest

from tests.conftest import write_spec, write_translation_spec


def _po(path, entries, language="de"):
    head = f'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n"Language: {language}\\n"\n\n'
    path.write_text(head + "".join(f'msgid "{a}"\nmsgstr "{b}"\n\n' for a, b in entries), encoding="utf-8")


pytestmark = pytest.mark.slow  # `nas` in subprocesses on a translation study

CASES = {
    "one language": (["data.pair=['en']"], None, r"data.pair: must be [source language, target language]"),
    "a package without the target language": (["data.pair=['en', 'xx']"], None, "data.pair: package 'pycountry' ships no catalog for target language 'xx'"),
    "not a catalog": (
        ["data.package=''", "data.files=['notes.po']"],
        lambda d: (d / "notes.po").write_text("hello world\nnot a catalog\n"),
        "data.files: notes.po is not a gettext catalog",
    ),
    "nothing translated": (
        ["data.package=''", "data.files=['same.po']"],
        lambda d: _po(d / "same.po", [("Berlin", "Berlin"), ("Oslo", "Oslo"), ("Euro", "")]),
        "data.source: needs at least 3 usable en-de pairs after skipping, found 0",
    ),
    "a causal teacher": (["teacher.model='CAUSAL'"], None, "teacher.model: translation students learn from an encoder-decoder teacher"),
    "sequence KD with no beams": (["loss.sequence_kd=1.0", "loss.sequence_beams=0"], None, "loss.sequence_beams: must be >= 1"),
}  # fmt: skip


def _nas(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _one_line(proc, message):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("overrides, make, message", CASES.values(), ids=CASES.keys())
def test_bad_translation_input_is_one_line_exit_2(tmp_path, translation_teacher, teacher_dirs, overrides, make, message):
    if make is not None:
        make(tmp_path)
    spec = write_translation_spec(tmp_path, translation_teacher)
    overrides = [o.replace("CAUSAL", str(teacher_dirs["gpt2"])) for o in overrides]
    _one_line(_nas("search", str(spec), *overrides, cwd=tmp_path), message)


def test_a_translation_teacher_in_a_causal_lm_study_is_one_line_exit_2(tmp_path, translation_teacher):
    spec = write_spec(tmp_path, translation_teacher, name="causalmt")
    _one_line(_nas("search", str(spec), cwd=tmp_path), "teacher.model:")
