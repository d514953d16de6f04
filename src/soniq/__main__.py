"""``python -m soniq`` runs the command line."""

from __future__ import annotations

from soniq.cli import main

if __name__ == "__main__":
    main()
