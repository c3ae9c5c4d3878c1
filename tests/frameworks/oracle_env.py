"""A training framework's own environment, the oracle its ``vlmcheck check`` tests run against.

LLaMA-Factory, verl and ms-swift pin versions of transformers, datasets and trl that clash with the test extras, so
each gets a virtual environment of its own, built once by the test setup and cached in
``$VLMCHECK_CACHE/oracles/<name>-<hash>`` (default ``~/.cache/vlmcheck``; the hash covers everything installed,
so a change of pins builds a new one). A lock file keeps parallel test runs from building it twice.

Every environment is built the same way:

- ``torch==2.13.0`` first and as a constraint: the local CPU wheel (any other torch pulls gigabytes of CUDA).
- the framework's ``packages``, at versions inside its own pins;
- its ``no_deps`` packages without their declared dependencies (the framework itself when its list pulls in web
  UIs, loggers and hub clients its data path never imports);
- its ``modules``: stand-in modules written into the environment's site-packages (in that environment only).

Building needs the package index; when it cannot be reached the tests skip, except under CI, which must never
skip the proof. Any other install failure fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

TORCH = "torch==2.13.0"
# Signs in pip's output that the package index could not be reached (the one case the tests skip, outside CI).
UNREACHABLE = (
    "NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
    "Name or service not known", "Network is unreachable", "ConnectTimeout", "ReadTimeout", "ProxyError",
    "Connection refused", "Max retries exceeded",
)

# The start of an oracle script that runs a framework with transformers' own Qwen2-VL processor built from the test
# checkpoint's files, images only: qwen-vl-utils imports torchvision at module level for its video path (images
# never touch it, and no CPU torchvision exists for this torch), so stand-in modules are in place while it is
# imported; ``ImageOnly`` is the processor without its torchvision video processor. It reads the job (a JSON
# argument) and defines ``job``, ``folder`` (the checkpoint) and ``values`` (its image processor settings).
QWEN_IMAGES_PRELUDE = textwrap.dedent('''
    import json, sys, types

    names = ["torchvision", "torchvision.io", "torchvision.transforms"]
    stand_in = {n: types.ModuleType(n) for n in names}
    stand_in["torchvision"].io = stand_in["torchvision.io"]
    stand_in["torchvision"].transforms = stand_in["torchvision.transforms"]
    stand_in["torchvision.transforms"].InterpolationMode = types.SimpleNamespace(BICUBIC=3)
    sys.modules.update(stand_in)
    import qwen_vl_utils  # noqa: F401
    for n in names:
        del sys.modules[n]

    import transformers
    from transformers import AutoTokenizer, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    job = json.loads(sys.argv[1])
    folder = job["checkpoint"]
    values = json.load(open(folder + "/preprocessor_config.json"))
    values = {k: v for k, v in values.items() if k not in ("image_processor_type", "processor_class")}

    class ImageOnly(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)
''')


def cache() -> Path:
    return Path(os.environ.get("VLMCHECK_CACHE", Path.home() / ".cache" / "vlmcheck")) / "oracles"


@dataclass(frozen=True)
class OracleEnv:
    """One framework's environment: what it installs, and where it is cached."""

    name: str
    packages: tuple[str, ...]
    no_deps: tuple[str, ...] = ()
    modules: tuple[tuple[str, str], ...] = ()  # (file name, text) put into site-packages

    def key(self) -> str:
        spec: list[object] = [TORCH, self.packages, self.no_deps, sys.version_info[:2]]
        if self.modules:
            spec.append(dict(self.modules))
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]

    def root(self) -> Path:
        return cache() / f"{self.name}-{self.key()}"

    def python(self) -> Path:
        """The environment's Python, built on first use (minutes), then reused."""
        root = self.root()
        if (root / "ready").exists():
            return root / "bin" / "python"
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / (root.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building it: wait for it
            if not (root / "ready").exists():
                self._build(root)
        return root / "bin" / "python"

    def _build(self, root: Path) -> None:
        if root.exists():
            shutil.rmtree(root)  # a build that died half way
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        constraints = root / "constraints.txt"
        constraints.write_text(TORCH + "\n")
        python = root / "bin" / "python"
        pip(python, TORCH, what=self.name)
        pip(python, "-c", str(constraints), *self.packages, what=self.name)
        if self.no_deps:
            pip(python, "--no-deps", *self.no_deps, what=self.name)
        if self.modules:
            purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip()
            for file, text in self.modules:
                Path(purelib, file).write_text(text)
        (root / "ready").write_text(json.dumps([self.name, self.key()]) + "\n")


def pip(python: Path, *args: str, what: str) -> None:
    """``pip install`` in an oracle environment: skipped when the package index is unreachable (never under CI),
    failed on any other error."""
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        why = f"building {what}'s oracle environment: pip install {' '.join(args)} failed:\n{output[-3000:]}"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI must never skip the proof
        if any(sign in output for sign in UNREACHABLE):
            pytest.skip("the package index is unreachable: " + why)
        pytest.fail(why)

