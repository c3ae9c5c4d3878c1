"""One findings type and one catalogue: every code family (VC scan, VL lint, VT template, VR runtime) registers
into vlmcheck.catalogue; explain, the docs pages and every finding read it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import vlmcheck.catalogue as registry
from vlmcheck.catalogue import (
    Catalogue,
    Finding,
    Rule,
    Severity,
    catalogues,
    families,
    lookup,
    register,
    rule,
)
from vlmcheck.cli import main

ROOT = Path(__file__).resolve().parent.parent
ALL = [(c, r) for c in catalogues() for r in c.rules]


def test_every_code_family_is_registered() -> None:
    assert {c.prefix for c in catalogues()} >= {"VC", "VL", "VT", "VR"}


def test_codes_and_names_are_unique_across_families() -> None:
    codes = [r.code for _, r in ALL]
    names = [r.name for _, r in ALL]
    assert len(set(codes)) == len(codes) and len(set(names)) == len(names)


@pytest.mark.parametrize(("catalogue", "entry"), ALL, ids=[r.code for _, r in ALL])
def test_every_code_is_anchored_on_its_page_and_explained(catalogue: Catalogue, entry: Rule) -> None:
    assert re.fullmatch(rf"{catalogue.prefix}\d{{3}}", entry.code)
    page = (ROOT / catalogue.page).read_text(encoding="utf-8")
    assert f'<a id="{entry.anchor}"></a>' in page
    result = CliRunner().invoke(main, ["explain", entry.name])
    assert result.exit_code == 0
    assert result.output.startswith(f"{entry.code} {entry.name} ({entry.severity})\n")
    assert result.output.endswith(f"Docs: {catalogue.page}#{entry.anchor}\n")


def test_explain_help_names_every_code_family_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The help (and docs/cli.md, generated from it) lists what the registry holds, so it cannot drift: a family
    registered later is listed too."""
    def help_text() -> str:
        return " ".join(CliRunner().invoke(main, ["explain", "--help"]).output.split())

    assert families() == ", ".join(f"{c.prefix} {c.reporter}" for c in catalogues())
    assert f"({families()})" in help_text()
    assert "VR runtime" in help_text()
    later = Catalogue("VZ", "elsewhere", "docs/findings.md", (Rule("VZ001", "zz-test", Severity.INFO, "t", "w", "f"),))
    monkeypatch.setitem(registry._CATALOGUES, "VZ", later)  # not register(): the registry is left as it was
    assert "VZ elsewhere" in help_text()


def test_the_readme_names_every_code_family_explain_reads() -> None:
    line = next(x for x in (ROOT / "README.md").read_text(encoding="utf-8").splitlines() if "`vlmcheck explain CODE`" in x)
    assert families() in line


def test_a_code_taken_by_another_family_is_refused() -> None:
    clash = Rule("VX001", "image-span-cut", Severity.ERROR, "t", "w", "f")
    with pytest.raises(ValueError, match="image-span-cut is already a VC"):
        register(Catalogue("VX", "test", "docs/findings.md", (clash,)))
    with pytest.raises(ValueError, match="three digits"):
        Catalogue("VX", "test", "docs/findings.md", (Rule("VY001", "n", Severity.INFO, "t", "w", "f"),))


def test_unknown_code_names_the_families() -> None:
    with pytest.raises(Exception, match="VR codes are VR001"):
        lookup("VR999")


def test_every_finding_is_one_type() -> None:
    from vlmcheck.lint import LintFinding
    from vlmcheck.templates import TemplateFinding

    lint = LintFinding("VL301", "packing: true", "set packing: false", option="packing")
    template = TemplateFinding("VT003", "every label is masked", "drop it", index=4)
    assert isinstance(lint, Finding) and isinstance(template, Finding)
    assert (lint.severity, template.severity) == (Severity.ERROR, Severity.ERROR)
    # the JSON keys each command wrote before are kept
    assert list(lint.to_dict()) == ["code", "name", "severity", "option", "message", "fix", "data"]
    assert list(template.to_dict()) == ["code", "name", "severity", "index", "id", "message", "fix", "data"]
    assert str(template) == "VT003 error: sample 4: every label is masked. Fix: drop it"


def test_runtime_codes_are_catalogued() -> None:
    """The callback's diagnoses and the guards' errors and repairs carry codes that the catalogue holds."""
    pytest.importorskip("transformers")
    import inspect

    from vlmcheck.integrations import callbacks, guards

    source = inspect.getsource(callbacks)
    emitted = set(re.findall(r'_report\(\s*state, "([a-z-]+)"', source))
    assert emitted == set(callbacks._CHECKS) == {"loss-zero", "loss-nan", "grad-nan", "reward-std-zero"}
    for name in emitted:
        assert lookup(name).rule.code.startswith("VR0")
    diagnosis = callbacks.Diagnosis(step=3, code="loss-nan", message="the loss is nan.", check=callbacks._CHECKS["loss-nan"])
    assert diagnosis.finding.code == "VR002" and diagnosis.finding.severity == Severity.ERROR
    # the guards' public module and the private ones it is the face of (integrations/_*.py)
    sources = [inspect.getsource(guards)] + [p.read_text() for p in Path(guards.__file__).parent.glob("_*.py")]
    codes = set(re.findall(r'code(?:: str)? ?= ?"(VR\d{3})"', "\n".join(sources)))
    assert codes == {"VR101", "VR102", "VR103"}
    for code in codes:
        assert rule(code).code == code


def test_the_family_order_does_not_depend_on_what_was_imported_first() -> None:
    import subprocess
    import sys

    code = "import vlmcheck.integrations.catalogue; from vlmcheck.catalogue import families; print(families())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == families() == "VC scan, VL lint, VT template, VR runtime"
