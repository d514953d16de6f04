"""Every ```python block in docs/ runs, page by page, as a reader would type it.

The blocks of one page run in order in one namespace (a later block may use what an earlier one
defined), in a fresh interpreter whose working directory is a temporary folder. Top-level ``await``
is allowed: those blocks run on one asyncio loop kept for the whole page (a blocking portal), and
plain blocks run in the main thread, so a block may also call ``anyio.run(...)`` or ``trio.run(...)``.
The namespace is a fresh ``__main__`` module, as in the ``python -m asyncio`` REPL.

Markers, in an HTML comment on the line before the fence:

- ``<!-- skip: reason -->`` skips that block (at most one block in ten may be skipped).
- ``<!-- postgres -->`` anywhere on a page runs it with ``SONIQ_DATABASE_URL`` set to an empty
  PostgreSQL database (``Soniq()`` with no URL then uses it).

``--8<-- "path"`` lines (pymdownx.snippets) are replaced by that file's text, as in the built site.

Run as a script (``python tests/test_docs.py docs/page.md``), this module is that runner.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.S | re.M)
SKIP = re.compile(r"<!--\s*skip:\s*(?P<reason>\S.*?)\s*-->\s*$")
SNIPPET = re.compile(r'^(?P<indent>[ \t]*)--8<--\s+"(?P<path>[^"]+)"\s*$', re.M)
MAX_SKIP_RATIO = 0.10


@dataclass
class Block:
    page: Path
    line: int
    code: str
    skip: str | None


def expand_snippets(text: str) -> str:
    def include(match: re.Match[str]) -> str:
        body = (ROOT / match["path"]).read_text()
        return "".join(match["indent"] + line if line.strip() else line
                       for line in body.splitlines(keepends=True)).rstrip("\n")

    return SNIPPET.sub(include, text)


def python_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        if match["lang"] not in ("python", "py"):
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        indent = match["indent"]
        code = "".join(ln.removeprefix(indent) for ln in match["body"].splitlines(keepends=True))
        blocks.append(Block(page, line, expand_snippets(code), skip["reason"] if skip else None))
    return blocks


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if python_blocks(p))


def needs_postgres(page: Path) -> bool:
    return "<!-- postgres -->" in page.read_text()


# -- the tests ------------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # running as the page runner, outside pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    PAGES = doc_pages()

    def test_there_are_docs_to_test() -> None:
        assert len(PAGES) >= 10, PAGES

    def test_few_blocks_are_skipped() -> None:
        blocks = [b for page in DOCS.rglob("*.md") for b in python_blocks(page)]
        skipped = [f"{b.page.relative_to(ROOT)}:{b.line} ({b.skip})" for b in blocks if b.skip]
        assert len(skipped) <= MAX_SKIP_RATIO * len(blocks), skipped

    def test_every_block_parses() -> None:
        for page in DOCS.rglob("*.md"):
            for block in python_blocks(page):
                ast.parse(block.code, f"{page.relative_to(ROOT)}:{block.line}",
                          feature_version=(3, 11))

    @pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
    def test_page_runs(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SONIQ_DATABASE_URL"}
        # As a reader would run them, but a worker on SQLite (no LISTEN) polls every 0.1 s rather
        # than 5 s, so a retried or scheduled job is not waited for (test_examples.FAST_POLL).
        env["SONIQ_POLL_INTERVAL"] = "0.1"
        if needs_postgres(page):
            request.applymarker(pytest.mark.postgres)
            env["SONIQ_DATABASE_URL"] = request.getfixturevalue("pg_url")
        done = subprocess.run([sys.executable, __file__, str(page)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr


# -- the runner -----------------------------------------------------------------------------------
def run_page(page: Path) -> None:
    import types

    import anyio.from_thread

    # A module of its own named __main__, as in the REPL: annotations that frameworks resolve
    # through sys.modules (Litestar, pydantic) find the page's names, and job names are bare.
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    namespace = module.__dict__
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        for block in python_blocks(page):
            if block.skip:
                continue
            print(f"--- {page.relative_to(ROOT)}:{block.line}", flush=True)
            code = compile(block.code, f"{page.relative_to(ROOT)}:{block.line}", "exec",
                           flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
            # eval/exec: the code is this repository's own docs, run as a reader would.
            if code.co_flags & inspect.CO_COROUTINE:  # the block awaits at top level

                async def run(code: object = code) -> None:
                    await eval(code, namespace)

                portal.call(run)
            else:
                exec(code, namespace)


if __name__ == "__main__":
    run_page(Path(sys.argv[1]).resolve())
