"""The oracle environments' one excuse to skip: the package index cannot be reached, and never under CI
(oracle_env.py, which builds LLaMA-Factory's, verl's and ms-swift's)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import llamafactory_env
import oracle_env
import pytest

_OFFLINE = ("WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(...: Failed to "
            "establish a new connection: [Errno -3] Temporary failure in name resolution')'\n"
            "ERROR: Could not find a version that satisfies the requirement torch==2.13.0\n")
_BROKEN = "ERROR: ResolutionImpossible: transformers==5.6.0 conflicts with tokenizers==0.99\n"


def _pip_failing_with(monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    def run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 1, stdout="", stderr=output)

    monkeypatch.setattr(oracle_env.subprocess, "run", run)


def test_an_unreachable_index_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    _pip_failing_with(monkeypatch, _OFFLINE)
    with pytest.raises(pytest.skip.Exception, match="unreachable"):
        oracle_env.pip(Path("/nonexistent"), "torch==2.13.0", what="LLaMA-Factory")


def test_an_unreachable_index_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    _pip_failing_with(monkeypatch, _OFFLINE)
    with pytest.raises(pytest.fail.Exception, match="Temporary failure in name resolution"):
        oracle_env.pip(Path("/nonexistent"), "torch==2.13.0", what="LLaMA-Factory")


def test_any_other_install_failure_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    _pip_failing_with(monkeypatch, _BROKEN)
    with pytest.raises(pytest.fail.Exception, match="ResolutionImpossible"):
        oracle_env.pip(Path("/nonexistent"), "transformers==5.6.0", what="LLaMA-Factory")


def test_the_environment_is_keyed_by_what_it_installs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLMCHECK_CACHE", str(tmp_path))
    first = llamafactory_env.env_dir()
    assert first.parent == tmp_path / "oracles" and first.name.startswith("llamafactory-")
    assert replace(llamafactory_env.ENV, no_deps=("llamafactory==0.9.4",)).root() != first
