"""Client side of appliance images and the support bundle (docs/APPLIANCE-IMAGES.md).

Functions take a :class:`client.Connection`::

    import client
    from client import appliance_images as images

    with client.connect() as conn:
        ref = images.import_appliance(conn, "/srv/router-1.0.tar.gz")   # "router:1.0"
        dom = images.deploy(conn, "router", "edge1")                    # newest version
        images.update(conn, dom, "1.1")       # A/B; confirmation arrives as an event
        images.factory_reset(conn, dom)
        for info in images.list_appliances(conn):
            print(info.name, info.version, info.vms)
        with open("bundle.tar.gz", "wb") as f:
            images.support_bundle(conn, f)

Update outcomes (``update-applied``, ``update-confirmed``, ``update-rolled-back``) are
appliance events: ``conn.register_event(client.EventId.APPLIANCE)``.
"""

from __future__ import annotations

from typing import BinaryIO

import protocol as P
from protocol import payloads as pl

from .connection import Connection
from .domain import Domain

__all__ = ["import_appliance", "deploy", "update", "factory_reset", "list_appliances",
           "support_bundle", "ApplianceInfo", "DEPLOY_START"]

ApplianceInfo = pl.ApplianceInfo
#: DeployArgs.flags: start the VM once it is defined
DEPLOY_START = 1


def import_appliance(conn: Connection, path: str) -> str:
    """Import the tarball at ``path`` (on the daemon's host); returns ``"NAME:VERSION"``.

    Raises InvalidArgError naming the missing file or bad field of a broken tarball, and
    ConfigUnsupportedError for an appliance this host cannot run (arch, kvm, features).
    """
    return conn._call(P.Procedure.APPLIANCE_IMPORT, pl.ImportArgs(path),
                      pl.StringReply).value


def deploy(conn: Connection, name: str, vm_name: str, version: str = "",
           start: bool = False) -> Domain:
    """Define VM ``vm_name`` from stored appliance ``name`` (``version`` "" = newest)."""
    reply = conn._call(P.Procedure.APPLIANCE_DEPLOY, pl.DeployArgs(
        name, version, vm_name, DEPLOY_START if start else 0), pl.DomainReply)
    return Domain(conn, reply.dom)


def update(conn: Connection, domain: Domain, version: str) -> None:
    """A/B update of ``domain``'s system disk to ``version`` (a running VM is stopped,
    switched and started again). Returns once switched; the confirmation (heartbeat within
    ``appliance.update_deadline``) or the automatic rollback follows as an event."""
    conn._call(P.Procedure.APPLIANCE_UPDATE, pl.UpdateArgs(domain.ref, version), P.Empty)


def factory_reset(conn: Connection, domain: Domain) -> None:
    """Discard the system disk's changes (data disks kept, scratch disks emptied)."""
    conn._call(P.Procedure.APPLIANCE_RESET, pl.DomainFlagsArgs(domain.ref), P.Empty)


def list_appliances(conn: Connection) -> list[pl.ApplianceInfo]:
    """Stored appliances (name, version, arch, path) and the VMs deployed from each."""
    return conn._call(P.Procedure.APPLIANCE_LIST, P.Empty(), pl.ApplianceListReply).appliances


def support_bundle(conn: Connection, out: BinaryIO, idle_timeout: float = 120.0) -> int:
    """Write the daemon's support bundle (a tar.gz) to ``out``; returns its size.

    Needs a privileged (read-write) connection. Raises ConnectionLost if the daemon
    sends nothing for ``idle_timeout`` seconds.
    """
    stream = conn.open_stream(P.Procedure.SUPPORT_BUNDLE, P.Empty())
    return stream.read_into(out, idle_timeout, "support bundle")
