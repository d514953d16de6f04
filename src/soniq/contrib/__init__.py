"""Framework integrations, one module per framework; each imports its framework, so import the
module you use (``soniq.contrib.fastapi``, ``soniq.contrib.litestar``, ``soniq.contrib.django``)
and ``import soniq`` stays light.
"""

from __future__ import annotations
