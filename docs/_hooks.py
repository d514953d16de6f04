"""mkdocs hooks: pages generated from the code, so they cannot drift, and ``llms.txt``.

- ``reference/cli.md``: from the cyclopts app (``soniq.cli.app.generate_docs``).
- ``reference/dashboard-api.md``: from the dashboard's OpenAPI schema (Litestar).
- ``reference/schema.md``: the migration SQL of each backend, as shipped.
- ``reference/settings.md``: every field of ``SoniqSettings``.
- ``llms.txt`` (an index of the pages) and ``llms-full.txt`` (their text).
- Sphinx roles left in docstrings (``:class:`~soniq.X` ``) render as plain code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def cli_page() -> str:
    from soniq.cli import app

    body = app.generate_docs(output_format="markdown", recursive=True, heading_level=2)
    return ("# CLI reference\n\nGenerated from the `soniq` command's cyclopts app; "
            "`soniq COMMAND --help` prints the same text.\n\n" + body)


def dashboard_api_page() -> str:
    from soniq import Soniq
    from soniq.dashboard import create_dashboard_app

    schema = create_dashboard_app(Soniq(backend="memory")).openapi_schema.to_schema()
    lines = ["# Dashboard API", "",
             ("The dashboard serves a JSON API under `/api/`; its OpenAPI schema is at "
             "`/api/schema/openapi.json`. Writes need `SONIQ_DASHBOARD_API_KEY` (as "
             "`Authorization: Bearer <key>`) or a loopback caller; see "
             "[Security](../guides/security.md). Generated from the schema:"), "",
             "| Method | Path | Summary |", "|---|---|---|"]
    for path, item in sorted(schema.get("paths", {}).items()):
        if not path.startswith("/api"):
            continue
        for method, op in item.items():
            summary = (op.get("summary") or op.get("description") or "").splitlines()[0:1]
            text = summary[0].replace("|", "\\|") if summary else ""
            lines.append(f"| `{method.upper()}` | `{path}` | {text} |")
    lines += ["", "## The schema", "", "```json",
              json.dumps(schema, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def settings_page() -> str:
    from soniq.settings import SoniqSettings

    lines = ["# Settings", "",
             ("Every setting is a keyword of `Soniq(...)`, a `SONIQ_*` environment variable, or a "
             "line in `.env` — in that order of precedence, then the default. List settings are "
             "comma-separated in the environment. Generated from `soniq.settings.SoniqSettings`."),
             "", "| Keyword | Environment | Type | Default | Description |", "|---|---|---|---|---|"]
    for name, field in SoniqSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(secret)" if name in ("database_url", "secret_keys") and default else repr(default)
        kind = getattr(field.annotation, "__name__", None) or str(field.annotation)
        kind = kind.replace("typing.", "").replace("pydantic.types.", "").replace("|", "\\|")
        text = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `SONIQ_{name.upper()}` | `{kind}` | `{shown}` | {text} |")
    return "\n".join(lines) + "\n"


def schema_page() -> str:
    out = ["# Database schema", "",
           ("Soniq's tables, as the migrations create them. PostgreSQL is migrated only by "
           "`soniq setup` (or `await app.setup()`); SQLite creates its schema on first use. "
           "`soniq migrations sql` prints the same SQL for your own migration tool."), ""]
    for backend in ("postgres", "sqlite"):
        out += [f"## {'PostgreSQL' if backend == 'postgres' else 'SQLite'}", ""]
        for sql in sorted((ROOT / "src/soniq/migrations" / backend).glob("*.sql")):
            out += [f"### `{sql.name}`", "", "```sql", sql.read_text().strip(), "```", ""]
    return "\n".join(out)


GENERATED = {
    "reference/cli.md": cli_page,
    "reference/dashboard-api.md": dashboard_api_page,
    "reference/schema.md": schema_page,
    "reference/settings.md": settings_page,
}


def llms_texts(config: Any, generated: dict[str, str]) -> tuple[str, str]:
    """``llms.txt`` (https://llmstxt.org: title, summary, a link per page) and ``llms-full.txt``
    (every page's Markdown, in the order of the navigation)."""
    docs = Path(config["docs_dir"])
    pages: list[tuple[str, str, str]] = []  # section, title, source path

    def walk(items: list[Any], section: str) -> None:
        for item in items:
            for title, value in item.items():
                if isinstance(value, list):
                    walk(value, title)
                else:
                    pages.append((section, title, value))

    walk(config["nav"], "Docs")
    head = [f"# {config['site_name']}", "", f"> {config['site_description']}", ""]
    index, full, section = list(head), list(head), None
    for sec, title, uri in pages:
        if sec != section:
            index += ["", f"## {sec}", ""]
            section = sec
        url = "./" if uri == "index.md" else uri.removesuffix(".md") + "/"
        index.append(f"- [{title}]({url}): source `docs/{uri}`")
        text = generated[uri] if uri in generated else (docs / uri).read_text()
        full += ["", "---", "", text]
    return "\n".join(index) + "\n", "\n".join(full) + "\n"


def on_files(files: Files, config: Any) -> Files:
    generated = {uri: make() for uri, make in GENERATED.items()}
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    index, full = llms_texts(config, generated)
    files.append(File.generated(config, "llms.txt", content=index))
    files.append(File.generated(config, "llms-full.txt", content=full))
    return files


SPHINX_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):<code>(~?)([\w.]+)</code>")


def on_page_content(html: str, **_: Any) -> str:
    return SPHINX_ROLE.sub(
        lambda m: f"<code>{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}</code>", html)
