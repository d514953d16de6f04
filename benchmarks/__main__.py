"""``python -m benchmarks [--quick] [--no-peers] ...``"""

from __future__ import annotations

from benchmarks.cli import main

raise SystemExit(main())
