"""The MQTT control plane: presence, status, metrics and signed commands (see `plane`).

`protocol` holds what the runtime and `edgeflow ctl` share (topics, bodies, signatures) and imports
nothing heavy; the plane itself is imported only by a runtime whose topology has `[control]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ControlPlane", "set_presence"]

if TYPE_CHECKING:
    from .plane import ControlPlane, set_presence


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import plane

        return getattr(plane, name)
    raise AttributeError(name)
