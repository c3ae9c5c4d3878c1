"""LLaMA-Factory's own environment, the oracle for ``vlmcheck check`` on LLaMA-Factory configs.

LLaMA-Factory 0.9.5 pins ``transformers<=5.6.0`` (and older datasets, peft, trl) than the test extras, so it gets a
virtual environment of its own (oracle_env.py: built once by the test setup, cached in
``$VLMCHECK_CACHE/oracles/llamafactory-<hash>``).

What is installed, and why:

- ``torch==2.13.0`` first and as a constraint (oracle_env.py).
- ``llamafactory`` itself with ``--no-deps``, then the packages its data path imports, at versions inside its own
  pins (``extras/misc.py`` ``check_dependencies``). The web UI, API server and hub clients it also declares are
  never imported by ``get_dataset`` and would triple the build time.
- A stand-in ``torchaudio`` module (in this environment only): LLaMA-Factory's ``mm_plugin.py`` imports it at the
  top for audio, and no torchaudio loads on this torch. The stand-in raises if audio is ever read.

Everything runs offline (``HF_HUB_OFFLINE=1``): checkpoints are built locally by the test fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

from oracle_env import OracleEnv

LLAMAFACTORY = "llamafactory==0.9.5"
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
    # videos: LLaMA-Factory reads their stream metadata and decodes them with PyAV (is_pyav_available)
    "av>=14",
)
TORCHAUDIO_STAND_IN = '''"""Stand-in for torchaudio in vlmcheck's LLaMA-Factory oracle environment (tests/frameworks/llamafactory_env.py):
LLaMA-Factory imports torchaudio at the top of mm_plugin.py for audio only, and none loads on this torch."""


def load(*args, **kwargs):
    raise RuntimeError("torchaudio stand-in: the oracle environment does not read audio")
'''
ENV = OracleEnv("llamafactory", packages=PACKAGES, no_deps=(LLAMAFACTORY,),
                modules=(("torchaudio.py", TORCHAUDIO_STAND_IN),))


def env_dir() -> Path:
    return ENV.root()


def oracle_python() -> Path:
    """The Python of LLaMA-Factory's environment, built on first use (about a minute), then reused."""
    return ENV.python()


def oracle_env() -> dict[str, str]:
    """The environment the oracle runs in: offline, and blind to this test run's own packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONNOUSERSITE="1")
    return env
