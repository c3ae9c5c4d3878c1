"""ms-swift's own environment, the oracle for ``vlmcheck check`` on ``swift sft`` scripts (test_swift_oracle.py,
test_swift_gemma3.py).

ms-swift 4.6 pins ``trl<1.0`` and ``datasets<4.8.5``, which clash with the test extras: it gets a virtual environment
of its own (oracle_env.py: built once by the test setup, cached in ``$VLMCHECK_CACHE/oracles/swift-<hash>``, torch
kept at 2.13.0). qwen-vl-utils comes without its dependencies (it would pull torchvision).
"""

from __future__ import annotations

from oracle_env import OracleEnv

REQUIREMENTS = ("ms-swift==4.6.0",)
NO_DEPS = ("qwen-vl-utils==0.0.14",)

ENV = OracleEnv("swift", packages=REQUIREMENTS, no_deps=NO_DEPS)
oracle_python = ENV.python
