"""Optional features built on the runtime's seams and the backends' feature stores (DESIGN.md §2).

Each feature module holds logic only; its persistence is a store protocol in
:mod:`soniq.backends.stores`, implemented per backend. ``app.py`` wires features in lazily.
"""

from __future__ import annotations

from soniq.features.dead_letter import DeadLetter

__all__ = ["DeadLetter"]
