"""Each image file probed once per scan: datasets name the same file in many rows (several questions about
one picture, one document page per question), and a probe opens the file, parses its header and reads its
tail, where a ``stat`` is enough to know that it is the same file.

The answer (an :class:`~vlmcheck.data.images.ImageInfo`, or the problem the file has) is kept under the
path and the file's identity and version as ``stat`` gives them: device, inode, size, and modification and
change times in nanoseconds. A file replaced, rewritten, truncated, renamed over or re-permissioned since
has another identity and is probed again; the answer is the one the probe gives for those bytes.
``VLMCHECK_PROBE_CACHE=0`` turns it off.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Any

from vlmcheck.data.images import ImageInfo, ImageProblem, probe_path

_Key = tuple[str, int, int, int, int, int, bool]


class ProbeCache:
    """:func:`~vlmcheck.data.images.probe_path` with answers kept per file version (module doc).

    >>> probes = ProbeCache()
    >>> probes.probe_path(Path("img.png"), check_integrity=True)  # doctest: +SKIP
    ImageInfo(width=640, height=480, orientation=1, format='PNG')
    """

    def __init__(self, *, max_entries: int = 1 << 17, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = os.environ.get("VLMCHECK_PROBE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")
        self.enabled = enabled
        self.max_entries = max_entries
        self._answers: OrderedDict[_Key, ImageInfo | tuple[str, str, dict[str, Any]]] = OrderedDict()

    def probe_path(self, path: Path, *, check_integrity: bool = True) -> ImageInfo:
        if not self.enabled:
            return probe_path(path, check_integrity=check_integrity)
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return probe_path(path, check_integrity=check_integrity)  # it says what is wrong with the path
        if not stat.S_ISREG(st.st_mode):
            return probe_path(path, check_integrity=check_integrity)
        key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, check_integrity)
        answer = self._answers.get(key)
        if answer is None:
            try:
                answer = probe_path(path, check_integrity=check_integrity)
            except ImageProblem as p:
                if p.message.startswith("read error"):  # an I/O error may pass: the next row tries again
                    raise
                answer = (p.code, p.message, p.data)
            self._answers[key] = answer
            if len(self._answers) > self.max_entries:
                self._answers.popitem(last=False)
        else:
            self._answers.move_to_end(key)
        if isinstance(answer, ImageInfo):
            return answer
        code, message, data = answer
        raise ImageProblem(code, message, **data)  # a new exception each time: a raised one keeps its traceback
