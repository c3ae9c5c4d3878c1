"""LLaMA-Factory's own environment, the oracle for ``vlmcheck check`` on LLaMA-Factory configs.

LLaMA-Factory 0.9.5 pins ``transformers<=5.6.0`` (and older datasets, peft, trl) than the test extras, so it gets a
virtual environment of its own, built once by the test setup and cached in
``$VLMCHECK_CACHE/oracles/llamafactory-<hash>`` (the hash covers everything installed, so a change of pins builds a
new one). A lock file keeps parallel test runs from building it twice.

What is installed, and why:

- ``torch==2.13.0`` first and as a constraint: the local CPU wheel (any other torch pulls gigabytes of CUDA).
- ``llamafactory`` itself with ``--no-deps``, then the packages its data path imports, at versions inside its own
  pins (``extras/misc.py`` ``check_dependencies``). The web UI, API server and hub clients it also declares are
  never imported by ``get_dataset`` and would triple the build time.
- A stand-in ``torchaudio`` module (in this environment only): LLaMA-Factory's ``mm_plugin.py`` imports it at the
  top for audio, and no torchaudio loads on this torch. The stand-in raises if audio is ever read.

Everything runs offline (``HF_HUB_OFFLINE=1``): checkpoints are built locally by the test fixtures.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LLAMAFACTORY = "llamafactory==0.9.5"
TORCH = "torch==2.13.0"
# Inside LLaMA-Factory 0.9.5's own pins (setup metadata and extras/misc.py check_dependencies).
PACKAGES = (
    "transformers==5.6.0",
    "datasets==4.0.0",
    "accelerate==1.11.0",
    "peft==0.18.1",
    "trl==0.24.0",
    "omegaconf",
    "pyyaml",
    "pillow",
    "numpy",
)
TORCHAUDIO_STAND_IN = '''"""Stand-in for torchaudio in vlmcheck's LLaMA-Factory oracle environment (tests/frameworks/llamafactory_env.py):
LLaMA-Factory imports torchaudio at the top of mm_plugin.py for audio only, and none loads on this torch."""


def load(*args, **kwargs):
    raise RuntimeError("torchaudio stand-in: the oracle environment does not read audio")
'''
# Signs in pip's output that the package index could not be reached (the one case the tests skip, outside CI).
_UNREACHABLE = (
    "NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
    "Name or service not known", "Network is unreachable", "ConnectTimeout", "ReadTimeout", "ProxyError",
    "Connection refused", "Max retries exceeded",
)


def _spec() -> dict[str, object]:
    return {"python": sys.version_info[:2], "llamafactory": LLAMAFACTORY, "torch": TORCH, "packages": PACKAGES,
            "torchaudio": TORCHAUDIO_STAND_IN}


def env_dir() -> Path:
    cache = Path(os.environ.get("VLMCHECK_CACHE", Path.home() / ".cache" / "vlmcheck"))
    digest = hashlib.sha256(json.dumps(_spec(), sort_keys=True).encode()).hexdigest()[:12]
    return cache / "oracles" / f"llamafactory-{digest}"


def _python(root: Path) -> Path:
    return root / "bin" / "python"


def _pip(root: Path, *args: str) -> None:
    proc = subprocess.run([str(_python(root)), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        why = f"building LLaMA-Factory's oracle environment: pip install {' '.join(args)} failed:\n{output[-3000:]}"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI must never skip the proof
        if any(sign in output for sign in _UNREACHABLE):
            pytest.skip("the package index is unreachable: " + why)
        pytest.fail(why)


def _build(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)  # a build that died half way
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    constraints = root / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    _pip(root, TORCH)
    _pip(root, "-c", str(constraints), *PACKAGES)
    _pip(root, "--no-deps", LLAMAFACTORY)
    purelib = subprocess.run([str(_python(root)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "torchaudio.py").write_text(TORCHAUDIO_STAND_IN)
    (root / "ready").write_text(json.dumps(_spec(), default=str))


def oracle_python() -> Path:
    """The Python of LLaMA-Factory's environment, built on first use (about a minute), then reused."""
    root = env_dir()
    if (root / "ready").exists():
        return _python(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / (root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building it: wait for it
        if not (root / "ready").exists():
            _build(root)
    return _python(root)


def oracle_env() -> dict[str, str]:
    """The environment the oracle runs in: offline, and blind to this test run's own packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONNOUSERSITE="1")
    return env

