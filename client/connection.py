"""The client connection: one socket, one reader thread, calls in order.

The protocol is synchronous (one call in flight per connection), so calls from several
threads are serialised by a lock: a Connection may be shared between threads, and each
call waits its turn. A reader thread owns the receiving side: it matches replies to
calls by serial, answers the daemon's keepalive pings, queues events (so events that
arrive while a call waits for its reply are never lost) and notices a dead daemon —
at once on EOF, or after ``keepalive_count`` silent keepalive intervals.

Event callbacks run on a separate dispatch thread, so a callback may make calls.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import re
import select
import socket
import ssl
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import protocol as P
from protocol import payloads as pl
from protocol.constants import SUPPORTED_VERSIONS, EventId, HelloFlags, ListFlags
from protocol.fields import Payload

from .domain import Domain, DomainListing, ListedDomain
from .errors import ConnectFailed, ConnectionLost, InvalidCall, QemudClientError, from_payload
from .transport import open_socket
from .uri import ParsedURI, default_uri, parse_uri

__all__ = ["Connection", "connect", "EventRecord", "Stream", "NodeInfo", "ClientInfo",
           "domain_id", "domain_uuid"]

log = logging.getLogger(__name__)
#: after a call, the background reader waits this long before polling again, so a
#: caller making calls back to back never has to wake it
IDLE_GRACE = 0.05
#: bytes asked of one recv(): under glibc's mmap threshold, since recv(n) allocates n
#: bytes first (256 KiB cost an mmap + munmap, ~13 µs, per reply)
_RECV_SIZE = 64 * 1024
#: how long closing waits for the reader thread to leave before it closes the wake pipe
READER_EXIT = 2.0
T = TypeVar("T", bound=Payload)
#: what strtol (virStrToLong_i) takes as a whole number: optional blanks and sign, digits
_ID = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")
_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class EventRecord:
    """One event as delivered to callbacks and iterators."""

    event_id: EventId
    domain: Domain
    callback_id: int
    event: int = 0  # lifecycle: LifecycleEvent; watchdog: action; metadata: MetadataType
    detail: int = 0  # lifecycle: the detail enum value
    kind: str = ""  # appliance events
    text: str = ""  # appliance events
    uri: str = ""  # metadata-change: the namespace of an ELEMENT ("" otherwise)


#: events kept, in all, for registrations whose callback is not stored yet (it is right
#: after the registration's reply: only a burst that comes with that reply waits here;
#: a registration whose caller was interrupted before it stored one keeps no more)
MAX_EARLY_EVENTS = 1_000

NodeInfo = pl.NodeInfoReply
ClientInfo = pl.ClientInfo


class _ReplyTimeout(ConnectionLost):
    """A call's own deadline passed without a reply: the connection is given up."""


class _NoHelloReply(ConnectFailed):
    """The daemon accepted the connection but did not answer the HELLO in time."""

    def __init__(self, uri: ParsedURI, timeout: float) -> None:
        super().__init__(f"cannot connect to {uri.uri}: the daemon accepted the connection "
                         f"but did not answer within {timeout:g} s (is it stopped or hung? "
                         "a stopped process shows state T in ps)")


