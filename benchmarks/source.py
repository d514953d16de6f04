"""Freeze the Soniq source for the length of a run.

Other work goes on in this tree while a full run (half an hour) measures it: a migration or a
module that changes mid-run would make one run measure two versions, or break the worker
subprocesses outright (a schema set up by the old code, checked by the new). So the run copies
``src/soniq`` once, at its start, into a temporary directory that comes first on ``sys.path`` for
this process and on ``PYTHONPATH`` for every worker it starts. Call :func:`freeze` before anything
imports ``soniq``.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["freeze"]


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(folder)).encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()[:12]


def freeze(root: Path) -> str:
    """Snapshot ``root/src/soniq`` and use the copy; returns the snapshot's content digest."""
    if "soniq" in sys.modules:
        raise RuntimeError("freeze() must run before soniq is imported")
    copy = Path(tempfile.mkdtemp(prefix="soniq_bench_src_"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    shutil.copytree(root / "src" / "soniq", copy / "soniq",
                    ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(copy))
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy), str(root), inherited]))
    return _digest(copy / "soniq")
