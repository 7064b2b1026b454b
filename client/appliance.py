"""Client side of the appliance layer: host inspection and template rendering.

Functions take a :class:`client.Connection`::

    import client
    from client import appliance

    with client.connect() as conn:
        host = appliance.host_inspect(conn)        # {"memory_kib": ..., "cores": ...}
        xml = appliance.render(conn, open("router.xml").read())
        dom = conn.define_xml(xml)

Per-guest duties (power-cycle following, heartbeat) are configured in the domain XML's
``<metadata>`` (see qemud/appliance/metadata.py); their actions arrive as appliance
events (``conn.register_event(client.EventId.APPLIANCE)``).
"""

from __future__ import annotations

import json
from typing import Any

import protocol as P
from protocol import payloads as pl

from .connection import Connection

__all__ = ["host_inspect", "render", "heartbeat_stats"]


def host_inspect(conn: Connection) -> dict[str, Any]:
    """What the daemon sees of its host: memory_kib, memory_bytes, logical_cpus, cores,
    sockets, cpu_source, nics [{name, mac, driver, speed}], dmi ({field: value} or None)."""
    reply = conn._call(P.Procedure.HOST_INSPECT, P.Empty(), pl.StringReply)
    result: dict[str, Any] = json.loads(reply.value)
    return result


def render(conn: Connection, template: str, flags: int = 0) -> str:
    """The domain XML of an appliance template rendered against the daemon's host.

    Raises :class:`client.errors.QemudClientError` (XML error) naming the formula or
    placeholder and the position of a bad expression, or what makes the result invalid.
    """
    return conn._call(P.Procedure.APPLIANCE_RENDER, pl.RenderArgs(template, flags),
                      pl.StringReply).value


def heartbeat_stats(conn: Connection, domain: Any) -> dict[str, int | float | str]:
    """The ``heartbeat.*`` DOMAIN_STATS params of ``domain`` (empty if not watched)."""
    for dom, params in conn.domain_stats([domain]):
        if dom.name == domain.name:
            return {k: v for k, v in params.items() if k.startswith("heartbeat.")}
    return {}