class Stream:
    """A byte stream opened by a call (the serial console)."""

    def __init__(self, conn: Connection, procedure: P.Procedure, serial: int) -> None:
        self._conn = conn
        self.procedure = procedure
        self.serial = serial
        self._queue: queue.Queue[bytes | None | QemudClientError] = queue.Queue()
        self.closed = False
        #: the reply of the call that opened the stream (e.g. a screenshot's MIME type)
        self.reply: Payload | None = None

    def _deliver(self, item: bytes | None | QemudClientError) -> None:
        self._queue.put(item)

    def recv(self, timeout: float | None = None) -> bytes | None:
        """Next chunk; ``b""`` on timeout, None at the end of the stream."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return b""
        if isinstance(item, QemudClientError):
            raise item
        if item is None:
            self.closed = True
        return item

    def send(self, data: bytes) -> None:
        self._conn._send_raw(self._conn._encode(P.StreamData(self.procedure, self.serial,
                                                              data)))

    def read_into(self, out: BinaryIO, idle_timeout: float, what: str) -> int:
        """Write everything the daemon sends on this stream to ``out`` until its end;
        returns the size. Raises ConnectionLost if nothing comes for ``idle_timeout``
        seconds (``what`` names the transfer in that message), and the daemon's error if
        it aborts the stream. The stream is closed in any case."""
        size = 0
        last = time.monotonic()
        try:
            while True:
                chunk = self.recv(timeout=1.0)
                if chunk is None:
                    return size
                if chunk:
                    out.write(chunk)
                    size += len(chunk)
                    last = time.monotonic()
                elif time.monotonic() - last > idle_timeout:
                    raise ConnectionLost(f"{what}: nothing received for {idle_timeout:g} s")
        finally:
            if not self.closed:
                self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._conn._send_raw(self._conn._encode(
                    P.StreamEnd(self.procedure, self.serial)))
            except QemudClientError:
                pass
            self._conn._streams.pop(self.serial, None)


class Connection:
    """A connection to one qemud. Use :func:`connect` to make one."""

    def __init__(self, sock: socket.socket, uri: ParsedURI, readonly: bool,
                 keepalive_count: int = 5, client_name: str = "qemud-client",
                 timeout: float | None = None) -> None:
        """Run the HELLO exchange on ``sock``; ``timeout`` bounds it (None: no bound).

        A daemon that accepted the connection but does not answer in time (stopped,
        hung) is a ConnectFailed: before the HELLO reply there is no keepalive interval
        yet, so nothing else would notice.
        """
        self.uri_info = uri
        self.readonly = readonly
        self._sock = sock
        sock.settimeout(1.0 if timeout is None else min(1.0, max(timeout, 0.01)))
        self._proto = P.Connection(P.Role.CLIENT,
                                   reply_types={P.Procedure.DOMAIN_LIST: DomainListing})
        self._serials = itertools.count(1)
        self._call_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict[int, P.Reply | P.ErrorReply] = {}
        self._lost: QemudClientError | None = None
        self._closed = False
        self._keepalive_count = keepalive_count
        self.keepalive_interval = 0.0
        self._last_rx = time.monotonic()
        # events for next_event (registrations without a callback), and those that came
        # before their registration's callback was stored (the reader handles the
        # registration's reply and the event after it in one read); both under _cond
        self._events: collections.deque[EventRecord] = collections.deque()
        self._early: dict[int, list[EventRecord]] = {}
        self._callbacks: dict[int, Callable[[EventRecord], None] | None] = {}
        self._dispatch_queue: queue.Queue[tuple[Callable[[EventRecord], None], EventRecord]
                                          | None] = queue.Queue()
        self._streams: dict[int, Stream] = {}
        # Who reads the socket: the thread waiting for a reply reads it itself (no hand-off
        # between threads on the hot path); the background reader polls only while no call
        # is in flight, and a byte on the wake pipe gets it out of the way.
        self._rx_lock = threading.Lock()
        self._in_call = False
        self._polling = False
        self._last_call_end = 0.0
        self._wake_r, self._wake_w = os.pipe()
        self._pipe_closed = False
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._reader = threading.Thread(target=self._read_loop, name="qemud-client-reader",
                                        daemon=True)
        self._dispatcher = threading.Thread(target=self._dispatch_loop,
                                            name="qemud-client-events", daemon=True)
        self._reader.start()
        self._dispatcher.start()
        flags = int(HelloFlags.READONLY) if readonly else 0
        try:
            hello = self._call(P.Procedure.HELLO, pl.HelloArgs(
                list(SUPPORTED_VERSIONS), client_name, flags), pl.HelloReply, timeout)
        except _ReplyTimeout:
            self._stop_threads()
            assert timeout is not None
            raise _NoHelloReply(uri, timeout) from None
        except BaseException:
            self._stop_threads()
            raise
        self.protocol_version = hello.version
        self.server_name = hello.server_name
        self.keepalive_interval = float(hello.keepalive_interval)
        # The socket stays in blocking mode with this timeout for good: toggling it to
        # non-blocking would break a concurrent sendall() from another thread.
        self._sock.settimeout(self.keepalive_interval or 1.0)
        if hello.readonly and not readonly:
            self.readonly = True  # e.g. a TLS certificate with the read-only role

    # -- the call machinery --------------------------------------------------------------

    def _encode(self, message: P.Message) -> bytes:
        """The bytes of ``message``; the protocol layer's refusal becomes InvalidCall.

        The protocol refuses what it cannot carry (a string over MAX_STRING, a frame over
        the limit) before anything is sent, so the connection is still usable: this is
        the caller's error, not a lost connection.
        """
        try:
            return self._proto.send(message)
        except P.errors.LocalProtocolError as exc:
            procedure = getattr(message, "procedure", None)
            name = procedure.name if isinstance(procedure, P.Procedure) else ""
            raise InvalidCall(f"cannot send {name or type(message).__name__}: {exc.message}",
                              name) from None

    def _send_raw(self, data: bytes) -> None:
        if self._lost is not None:
            raise self._lost
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as exc:
            # The daemon may have refused us (max_clients) with an error frame and closed:
            # that frame, not "broken pipe", is what the user needs to see.
            self._mark_lost(self._refusal() or ConnectionLost(
                f"connection to {self.uri_info.uri} lost: {exc}"))
            assert self._lost is not None
            raise self._lost from None

    def _call(self, procedure: P.Procedure, args: Payload, reply_type: type[T],
              timeout: float | None = None) -> T:
        """Send one call and wait for its reply; raises the mapped error on failure."""
        with self._call_lock:
            reply = self._exchange(P.Call(procedure, next(self._serials), args), timeout)
        if isinstance(reply, P.ErrorReply):
            raise from_payload(reply.error)
        result = reply.result
        assert isinstance(result, reply_type), (procedure, result)
        return result

    def _exchange(self, call: P.Call, timeout: float | None) -> P.Reply | P.ErrorReply:
        """Send ``call`` and read until its reply is in (this thread does the reading)."""
        if self._lost is not None:
            raise self._lost
        data = self._encode(call)  # before the try: a refused call does not lose us
        self._in_call = True
        if self._polling:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._rx_lock:
                self._send_raw(data)
                while call.serial not in self._replies:
                    if self._lost is not None:
                        raise self._lost
                    if deadline is not None and time.monotonic() > deadline:
                        raise _ReplyTimeout(f"no reply to {call.procedure.name} within "
                                            f"{timeout:g} s")
                    self._receive(block=True)
                return self._replies.pop(call.serial)
        except QemudClientError as exc:
            # raised while reading: the connection itself failed or was refused
            self._mark_lost(exc)
            raise
        finally:
            self._last_call_end = time.monotonic()
            self._in_call = False

    def _refusal(self) -> QemudClientError | None:
        """An error frame (serial 0) the daemon left in the socket before closing, if any."""
        try:
            ready = _readable([self._sock.fileno()], 0.5)
            data = self._sock.recv(65536) if ready else b""
        except (OSError, ValueError):
            return None
        probe = P.Connection(P.Role.CLIENT)
        probe.receive_data(data)
        try:
            msg = probe.next_message()
        except P.ProtocolError:
            return None
        if isinstance(msg, P.ErrorReply) and msg.serial == 0:
            return from_payload(msg.error)
        return None

    def _receive(self, block: bool) -> None:
        """One recv (waiting up to the keepalive check interval if ``block``) + dispatch.

        The caller holds ``_rx_lock``.
        """
        sock = self._sock
        try:
            if block:
                data = sock.recv(_RECV_SIZE)
            else:
                # Readable is not "has data" with TLS (a 1.3 session ticket makes the
                # socket readable and yields no bytes): read without blocking. The timeout
                # is switched under the send lock so no concurrent sendall() sees it.
                with self._send_lock:
                    sock.settimeout(0.0)
                    try:
                        data = sock.recv(_RECV_SIZE)
                    finally:
                        sock.settimeout(self.keepalive_interval or 1.0)
            while hasattr(sock, "pending") and sock.pending():  # TLS: decrypted leftovers
                data += sock.recv(_RECV_SIZE)
        except (TimeoutError, BlockingIOError):
            self._check_keepalive()
            return
        except ssl.SSLWantReadError:
            return
        except OSError as exc:
            raise ConnectionLost(f"connection to {self.uri_info.uri} lost: {exc}") from None
        if not data:
            raise ConnectionLost(f"connection to {self.uri_info.uri} lost: the daemon closed "
                                 "it")
        self._last_rx = time.monotonic()
        self._proto.receive_data(data)
        while True:
            try:
                msg = self._proto.next_message()
            except P.ProtocolError as exc:
                raise ConnectionLost(f"protocol error from the daemon: {exc}") from None
            if msg is P.NEED_DATA or msg is P.CLOSED:
                return
            self._on_message(msg)  # type: ignore[arg-type]

    def _read_loop(self) -> None:
        """Background reading while the connection is idle: events, pings, dead daemons."""
        try:
            while not self._closed and self._lost is None:
                if self._in_call or time.monotonic() - self._last_call_end < IDLE_GRACE:
                    time.sleep(IDLE_GRACE / 2)  # back-to-back calls: stay out of the way
                    continue
                self._polling = True
                try:
                    ready = _readable([self._sock.fileno(), self._wake_r],
                                      self.keepalive_interval or 1.0)
                finally:
                    self._polling = False
                if self._wake_r in ready:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                if self._in_call or self._closed:
                    continue
                with self._rx_lock:
                    if self._in_call:
                        continue
                    if self._sock.fileno() in ready:
                        self._receive(block=False)
                    else:
                        self._check_keepalive()
        except QemudClientError as exc:
            self._mark_lost(exc)
        except (OSError, ValueError) as exc:
            if not self._closed:
                self._mark_lost(ConnectionLost(f"connection to {self.uri_info.uri} lost: "
                                               f"{exc}"))
        except Exception as exc:  # never die silently: waiters must wake up
            log.exception("client reader failed")
            self._mark_lost(ConnectionLost(f"client reader failed: {exc!r}"))

    def _check_keepalive(self) -> None:
        if not self.keepalive_interval or self._closed:
            return
        silent = time.monotonic() - self._last_rx
        limit = self.keepalive_interval * (self._keepalive_count + 1)
        if silent > limit:
            raise ConnectionLost(f"connection to {self.uri_info.uri} lost: no keepalive from "
                                 f"the daemon for {silent:.0f} s")
        if silent > self.keepalive_interval:
            try:
                self._send_raw(self._encode(P.Ping()))
            except QemudClientError:
                pass

    def _on_message(self, msg: P.Message) -> None:
        if isinstance(msg, P.Reply | P.ErrorReply):
            if msg.serial == 0 and isinstance(msg, P.ErrorReply):
                # the daemon refuses the whole connection (limits, TLS identity)
                raise from_payload(msg.error)
            with self._cond:
                self._replies[msg.serial] = msg
                self._cond.notify_all()
        elif isinstance(msg, P.Ping):
            self._send_raw(self._encode(P.Pong()))
        elif isinstance(msg, P.Pong):
            pass
        elif isinstance(msg, P.Event):
            self._on_event(msg)
        elif isinstance(msg, P.StreamData | P.StreamEnd | P.StreamAbort):
            stream = self._streams.get(msg.serial)
            if stream is None:
                return
            if isinstance(msg, P.StreamData):
                stream._deliver(msg.data)
            elif isinstance(msg, P.StreamEnd):
                stream._deliver(None)
                self._streams.pop(msg.serial, None)
            else:
                stream._deliver(from_payload(msg.error))
                self._streams.pop(msg.serial, None)

    def _on_event(self, msg: P.Event) -> None:
        body: Any = msg.body
        dom = Domain(self, body.dom)
        if isinstance(body, pl.LifecycleEventMsg):
            record = EventRecord(EventId.LIFECYCLE, dom, body.callback_id, body.event,
                                 body.detail)
        elif isinstance(body, pl.RebootEventMsg):
            record = EventRecord(EventId.REBOOT, dom, body.callback_id)
        elif isinstance(body, pl.WatchdogEventMsg):
            record = EventRecord(EventId.WATCHDOG, dom, body.callback_id, body.action)
        elif isinstance(body, pl.MetadataChangeEventMsg):
            record = EventRecord(EventId.METADATA_CHANGE, dom, body.callback_id, body.type,
                                 uri=body.nsuri)
        elif isinstance(body, pl.ApplianceEventMsg):
            record = EventRecord(EventId.APPLIANCE, dom, body.callback_id, kind=body.kind,
                                 text=body.detail)
        else:  # pragma: no cover - the table has no other events
            return
        with self._cond:
            if body.callback_id in self._callbacks:
                self._route(self._callbacks[body.callback_id], record)
            else:  # its registration's reply came first: register_event routes it
                if sum(map(len, self._early.values())) < MAX_EARLY_EVENTS:
                    self._early.setdefault(body.callback_id, []).append(record)

    def _route(self, callback: Callable[[EventRecord], None] | None,
               record: EventRecord) -> None:
        """``record`` to its callback, or to :meth:`next_event` (with ``_cond`` held)."""
        if callback is None:
            self._events.append(record)
            self._cond.notify_all()
        else:
            self._dispatch_queue.put((callback, record))

    def _dispatch_loop(self) -> None:
        while True:
            item = self._dispatch_queue.get()
            if item is None:
                return
            callback, record = item
            try:
                callback(record)
            except Exception:
                log.exception("event callback raised")

    def _mark_lost(self, exc: QemudClientError) -> None:
        with self._cond:
            if self._lost is None:
                self._lost = exc
            self._cond.notify_all()
        for stream in list(self._streams.values()):
            stream._deliver(exc)
        self._streams.clear()

    @property
    def is_alive(self) -> bool:
        return self._lost is None and not self._closed

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Say goodbye and close; idempotent."""
        if self._closed:
            return
        if self._lost is None:
            try:
                self._call(P.Procedure.CLOSE, P.Empty(), P.Empty, timeout=5)
            except QemudClientError:
                pass
        self._closed = True
        self._mark_lost(ConnectionLost("connection closed"))
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._dispatch_queue.put(None)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._stop_threads()

    def _stop_threads(self) -> None:
        """End the reader and event threads, and close the wake pipe once the reader is
        out (a connection that failed its HELLO, or one closing, would leak 2 fds and a
        thread each: a monitoring loop against a stopped daemon makes one per try)."""
        self._closed = True
        self._mark_lost(ConnectionLost("connection closed"))
        with self._cond:
            if self._pipe_closed:
                return
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        self._dispatch_queue.put(None)
        if threading.current_thread() is not self._reader:
            self._reader.join(READER_EXIT)
        with self._cond:
            if self._reader.is_alive() or self._pipe_closed:
                return  # still polling the pipe: leave it open rather than race it
            self._pipe_closed = True
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection-level calls ----------------------------------------------------------

    def hostname(self) -> str:
        return self._call(P.Procedure.GET_HOSTNAME, P.Empty(), pl.StringReply).value

    def uri(self) -> str:
        return self._call(P.Procedure.GET_URI, P.Empty(), pl.StringReply).value

    def version(self) -> pl.VersionReply:
        return self._call(P.Procedure.GET_VERSION, P.Empty(), pl.VersionReply)

    def node_info(self) -> pl.NodeInfoReply:
        return self._call(P.Procedure.NODE_INFO, P.Empty(), pl.NodeInfoReply)

    def capabilities(self) -> str:
        return self._call(P.Procedure.CAPABILITIES, P.Empty(), pl.StringReply).value

    def node_stats(self) -> dict[str, int | float | str]:
        reply = self._call(P.Procedure.NODE_STATS, P.Empty(), pl.NodeStatsReply)
        return params_to_dict(reply.params)

    def node_cpu_stats(self, cpu: int = -1) -> dict[str, int | float | str]:
        """virNodeGetCPUStats: libvirt's fields (kernel, user, idle, iowait; ns) of host
        CPU ``cpu``, or of all CPUs (-1)."""
        reply = self._call(P.Procedure.NODE_GET_CPU_STATS, pl.NodeGetStatsArgs(cpu),
                           pl.NodeStatsReply)
        return params_to_dict(reply.params)

    def node_memory_stats(self, cell: int = -1) -> dict[str, int | float | str]:
        """virNodeGetMemoryStats: libvirt's fields (KiB) of NUMA cell ``cell``, or of the
        whole host (-1), in the daemon's order."""
        reply = self._call(P.Procedure.NODE_GET_MEMORY_STATS, pl.NodeGetStatsArgs(cell),
                           pl.NodeStatsReply)
        return params_to_dict(reply.params)

    def domain_xml_to_native(self, fmt: str, xml: str) -> str:
        """virConnectDomainXMLToNative: the command line the daemon would run for domain
        ``xml`` (defined or not), one line; ``fmt`` "qemu-argv" is the only format. A
        dry run: nothing is defined or started. Refused on a read-only connection."""
        return self._call(P.Procedure.CONNECT_DOMAIN_XML_TO_NATIVE,
                          pl.XMLToNativeArgs(fmt, xml), pl.StringReply).value

    # -- domains -------------------------------------------------------------------------

    def list_domains(self, flags: int = 0) -> list[Domain]:
        """Domains matching ``flags`` (libvirt's VIR_CONNECT_LIST_DOMAINS_*; 0 = all)."""
        reply = self._call(P.Procedure.DOMAIN_LIST, pl.ListDomainsArgs(int(flags)),
                           DomainListing)
        return ListedDomain.bind(reply.domains, self)

    def list_all(self) -> list[Domain]:
        return self.list_domains(0)

    def list_active(self) -> list[Domain]:
        return self.list_domains(ListFlags.ACTIVE)

    def lookup_by_name(self, name: str) -> Domain:
        return Domain(self, self._call(P.Procedure.DOMAIN_LOOKUP_BY_NAME, pl.NameArgs(name),
                                       pl.DomainReply).dom)

    def lookup_by_uuid(self, uuid: str | bytes) -> Domain:
        raw = uuid if isinstance(uuid, bytes) else uuidlib.UUID(uuid).bytes
        return Domain(self, self._call(P.Procedure.DOMAIN_LOOKUP_BY_UUID, pl.UUIDArgs(raw),
                                       pl.DomainReply).dom)

    def lookup_by_id(self, id: int) -> Domain:
        return Domain(self, self._call(P.Procedure.DOMAIN_LOOKUP_BY_ID, pl.IdArgs(id),
                                       pl.DomainReply).dom)

    def lookup(self, key: str) -> Domain:
        """The domain a virsh ``<domain>`` argument names, tried in virsh's order
        (vshLookupDomainBy): an id if ``key`` is a non-negative integer, then a UUID if it
        is 36 characters long, then a name. So a running domain with id 8 wins over a
        domain named ``8``, as it does in virsh.

        Raises the name lookup's NoDomainError (the daemon's message) if none matches.
        """
        from .errors import NoDomainError
        dom_id = domain_id(key)
        if dom_id is not None:
            try:
                return self.lookup_by_id(dom_id)
            except NoDomainError:
                pass
        uuid = domain_uuid(key)
        if uuid is not None:
            try:
                return self.lookup_by_uuid(uuid)
            except NoDomainError:
                pass
        return self.lookup_by_name(key)

    def define_xml(self, xml: str, flags: int = 0) -> Domain:
        return Domain(self, self._call(P.Procedure.DOMAIN_DEFINE_XML,
                                       pl.XMLFlagsArgs(xml, flags), pl.DomainReply).dom)

    def create_xml(self, xml: str, flags: int = 0) -> Domain:
        return Domain(self, self._call(P.Procedure.DOMAIN_CREATE_XML,
                                       pl.XMLFlagsArgs(xml, flags), pl.DomainReply).dom)

    def restore(self, path: str, flags: int = 0) -> Domain:
        """Start a guest from the state :meth:`Domain.save` wrote to ``path`` (made
        absolute here, as libvirt's virDomainRestore does): running or paused as the
        image records, unless ``flags`` has SAVE_RUNNING or SAVE_PAUSED."""
        return Domain(self, self._call(P.Procedure.DOMAIN_RESTORE,
                                       pl.RestoreArgs(os.path.abspath(path), flags),
                                       pl.DomainReply).dom)

    def domain_stats(self, domains: list[Domain] | None = None, flags: int = 0
                     ) -> list[tuple[Domain, dict[str, int | float | str]]]:
        refs = [d.ref for d in domains or []]
        reply = self._call(P.Procedure.DOMAIN_STATS, pl.StatsArgs(refs, flags), pl.StatsReply)
        return [(Domain(self, r.dom), params_to_dict(r.params)) for r in reply.records]

    # -- events --------------------------------------------------------------------------

    def register_event(self, event_id: EventId | int = EventId.LIFECYCLE,
                       callback: Callable[[EventRecord], None] | None = None,
                       domain: Domain | None = None) -> int:
        """Subscribe; events go to ``callback`` (on the dispatch thread) or to
        :meth:`next_event` / :meth:`iter_events` when no callback is given."""
        reply = self._call(P.Procedure.EVENT_REGISTER, pl.EventRegisterArgs(
            int(event_id), domain.uuid_bytes if domain else b""), pl.CallbackReply)
        with self._cond:
            self._callbacks[reply.callback_id] = callback
            for record in self._early.pop(reply.callback_id, []):
                self._route(callback, record)
        return reply.callback_id

    def deregister_event(self, callback_id: int) -> None:
        """Unsubscribe; its events not yet taken by :meth:`next_event` go too (a later
        reader must not get them)."""
        self._call(P.Procedure.EVENT_DEREGISTER, pl.CallbackArgs(callback_id), P.Empty)
        with self._cond:
            self._callbacks.pop(callback_id, None)
            self._early.pop(callback_id, None)
            self._events = collections.deque(
                r for r in self._events if r.callback_id != callback_id)

    def next_event(self, timeout: float | None = None) -> EventRecord | None:
        """The next queued event, or None after ``timeout`` seconds (None: wait as long
        as it takes). The events queued before the connection was lost are still
        returned; then :class:`ConnectionLost` is raised (None once closed here)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._events:
                if self._closed:
                    return None
                if self._lost is not None:
                    raise self._lost
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            return self._events.popleft()

    def iter_events(self, timeout: float) -> Iterator[EventRecord]:
        """Events until none arrives for ``timeout`` seconds."""
        while True:
            record = self.next_event(timeout)
            if record is None:
                return
            yield record

    # -- appliance -----------------------------------------------------------------------

    def hotplug_list(self) -> list[pl.HotplugInfo]:
        """Host devices matched by the daemon's udev hotplug rules, and where they are
        attached (``target`` is "" when not attached)."""
        return self._call(P.Procedure.HOTPLUG_LIST, P.Empty(), pl.HotplugListReply).devices

    # -- admin ---------------------------------------------------------------------------

    def client_list(self) -> list[pl.ClientInfo]:
        return self._call(P.Procedure.ADMIN_CLIENT_LIST, P.Empty(), pl.ClientListReply).clients

    def client_disconnect(self, client_id: int) -> None:
        self._call(P.Procedure.ADMIN_CLIENT_DISCONNECT, pl.ClientIdArgs(client_id), P.Empty)

    # -- used by Domain ------------------------------------------------------------------

    def open_stream(self, procedure: P.Procedure, args: Payload) -> Stream:
        with self._call_lock:
            serial = next(self._serials)
            stream = Stream(self, procedure, serial)
            self._streams[serial] = stream
            reply = self._exchange(P.Call(procedure, serial, args), None)
        if isinstance(reply, P.ErrorReply):
            self._streams.pop(serial, None)
            raise from_payload(reply.error)
        stream.reply = reply.result if isinstance(reply, P.Reply) else None
        return stream


def domain_id(key: str) -> int | None:
    """``key`` as a domain id, the way virsh reads one (a whole decimal int, >= 0)."""
    if not _ID.fullmatch(key):
        return None
    value = int(key)
    return value if 0 <= value <= _INT_MAX else None


def domain_uuid(key: str) -> str | None:
    """``key`` as a canonical UUID if virsh would try it as one (36 characters that
    parse), else None."""
    if len(key) != 36:
        return None
    try:
        return str(uuidlib.UUID(key))
    except ValueError:
        return None


def _readable(fds: list[int], timeout: float) -> set[int]:
    """The fds of ``fds`` readable within ``timeout`` s (poll: fds >= 1024 work too)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(timeout * 1000)}


