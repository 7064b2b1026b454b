"""Support bundle: one tar.gz with what a support engineer asks for first.

SUPPORT_BUNDLE (admin) answers with an empty reply, then sends the archive as STREAM
frames carrying the call's serial, then a STREAM end (or a STREAM abort saying why it
failed). The archive holds one directory ``qemud-support-<host>-<time>/``::

    MANIFEST.txt          what is in here, what was left out and why
    versions.txt          qemud, QEMU (per emulator), KVM verdict, kernel, Python
    config.toml           the effective configuration, secrets redacted
    capabilities.xml      the capabilities XML
    domains.txt           every domain: state, id, persistent, autostart, uuid, and the
                          members holding its XML and QEMU logs
    domains/NAME.xml      persistent definition (secrets redacted)
    domains/NAME.live.xml live definition of a running guest (secrets redacted)
    appliances.json       stored appliance images and deployed VMs' image state
    logs/qemud.log        the daemon log (log.file), last 1 MiB
    logs/audit.log        the audit log, last 1 MiB
    logs/appliance-hooks.log
    logs/qemu/NAME.log    each guest's QEMU log (and the rotated .log.1), last 1 MiB each

NAME is the guest's name when it is made of ``A-Za-z0-9._+-`` alone and no other guest's
member has it; else ``<name, other characters as _>-<first 8 hex digits of the uuid>``
(:class:`MemberNames`), so that no guest's files overwrite another's.

Never included: private keys. A file is skipped if it is a TLS key file, lies under the
directory of one (``tls.key_file``), or its name matches ``*key*.pem``; values of
configuration keys and XML attributes named like ``*password*``, ``*passwd*`` or
``*secret*`` are replaced by ``<redacted>``.

Nothing blocks the loop: the small generated files are written to a private staging
directory, then one child (``sh`` running ``tail -c`` per log, then ``exec tar czf -``)
copies the capped logs and writes the archive to a pipe the loop relays to the client.
Relaying pauses while the client has more than 1 MiB (at most half of
``limits.max_queued_bytes``) unsent (:class:`qemud.server.StreamPacing`, as for a
screenshot), so a slow reader never makes the daemon hold the whole archive, nor gets
dropped for it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxml import etree

from protocol import Empty, Procedure, StreamAbort, StreamData, StreamEnd
from protocol.constants import DomainState
from qemud.dispatch import error_payload
from qemud.driver.discard import discard_tree, remove_discarded_below
from qemud.errors import OperationFailed, QemudError
from qemud.loop import READ, Timer
from qemud.server import StreamHandler, StreamPacing

if TYPE_CHECKING:
    from qemud.config import Config
    from qemud.dispatch import Handler
    from qemud.server import Client

    from . import ApplianceContext

__all__ = ["BundleDuty", "install", "redact_config", "redact_xml", "is_private_key_path",
           "LOG_CAP"]

log = logging.getLogger(__name__)

#: bytes kept of each log file (its end)
LOG_CAP = 1024 * 1024
SECRET_RE = re.compile(r"passw(or)?d|secret", re.IGNORECASE)
REDACTED = "<redacted>"
#: a guest's QEMU log and its rotated part, ``<guest_log_dir>/NAME.log``/``NAME.log.1``
LOG_SUFFIXES = (".log", ".log.1")

_SCRIPT = r"""
set -u
dir=$1; top=$2; cap=$3; shift 3
while [ $# -ge 2 ]; do
    tail -c "$cap" -- "$1" > "$dir/$top/$2" 2>/dev/null || rm -f -- "$dir/$top/$2"
    shift 2
done
exec tar -czf - -C "$dir" -- "$top"
"""


# -- what may go in ----------------------------------------------------------------------


def is_private_key_path(path: Path, key_files: list[str]) -> bool:
    """True for a TLS key file, anything under a key file's directory, or *key*.pem."""
    if fnmatch.fnmatch(path.name.lower(), "*key*.pem"):
        return True
    resolved = _resolve(path)
    for key in key_files:
        if not key:
            continue
        key_path = _resolve(Path(key))
        if resolved == key_path or key_path.parent in resolved.parents:
            return True
    return False


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _redact(value: Any, key: str = "") -> Any:
    if key and SECRET_RE.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def redact_config(config: Config) -> str:
    """The effective configuration as TOML, values of secret-like keys redacted."""
    lines = [f"# effective qemud configuration ({config.mode} mode)",
             f"# read from: {config.source or '(defaults only)'}", ""]
    for section in ("paths", "listen", "limits", "tls", "qemu", "log", "appliance"):
        values = getattr(config, section)
        lines.append(f"[{section}]")
        for f in dataclasses.fields(values):
            value = _redact(getattr(values, f.name), f.name)
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def redact_xml(xml: str) -> str:
    """Domain XML with secret-like attributes (VNC ``passwd``...) and elements redacted."""
    try:
        root = etree.fromstring(xml.encode())
    except etree.XMLSyntaxError:
        return xml
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for name in list(el.attrib):
            if SECRET_RE.search(str(name)):
                el.set(name, REDACTED)
        if SECRET_RE.search(etree.QName(el).localname) and (el.text or "").strip():
            el.text = REDACTED
    return str(etree.tostring(root, encoding="unicode"))


# -- the stream --------------------------------------------------------------------------


class BundleStream(StreamHandler):
    """Relays the archive child's stdout to one client as STREAM frames."""

    def __init__(self, duty: BundleDuty, client: Client, serial: int,
                 child: subprocess.Popen[bytes], staging: Path, errors: Any) -> None:
        self.duty = duty
        self.loop = duty.loop
        self.server = duty.server
        self.client = client
        self.serial = serial
        self.child = child
        self.staging = staging
        self.errors = errors
        assert child.stdout is not None
        self.fd = child.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.eof = False
        self.status: int | None = None
        self.sent = 0
        self.done = False
        self.timer: Timer | None = None
        self.started = time.monotonic()
        client.streams[serial] = self
        self.loop.add(self.fd, READ, self._on_read)
        self.loop.watch_popen(child, self._exited)

    def _on_read(self, mask: int) -> None:
        if self.done:
            return
        if self.client.closed:
            self.abort("client gone")
            return
        if self.duty.pacing.paused(self.client):
            self.loop.remove(self.fd)
            self.timer = self.loop.call_later(StreamPacing.RETRY, self._resume)
            return
        try:
            data = os.read(self.fd, self.duty.pacing.chunk)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("support bundle: reading the archive failed: %s", exc)
            data = b""
        if not data:
            self.loop.remove(self.fd)
            self.eof = True
            self._maybe_finish()
            return
        self.sent += len(data)
        self.server.send_stream(self.client, StreamData(Procedure.SUPPORT_BUNDLE, self.serial,
                                                        data))

    def _resume(self) -> None:
        self.timer = None
        if not self.done and not self.eof:
            self.loop.add(self.fd, READ, self._on_read)

    def _exited(self, code: int) -> None:
        self.status = code
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.done or not self.eof or self.status is None:
            return
        self.done = True
        self.errors.seek(0)
        text = self.errors.read(8192).decode(errors="replace").strip()
        self._cleanup()
        self.client.streams.pop(self.serial, None)
        if self.status == 0:
            log.info("support bundle for client %s: %d bytes in %.1f s", self.client.id,
                     self.sent, time.monotonic() - self.started)
            self.server.send_stream(self.client, StreamEnd(Procedure.SUPPORT_BUNDLE,
                                                           self.serial))
        else:
            message = f"support bundle: tar failed (exit {self.status}): {text or 'no message'}"
            log.error("%s", message)
            self.server.send_stream(self.client, StreamAbort(
                Procedure.SUPPORT_BUNDLE, self.serial, error_payload(OperationFailed(message))))

    def abort(self, why: str) -> None:
        if self.done:
            return
        self.done = True
        log.info("support bundle for client %s abandoned: %s", self.client.id, why)
        try:
            os.killpg(self.child.pid, signal.SIGKILL)
        except OSError:
            pass
        # the loop still reaps it (watch_popen); _exited then finds done set
        self._cleanup()
        self.client.streams.pop(self.serial, None)

    def _cleanup(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.loop.remove(self.fd)
        try:
            assert self.child.stdout is not None
            self.child.stdout.close()
        except OSError:
            pass
        self.errors.close()
        discard_tree(self.loop, self.staging)
        self.duty.active.discard(self)

    # -- StreamHandler: the client's side --------------------------------------------------

    def on_data(self, data: bytes) -> None:
        pass  # nothing to receive: the stream goes one way

    def on_end(self) -> None:
        self.abort("client ended the stream")


# -- the duty ----------------------------------------------------------------------------


class BundleDuty:
    def __init__(self, ctx: ApplianceContext) -> None:
        self.daemon = ctx.daemon
        self.driver = ctx.driver
        self.loop = ctx.driver.loop
        self.server = ctx.daemon.server
        self.config = ctx.daemon.config
        self.active: set[BundleStream] = set()
        #: relaying pauses while a client has more than ``pacing.queue_high`` unsent
        self.pacing = StreamPacing(self.config)

    def install(self) -> dict[Procedure, Handler]:
        for stale in self.config.paths.state_dir.glob(".bundle-*"):
            discard_tree(self.loop, stale)
        remove_discarded_below(self.loop, self.config.paths.state_dir, depth=0)
        return {Procedure.SUPPORT_BUNDLE: self.handle}

    def handle(self, ctx: Any, args: Empty) -> Empty:
        """Prepare the bundle and start the child; the reply goes out before any frame
        (the pipe is read from a later loop turn)."""
        serial = ctx.current_serial
        paths = self.config.paths
        host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
        top = f"qemud-support-{host}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=paths.state_dir))
        except OSError as exc:
            raise OperationFailed(f"cannot prepare the support bundle: "
                                  f"{exc.strerror or exc}") from None
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the stream
        try:
            logs = self._prepare(staging / top)
            argv = ["sh", "-c", _SCRIPT, "qemud-bundle", str(staging), top, str(LOG_CAP)]
            for src, dst in logs:
                argv += [str(src), dst]
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=errors, close_fds=True, start_new_session=True)
        except (OSError, QemudError) as exc:
            errors.close()
            discard_tree(self.loop, staging)
            if isinstance(exc, QemudError):
                raise
            raise OperationFailed(f"cannot prepare the support bundle: "
                                  f"{exc.strerror or exc}") from None
        self.active.add(BundleStream(self, ctx, serial, child, staging, errors))
        log.info("support bundle for client %s (%s): %d log file(s)", ctx.id, ctx.identity,
                 len(logs))
        return Empty()

    # -- contents ------------------------------------------------------------------------

    def _prepare(self, out: Path) -> list[tuple[Path, str]]:
        """Write the generated files under ``out``; returns (log file, member) to copy."""
        config = self.config
        paths = config.paths
        (out / "domains").mkdir(parents=True)
        (out / "logs" / "qemu").mkdir(parents=True)
        key_files = [config.tls.key_file]
        manifest: list[str] = []
        skipped: list[str] = []

        def write(name: str, text: str, note: str = "") -> None:
            (out / name).write_text(text)
            manifest.append(name + note)

        write("versions.txt", self._versions())
        write("config.toml", redact_config(config))
        write("capabilities.xml", self.driver.capabilities_xml())
        domains = sorted(self.driver.registry, key=lambda d: d.name)
        try:
            guest_logs = sorted(paths.guest_log_dir.iterdir())
        except OSError:
            guest_logs = []
        owners = {o for p in guest_logs if (o := _log_owner(p.name)) is not None}
        stems = MemberNames().stems([(d.name, d.uuid) for d in domains],
                                    sorted(owners - {d.name for d in domains}))
        rows = []
        for dom in domains:
            stem = stems[dom.name]
            note = "" if stem == dom.name else f" (domain '{dom.name}')"
            xml = live = "-"
            if dom.persistent:
                xml = f"domains/{stem}.xml"
                write(xml, redact_xml(dom.persistent_definition.to_xml()), note)
            if dom.live is not None:
                live = f"domains/{stem}.live.xml"
                write(live, redact_xml(dom.live.to_xml(live=True)), note)
            rows.append(f"{dom.name}\tstate={DomainState(dom.state).name.lower()}\t"
                        f"id={dom.id}\tpersistent={'yes' if dom.persistent else 'no'}\t"
                        f"autostart={'yes' if dom.autostart else 'no'}\tuuid={dom.uuid}\t"
                        f"xml={xml}\tlive_xml={live}")
        write("appliances.json", json.dumps(self._appliances(), indent=1) + "\n")

        logs: list[tuple[Path, str]] = []
        guest_members: dict[str, list[str]] = {}

        def add_log(src: Path, member: str) -> bool:
            if is_private_key_path(src, key_files):
                skipped.append(f"{src}: private key material (TLS key path or *key*.pem)")
                return False
            if not src.is_file():
                return False
            logs.append((src, member))
            manifest.append(f"{member} (last {LOG_CAP} bytes of {src})")
            return True

        if config.log.file:
            add_log(Path(config.log.file), "logs/qemud.log")
        else:
            skipped.append("daemon log: the daemon logs to stderr (log.file is not set)")
        audit = Path(config.log.audit_file) if config.log.audit_file else \
            paths.log_dir / "audit.log"
        add_log(audit, "logs/audit.log")
        add_log(paths.log_dir / "appliance-hooks.log", "logs/appliance-hooks.log")
        for path in guest_logs:
            owner = _log_owner(path.name)
            if owner is None:
                continue
            if path.is_symlink():  # (the daemon writes files there, never links)
                skipped.append(f"{path}: a symbolic link, not a guest log")
                continue
            member = f"logs/qemu/{stems[owner]}{path.name[len(owner):]}"
            if add_log(path, member):
                guest_members.setdefault(owner, []).append(member)
        # (after the logs: a row names the log members that made it in)
        write("domains.txt", "".join(
            f"{row}\tlogs={','.join(guest_members.get(dom.name, [])) or '-'}\n"
            for dom, row in zip(domains, rows, strict=True)))
        text = [f"qemud support bundle, made {time.strftime('%Y-%m-%d %H:%M:%S %z')}", "",
                "included:"] + [f"  {m}" for m in manifest + ["MANIFEST.txt"]]
        if skipped:
            text += ["", "left out:"] + [f"  {s}" for s in skipped]
        text += ["", "secrets: values of keys/attributes named like *password*, *passwd*, "
                     "*secret* are redacted; private keys are never included", ""]
        (out / "MANIFEST.txt").write_text("\n".join(text))
        return logs

    def _versions(self) -> str:
        caps = self.driver.caps
        uname = os.uname()
        lines = [f"qemud: {self.daemon.version}",
                 f"python: {sys.version.split()[0]} ({platform.python_implementation()})",
                 f"kernel: {uname.sysname} {uname.release} {uname.version} {uname.machine}",
                 f"host arch: {caps.host_arch}",
                 f"kvm: {'usable' if caps.kvm_usable else 'not usable'} ({caps.kvm_reason})"]
        for arch, emulator in sorted(caps.emulators.items()):
            lines.append(f"qemu {arch}: {emulator.version_string} ({emulator.path})")
        for problem in caps.problems:
            lines.append(f"emulator problem: {problem}")
        return "\n".join(lines) + "\n"

    def _appliances(self) -> dict[str, Any]:
        out: dict[str, Any] = {"images": [], "vms": {}}
        try:
            from .images.layout import STATE_NAME, store_root, vms_root
            from .images.store import ImageStore
        except ImportError:  # pragma: no cover - the images duty is optional
            return out
        images = ImageStore(store_root(self.config))
        out["images"] = [{"name": d.name, "version": d.version, "arch": d.arch,
                          "path": str(p)} for d, p in images.entries()]
        vms_dir = vms_root(self.config)
        for dom in self.driver.registry:
            state = vms_dir / dom.name / STATE_NAME
            try:
                # (the newest write in flight, as the daemon itself reads it)
                out["vms"][dom.name] = json.loads(self.driver.files.read_text(state))
            except (OSError, ValueError):
                continue
        return out


def _member_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "_"


def _log_owner(filename: str) -> str | None:
    """The guest a QEMU log file of the log directory belongs to (``NAME.log``,
    ``NAME.log.1``), or None for a file that is no guest log."""
    for suffix in LOG_SUFFIXES:
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[:-len(suffix)]
    return None


class MemberNames:
    """The stem each guest's files have in the archive, no two alike.

    A guest name is any text but ``/``: "web 1", "web?1" and "web_1" all sanitise to
    ``web_1``, every non-ASCII name of one length to the same underscores, and the live
    XML of "domain" (``domain.live.xml``) is the persistent XML of "domain.live". Had
    two guests one member, the one written last would hide the other while the index
    still listed both. So a name that sanitising leaves as it is keeps its files'
    names (what readers of earlier bundles know), unless an earlier guest's file has one
    of them (guests go in name order: "domain" before "domain.live"); any other name
    gets its sanitised form behind a suffix, the first 8 hex digits of its uuid (for a
    log whose guest is gone: a counter), then a counter should that be taken too.
    ``domains.txt`` gives each guest's members.
    """

    #: the files of a defined guest's stem; a gone guest's logs have only the last two
    DOMAIN_FILES = (".xml", ".live.xml") + LOG_SUFFIXES

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def take(self, stem: str, suffixes: tuple[str, ...]) -> bool:
        """Claim ``stem`` with ``suffixes``, unless one of those names is taken."""
        files = {stem + suffix for suffix in suffixes}
        if self.taken & files:
            return False
        self.taken |= files
        return True

    def stems(self, domains: list[tuple[str, str]], gone: list[str]) -> dict[str, str]:
        """Guest name -> stem, for ``domains`` (name, uuid) and the guests ``gone`` that
        left only logs. Plain names first (defined guests before gone ones), so that an
        unusual name never moves a plain one."""
        wanted = ([(name, uuid, self.DOMAIN_FILES) for name, uuid in domains]
                  + [(name, "", LOG_SUFFIXES) for name in gone])
        out: dict[str, str] = {}
        for name, _, suffixes in wanted:
            if _member_name(name) == name and self.take(name, suffixes):
                out[name] = name
        for name, uuid, suffixes in wanted:
            if name in out:
                continue
            base = _member_name(name)
            tag = uuid.replace("-", "")[:8]
            n = 1
            stem = f"{base}-{tag}" if tag else f"{base}-{n}"
            while not self.take(stem, suffixes):
                n += 1
                stem = f"{base}-{tag}-{n}" if tag else f"{base}-{n}"
            out[name] = stem
        return out


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    return BundleDuty(ctx).install()
