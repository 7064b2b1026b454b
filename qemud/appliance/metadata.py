"""Per-guest appliance settings, kept in the domain XML's ``<metadata>``.

They live under qemud's own namespace, so the domain stays valid libvirt XML and
``virsh dumpxml`` / ``qemush dumpxml`` show them::

    <metadata>
      <qemud:appliance xmlns:qemud="http://qemud.org/xmlns/appliance/1">
        <qemud:power guest-shutdown="none" guest-reboot="restart" hook="/path/to/hook"/>
        <qemud:heartbeat interval="1" misses="3" action="restart" hook=""/>
        <qemud:origin appliance="router" version="1.2"/>
        <qemud:disk target="vda" class="system"/>
        <qemud:disk target="vdb" class="data"/>
      </qemud:appliance>
    </metadata>

Every attribute is optional; absent elements mean "not an appliance duty for this guest".
Bad values are refused at define time with a message naming the attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from qemud.conf import DomainDef
from qemud.errors import XMLError

__all__ = ["NS", "PowerPolicy", "HeartbeatPolicy", "Origin", "ApplianceSettings",
           "read_settings", "write_settings", "POWER_ACTIONS", "HEARTBEAT_ACTIONS",
           "DISK_CLASSES"]

NS = "http://qemud.org/xmlns/appliance/1"
_Q = f"{{{NS}}}"

#: what the host does when the guest itself shuts down or reboots
POWER_ACTIONS = ("default", "none", "restart", "hook", "shutdown-host", "reboot-host")
HEARTBEAT_ACTIONS = ("restart", "hook", "none")
DISK_CLASSES = ("system", "data", "scratch")


@dataclass
class PowerPolicy:
    guest_shutdown: str = "default"  # "default" = the domain's <on_poweroff>
    guest_reboot: str = "default"  # "default" = the domain's <on_reboot>
    hook: str = ""


@dataclass
class HeartbeatPolicy:
    interval: float = 1.0  # seconds between heartbeats the guest sends
    misses: int = 3  # missed heartbeats before the action
    action: str = "restart"
    hook: str = ""
    grace: float = 60.0  # seconds after start before the first heartbeat is due


@dataclass
class Origin:
    appliance: str
    version: str


@dataclass
class ApplianceSettings:
    power: PowerPolicy | None = None
    heartbeat: HeartbeatPolicy | None = None
    origin: Origin | None = None
    disk_classes: dict[str, str] = field(default_factory=dict)  # target dev -> class


def _choice(el: etree._Element, attr: str, choices: tuple[str, ...], default: str) -> str:
    value = str(el.get(attr, default))
    if value not in choices:
        raise XMLError(f"metadata/qemud:appliance/qemud:{etree.QName(el).localname}"
                       f"/@{attr}: '{value}' is not one of {', '.join(choices)}")
    return value


def _number(el: etree._Element, attr: str, default: float, kind: type = float) -> float:
    raw = el.get(attr)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise XMLError(f"metadata/qemud:appliance/qemud:"
                       f"{etree.QName(el).localname}/@{attr}: must be a positive number, "
                       f"got '{raw}'")
    return float(value)


def read_settings(definition: DomainDef) -> ApplianceSettings:
    """The appliance settings of a definition (all None when it has none)."""
    root = definition.get_metadata(NS)
    settings = ApplianceSettings()
    if root is None:
        return settings
    power = root.find(f"{_Q}power")
    if power is not None:
        settings.power = PowerPolicy(
            guest_shutdown=_choice(power, "guest-shutdown", POWER_ACTIONS, "default"),
            guest_reboot=_choice(power, "guest-reboot", POWER_ACTIONS, "default"),
            hook=power.get("hook", ""))
        if "hook" in (settings.power.guest_shutdown, settings.power.guest_reboot) and \
                not settings.power.hook:
            raise XMLError("metadata/qemud:appliance/qemud:power: action 'hook' "
                           "needs a hook='/path/to/executable' attribute")
    beat = root.find(f"{_Q}heartbeat")
    if beat is not None:
        settings.heartbeat = HeartbeatPolicy(
            interval=_number(beat, "interval", 1.0), misses=int(_number(beat, "misses", 3, int)),
            action=_choice(beat, "action", HEARTBEAT_ACTIONS, "restart"),
            hook=beat.get("hook", ""), grace=_number(beat, "grace", 60.0))
        if settings.heartbeat.action == "hook" and not settings.heartbeat.hook:
            raise XMLError("metadata/qemud:appliance/qemud:heartbeat: action "
                           "'hook' needs a hook='/path/to/executable' attribute")
    origin = root.find(f"{_Q}origin")
    if origin is not None:
        settings.origin = Origin(origin.get("appliance", ""), origin.get("version", ""))
    for disk in root.findall(f"{_Q}disk"):
        target = disk.get("target", "")
        if not target:
            raise XMLError("metadata/qemud:appliance/qemud:disk: missing target")
        settings.disk_classes[target] = _choice(disk, "class", DISK_CLASSES, "data")
    return settings


def write_settings(definition: DomainDef, settings: ApplianceSettings) -> None:
    """Store ``settings`` in ``definition``'s metadata (replacing what was there)."""
    root = etree.Element(f"{_Q}appliance", nsmap={"qemud": NS})
    if settings.power is not None:
        p = settings.power
        el = etree.SubElement(root, f"{_Q}power")
        el.set("guest-shutdown", p.guest_shutdown)
        el.set("guest-reboot", p.guest_reboot)
        if p.hook:
            el.set("hook", p.hook)
    if settings.heartbeat is not None:
        h = settings.heartbeat
        el = etree.SubElement(root, f"{_Q}heartbeat")
        el.set("interval", f"{h.interval:g}")
        el.set("misses", str(h.misses))
        el.set("action", h.action)
        el.set("grace", f"{h.grace:g}")
        if h.hook:
            el.set("hook", h.hook)
    if settings.origin is not None:
        el = etree.SubElement(root, f"{_Q}origin")
        el.set("appliance", settings.origin.appliance)
        el.set("version", settings.origin.version)
    for target, cls in sorted(settings.disk_classes.items()):
        el = etree.SubElement(root, f"{_Q}disk")
        el.set("target", target)
        el.set("class", cls)
    definition.set_metadata(NS, root)