def params_to_dict(params: list[pl.TypedParam]) -> dict[str, int | float | str]:
    out: dict[str, int | float | str] = {}
    for p in params:
        if p.kind == P.constants.TypedParamKind.INT:
            out[p.name] = p.int_value
        elif p.kind == P.constants.TypedParamKind.FLOAT:
            out[p.name] = p.float_value
        else:
            out[p.name] = p.str_value
    return out


def connect(uri: str | None = None, readonly: bool = False, *, keepalive_count: int = 5,
            client_name: str = "qemud-client", timeout: float = 10.0) -> Connection:
    """Connect to a daemon; ``uri`` defaults as :func:`client.uri.default_uri` says.

    ``timeout`` bounds the whole set-up: the socket's connect, the TLS handshake and the
    HELLO exchange. A daemon that is stopped (SIGSTOP) or hung is a ConnectFailed after
    it, not a wait forever. Once connected, keepalive notices such a daemon.
    """
    deadline = time.monotonic() + timeout
    parsed = parse_uri(uri or default_uri())
    try:
        sock = open_socket(parsed, readonly, timeout)
    except ConnectFailed:
        better = _no_readonly_socket(parsed, readonly)
        if better is not None:
            raise better from None
        raise
    try:
        return Connection(sock, parsed, readonly, keepalive_count, client_name,
                          timeout=max(deadline - time.monotonic(), 0.01))
    except _NoHelloReply:
        sock.close()
        raise _NoHelloReply(parsed, timeout) from None  # the caller's timeout, not the rest
    except BaseException:
        sock.close()
        raise


def _no_readonly_socket(uri: ParsedURI, readonly: bool) -> ConnectFailed | None:
    """The error for a daemon that runs without its read-only socket (listen.unix_ro =
    false), which open_socket would report as "not running"; None if that is not it."""
    if uri.transport != "unix" or not readonly or uri.socket is None:
        return None
    ro_path = uri.socket_path(readonly=True)
    try:
        if ro_path == uri.socket or ro_path.exists() or not uri.socket.is_socket():
            return None
    except OSError:  # a directory we may not search: no diagnosis, the first error stands
        return None
    return ConnectFailed(
        f"cannot connect to {uri.uri} read-only: the daemon has no read-only socket "
        f"({ro_path} does not exist, {uri.socket} does: listen.unix_ro is off). Connect "
        f"read-write, or, if you may use {uri.socket}, ask for a read-only session on it "
        f"with the URI qemud+unix:///{uri.mode}?socket={uri.socket}")
