"""Listeners and client connections, all driven by the one event loop.

Per client: non-blocking reads are fed to a sans-IO :class:`protocol.Connection` until
a complete frame is there; the call is dispatched; the reply is queued and written
without blocking. No further call is read from a client until its reply has been written
(synchronous per client, as in the original qemud), while other clients carry on.

Every limit is here, with what happens when it is hit:

* ``max_clients``: a further connection gets an error frame and is closed;
* ``max_frame``: a larger length field gets an error frame and the connection is closed;
* ``frame_deadline``: a client that leaves a frame incomplete that long is dropped;
* ``keepalive_interval``/``keepalive_count``: an idle client is pinged, and dropped after
  that many unanswered pings;
* ``max_queued_bytes``: a client that does not read its replies/events is dropped;
* ``tls_handshake_deadline``: a TLS client that has not finished its handshake is dropped.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from protocol import (
    CLOSED,
    NEED_DATA,
    Call,
    Connection,
    ErrorReply,
    Event,
    Ping,
    Pong,
    Reply,
    Role,
    StreamAbort,
    StreamData,
    StreamEnd,
)
from protocol.constants import ErrorCode, ErrorDomain, ErrorLevel
from protocol.errors import HelloRequired, ProtocolError, UnsupportedVersion, VersionMismatch
from protocol.messages import Message
from protocol.payloads import ErrorPayload

from .config import MAX_UNIX_PATH, Config
from .dispatch import Deferred, Dispatcher, error_payload
from .errors import AuthFailed, OperationTimeout, QemudError
from .loop import READ, WRITE, EventLoop, Timer
from .transport import Transport, UnixTransport, WouldBlock

if TYPE_CHECKING:
    import ssl

    from .tls_transport import TLSTransport

__all__ = ["Server", "Client", "Listener"]

log = logging.getLogger(__name__)

#: bytes asked of one recv(). Below glibc's mmap threshold (128 KiB) on purpose: recv(n)
#: allocates n bytes first, and a 256 KiB buffer was an mmap + munmap per call, ~13 µs
#: of a ~50 µs node-info call. Larger frames arrive over several reads (epoll is
#: level-triggered).
RECV_SIZE = 64 * 1024
#: seconds a refused TLS client gets to read the alert/error frame before we close
TLS_LINGER = 2.0
#: seconds a listener is left alone after accept() failed for lack of fds or memory
ACCEPT_PAUSE = 0.25
#: messages handled for one client before the loop serves the others: a client that
#: pipelines thousands of small calls (and reads the replies) must not stall everyone
MESSAGES_PER_TURN = 64
_client_ids = itertools.count(1)
_CLIENT_LOG = logging.getLogger("qemud.client")


def _client_logger(client_id: int) -> logging.Logger:
    """A logger named ``qemud.client.<id>`` that logging's registry does not keep.

    ``logging.getLogger`` never forgets a logger, so one per connection would leak ~1 KiB
    for every connection the daemon ever accepted. This one propagates to ``qemud.client``
    (and the root handlers) as a registered child would, and dies with its client.
    """
    logger = logging.Logger(f"{_CLIENT_LOG.name}.{client_id}")
    logger.parent = _CLIENT_LOG
    return logger


#: the client slots kept for the read-write socket and TLS (see :func:`kept_for_admins`)
ADMIN_SLOTS = 16

#: a password attribute in XML as a payload's repr shows it (``passwd='x'``, or with the
#: quote escaped when the string holds both kinds)
_SECRET_ATTR = re.compile(r"""(passwd=)(\\?['"])(.*?)\2""")


def kept_for_admins(max_clients: int) -> int:
    """How many of ``max_clients`` the read-only unix socket may not take: any local
    user can connect there, and filling every slot would lock root out of the
    read-write socket (libvirt keeps its admin socket apart for the same reason)."""
    return min(ADMIN_SLOTS, max_clients // 2)


def redacted(text: str) -> str:
    """``text`` (a call's arguments, for the debug log) without the passwords its XML
    may set (a VNC ``<graphics passwd=...>``): the log file outlives the call."""
    return _SECRET_ATTR.sub(r"\1\2***\2", text)


class StreamHandler:
    """Receives a client's STREAM frames for one open stream (e.g. a console)."""

    def on_data(self, data: bytes) -> None:
        raise NotImplementedError

    def on_end(self) -> None:
        raise NotImplementedError


class StreamPacing:
    """How fast the daemon feeds an outgoing stream (a screenshot, a support bundle).

    The source is read a :attr:`chunk` per loop turn, so a large one never holds the
    loop, and reading pauses (for :data:`RETRY` seconds at a time) while the client has
    more than :attr:`queue_high` unsent, so a slow reader neither makes the daemon hold
    the whole thing nor gets dropped for going over ``limits.max_queued_bytes``: both are
    kept well below that limit, the one in force (a SIGHUP reloads the limits).
    """

    #: unsent bytes at which reading pauses, bytes read per turn (before the limit's say)
    QUEUE_HIGH = 1024 * 1024
    CHUNK = 256 * 1024
    #: seconds between looks at a paused client's queue
    RETRY = 0.05

    def __init__(self, config: Config) -> None:
        self.config = config

    @property
    def queue_high(self) -> int:
        return min(self.QUEUE_HIGH, self.config.limits.max_queued_bytes // 2)

    @property
    def chunk(self) -> int:
        return max(4096, min(self.CHUNK, self.config.limits.max_queued_bytes // 4))

    def paused(self, client: Client) -> bool:
        """True while the client has too much unsent to be given more."""
        return len(client.out) > self.queue_high


class Client:
    """One connected client: its transport, protocol state, queue and timers."""

    def __init__(self, server: Server, transport: Transport, kind: str, readonly: bool,
                 identity: str) -> None:
        self.server = server
        self.id = next(_client_ids)
        self.transport = transport
        self.kind = kind  # "unix", "unix-ro", "tls"
        self.readonly = readonly
        self.identity = identity
        self.client_name = ""
        self.conn = Connection(Role.SERVER, max_frame=server.config.limits.max_frame)
        self.out = bytearray()
        self.busy: Deferred | None = None  # the call whose reply is still being computed
        self.closing = False
        self.closed = False
        #: TLS: (deadline, reason) while closing and waiting for the client's EOF
        self.linger: tuple[float, str] | None = None
        self.since = time.time()
        self.accepted_at = time.monotonic()
        self.calls = 0
        self.last_rx = time.monotonic()
        self.pings = 0
        self.partial_since: float | None = None
        #: continuation of a turn cut at MESSAGES_PER_TURN (no reading until it ran)
        self.turn: Timer | None = None
        #: event registrations: callback_id -> (event_id, uuid filter or b"")
        self.callbacks: dict[int, tuple[int, bytes]] = {}
        #: open streams by the serial of the call that opened them
        self.streams: dict[int, StreamHandler] = {}
        self.on_close: list[Callable[[Client], None]] = []
        self.interest = 0  # events currently registered with the loop
        self.current_serial = 0  # serial of the call being dispatched (opens streams)
        self.log = _client_logger(self.id)

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.kind} {self.identity}>"


class Listener:
    """A listening socket and how to wrap what it accepts."""

    def __init__(self, sock: socket.socket, kind: str, readonly: bool,
                 path: Path | None = None, tls_context: ssl.SSLContext | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.kind = kind
        self.readonly = readonly
        self.path = path
        self.tls_context = tls_context

    def close(self) -> None:
        self.sock.close()
        if self.path is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


class Server:
    """Accepts clients and moves frames between them and the dispatcher."""

    def __init__(self, loop: EventLoop, config: Config, dispatcher: Dispatcher,
                 tls_identify: Callable[[TLSTransport], tuple[str, bool]] | None = None
                 ) -> None:
        self.loop = loop
        self.config = config
        self.dispatcher = dispatcher
        self.tls_identify = tls_identify
        self.listeners: list[Listener] = []
        self.clients: dict[int, Client] = {}
        #: the clients of the read-only unix socket (0666: any local user), which may
        #: not take the slots :func:`kept_for_admins` keeps
        self.unix_ro_clients = 0
        self.accepting = True
        self._housekeeping: Timer | None = None

    # -- listening -----------------------------------------------------------------------

    def listen_unix(self, path: Path, mode: int, readonly: bool) -> None:
        """Bind a unix socket at ``path`` with permissions ``mode`` (stale file replaced)."""
        key = "listen.unix_ro" if readonly else "listen.unix_rw"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # we hold the state-dir lock, so it is a stale socket
            else:
                raise QemudError(f"{path} ({key}) exists and is not a socket; refusing to "
                                 "replace it")
        except FileNotFoundError:
            pass
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            raise QemudError(f"cannot listen on {path} ({key}): the path has "
                             f"{len(os.fsencode(path))} bytes, a unix socket path at most "
                             f"{MAX_UNIX_PATH}; choose a shorter paths.run_dir (--run-dir)")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 ^ mode)
        bound = False
        try:
            sock.bind(str(path))
            bound = True
            os.chmod(path, mode)
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            if bound:  # ours, and never served: no stale socket for clients to find
                path.unlink(missing_ok=True)
            raise QemudError(f"cannot listen on {path} ({key}): "
                             f"{exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        self._add_listener(Listener(sock, "unix-ro" if readonly else "unix", readonly, path))
        log.info("listening on %s (%s, mode %o)", path,
                 "read-only" if readonly else "read-write", mode)

    def listen_tls(self, address: str, port: int, context: ssl.SSLContext) -> int:
        """Listen for TLS clients; returns the bound port (useful when ``port`` is 0)."""
        from . import tls_transport  # noqa: F401 - now, not in the loop at the first client
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(1024)
        except OSError as exc:  # in use, not an address of this host, name not known ...
            sock.close()
            raise QemudError(f"cannot listen for TLS on {address}:{port} "
                             f"(listen.tls_address, listen.tls_port): "
                             f"{exc.strerror or exc}") from None
        bound = int(sock.getsockname()[1])
        self._add_listener(Listener(sock, "tls", False, None, context))
        log.info("listening for TLS on %s:%d", address, bound)
        return bound

    def _add_listener(self, listener: Listener) -> None:
        self.listeners.append(listener)
        self.loop.add(listener.sock.fileno(), READ, lambda mask: self._on_accept(listener))
        if self._housekeeping is None:
            self._schedule_housekeeping()

    def _on_accept(self, listener: Listener) -> None:
        for _ in range(64):  # bounded batch so one busy listener cannot starve the loop
            try:
                sock, addr = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that one connection failed; the next may be fine
                # EMFILE/ENFILE/ENOBUFS...: the pending connection stays in the backlog
                # and the listener stays readable, so retrying now would spin the loop.
                log.warning("accept on %s failed: %s; not accepting for %g s", listener.kind,
                            exc, ACCEPT_PAUSE)
                self._pause_listener(listener)
                return
            if not self.accepting:
                sock.close()
                continue
            limit = self.config.limits.max_clients
            if len(self.clients) >= limit:
                log.warning("refusing %s client: too many clients (max_clients=%d)",
                            listener.kind, limit)
                self._refuse(sock, listener, f"too many clients (max_clients={limit})")
                continue
            kept = kept_for_admins(limit)
            if listener.kind == "unix-ro" and self.unix_ro_clients >= limit - kept:
                why = (f"too many read-only clients (max_clients={limit}, of which {kept} "
                       "are kept for the read-write socket and TLS)")
                log.warning("refusing %s client: %s", listener.kind, why)
                self._refuse(sock, listener, why)
                continue
            self._admit(sock, addr, listener)

    def _pause_listener(self, listener: Listener) -> None:
        fd = listener.sock.fileno()
        self.loop.remove(fd)

        def resume() -> None:
            if self.accepting and listener in self.listeners:
                self.loop.add(fd, READ, lambda mask: self._on_accept(listener))
        self.loop.call_later(ACCEPT_PAUSE, resume)

    def _refuse(self, sock: socket.socket, listener: Listener, message: str) -> None:
        if listener.tls_context is None:
            frame = Connection(Role.SERVER).send(ErrorReply(0, 0, ErrorPayload(
                int(ErrorCode.LIMIT_EXCEEDED), int(ErrorDomain.RPC), int(ErrorLevel.ERROR),
                message)))
            try:
                sock.setblocking(False)
                sock.send(frame)
            except OSError:
                pass
        sock.close()

    def _admit(self, sock: socket.socket, addr: Any, listener: Listener) -> None:
        transport: Transport
        if listener.tls_context is not None:
            try:
                # Small frames must not wait for ACKs: with Nagle on, a reply that follows
                # TLS 1.3's session ticket waited ~40 ms for the client's delayed ACK.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                from .tls_transport import TLSTransport  # loaded by listen_tls
                transport = TLSTransport(sock, listener.tls_context)
            except OSError as exc:  # ssl.SSLError is an OSError
                log.warning("TLS client %s refused: %s", addr, exc)
                sock.close()
                return
            identity = f"addr={addr[0]}:{addr[1]}"
        else:
            transport = UnixTransport(sock)
            cred = transport.peercred()
            identity = f"pid={cred.pid} uid={cred.uid}"
        # a TLS client is read-only until its certificate says otherwise (_handshake)
        client = Client(self, transport, listener.kind,
                        listener.readonly or not transport.handshake_done, identity)
        self.clients[client.id] = client
        if client.kind == "unix-ro":
            self.unix_ro_clients += 1
        client.log.info("connected via %s (%s)", listener.kind, identity)
        if transport.handshake_done:
            self._update_interest(client)
        else:
            self._handshake(client)

    # -- per-client I/O ------------------------------------------------------------------

    def _update_interest(self, client: Client) -> None:
        if client.closed:
            return
        events = 0
        if client.out:
            events |= WRITE
        if not client.closing and client.busy is None and client.turn is None and (
                not client.out or client.streams):
            events |= READ
        if events == client.interest:
            return
        fd = client.transport.fileno()
        if events:
            self.loop.add(fd, events, functools.partial(self._on_io, client))
        else:
            self.loop.remove(fd)
        client.interest = events

    def _handshake(self, client: Client) -> None:
        assert client.transport.kind == "tls"
        try:
            client.transport.handshake_step()
        except WouldBlock as wb:
            self.loop.add(client.transport.fileno(), wb.wants,
                          functools.partial(self._handshake_ready, client))
            client.interest = -1  # not the I/O handler: force re-registration later
            return
        except OSError as exc:  # ssl.SSLError is an OSError
            from .tls_transport import tls_failure_reason
            reason = tls_failure_reason(exc)
            client.log.warning("TLS handshake with %s refused: %s", client.identity, reason)
            self._linger(client, f"TLS handshake failed: {reason}")
            return
        assert self.tls_identify is not None
        try:
            identity, readonly = self.tls_identify(cast("TLSTransport", client.transport))
        except Exception as exc:  # whatever fails, the client is refused, never let in
            if not isinstance(exc, QemudError):
                client.log.exception("identifying TLS client %s failed", client.identity)
                exc = AuthFailed(f"access denied: the client certificate cannot be "
                                 f"read ({exc!r})")
            client.log.warning("TLS client %s refused: %s", client.identity, exc.message)
            self._queue(client, client.conn.send(ErrorReply(0, 0, error_payload(exc))))
            client.closing = True
            self._flush(client)
            return
        client.identity, client.readonly = identity, readonly
        client.log.info("TLS client identified as %s (%s) by its certificate%s", identity,
                        "read-only" if readonly else "full", "" if readonly else
                        "; its HELLO may still ask for read-only")
        self._update_interest(client)

    def _handshake_ready(self, client: Client, mask: int) -> None:
        self._handshake(client)

    def _on_io(self, client: Client, mask: int) -> None:
        if client.closed:
            return
        if mask & WRITE:
            self._flush(client)
            if client.closed:
                return
        if mask & READ:
            self._read(client)
        if not client.closed:
            self._process(client)

    def _read(self, client: Client) -> None:
        transport = client.transport
        try:
            data = transport.recv(RECV_SIZE)
            while transport.pending():  # TLS may hold decrypted bytes select() cannot see
                data += transport.recv(RECV_SIZE)
        except WouldBlock:
            return
        except OSError as exc:  # ssl.SSLError included
            self.close_client(client, f"read error: {exc}")
            return
        client.last_rx = time.monotonic()
        client.pings = 0
        client.conn.receive_data(data)

    def _process(self, client: Client) -> None:
        """Handle buffered messages while the client is allowed another call."""
        handled = 0
        while not client.closed and not client.closing and client.busy is None and (
                not client.out or client.streams):
            if handled == MESSAGES_PER_TURN:
                if client.turn is None:  # the rest after the other clients had theirs
                    client.turn = self.loop.call_soon(functools.partial(self._next_turn, client))
                break
            handled += 1
            try:
                msg = client.conn.next_message()
            except ProtocolError as exc:
                self._protocol_error(client, exc)
                continue
            if msg is NEED_DATA:
                if client.conn.has_partial_frame:
                    if client.partial_since is None:
                        client.partial_since = time.monotonic()
                else:
                    client.partial_since = None
                break
            if msg is CLOSED:
                self.close_client(client, "client closed the connection")
                return
            # a frame completed: whatever follows is a new frame, timed from when it is
            # seen incomplete (NEED_DATA above), so steady traffic never hits frame_deadline
            client.partial_since = None
            self._handle(client, msg)  # type: ignore[arg-type]
            if client.out and not self._write_out(client):
                return  # optimistic write failed hard: the client is gone
        self._flush(client)

    def _next_turn(self, client: Client) -> None:
        client.turn = None
        if not client.closed:
            self._process(client)  # (its _flush re-enables reading once the buffer is done)

    def _handle(self, client: Client, msg: Message) -> None:
        if isinstance(msg, Call):
            client.calls += 1
            client.current_serial = msg.serial
            if client.log.isEnabledFor(logging.DEBUG):
                client.log.debug("--> %s serial=%d %s", msg.procedure.name, msg.serial,
                                 redacted(repr(msg.args)))
            outcome = self.dispatcher.dispatch(client, msg)
            if isinstance(outcome, Deferred):
                self._await(client, msg, outcome)
            else:
                self._reply(client, outcome)
        elif isinstance(msg, Ping):
            self._queue(client, client.conn.send(Pong()))
        elif isinstance(msg, Pong):
            client.pings = 0
        elif isinstance(msg, StreamData | StreamEnd | StreamAbort):
            handler = client.streams.get(msg.serial)
            if handler is None:
                client.log.debug("stream frame for closed stream %d dropped", msg.serial)
            elif isinstance(msg, StreamData):
                handler.on_data(msg.data)
            else:
                client.streams.pop(msg.serial, None)
                handler.on_end()
        else:  # the protocol layer does not yield client-only messages to a server
            client.log.warning("unexpected %s from client", type(msg).__name__)

    def _await(self, client: Client, call: Call, deferred: Deferred) -> None:
        client.busy = deferred
        deadline = self.loop.call_later(
            self.config.limits.call_deadline,
            lambda: deferred.fail(OperationTimeout(
                f"{call.procedure.name} did not complete within "
                f"{self.config.limits.call_deadline:g} s (limits.call_deadline); the work "
                "goes on and may still complete: look at the domain before trying again")))

        def done(d: Deferred) -> None:
            deadline.cancel()
            client.busy = None
            if client.closed:
                return
            if d.error is not None:
                self._reply(client, ErrorReply(call.procedure, call.serial,
                                               error_payload(d.error)))
            else:
                assert d.result is not None
                self._reply(client, Reply(call.procedure, call.serial, d.result))
            self._process(client)
            self._update_interest(client)

        deferred.add_done_callback(done)
        self._update_interest(client)

    def _reply(self, client: Client, reply: Reply | ErrorReply) -> None:
        try:
            data = client.conn.send(reply)
        except ProtocolError as exc:  # e.g. a reply larger than max_frame
            client.log.error("cannot send reply to serial %d: %s", reply.serial, exc)
            data = client.conn.send(ErrorReply(reply.procedure, reply.serial, ErrorPayload(
                int(ErrorCode.LIMIT_EXCEEDED), int(ErrorDomain.RPC), int(ErrorLevel.ERROR),
                f"reply too large to send: {exc}")))
        if isinstance(reply, ErrorReply):
            client.log.debug("<-- error serial=%d: %s", reply.serial, reply.error.message)
        else:
            client.log.debug("<-- %s serial=%d", reply.procedure.name, reply.serial)
        self._queue(client, data)

    def _protocol_error(self, client: Client, exc: ProtocolError) -> None:
        if isinstance(exc, HelloRequired):
            code = ErrorCode.HELLO_REQUIRED
        elif isinstance(exc, UnsupportedVersion | VersionMismatch):
            code = ErrorCode.UNSUPPORTED_VERSION
        else:
            code = ErrorCode.RPC
        client.log.warning("protocol error: %s", exc.message)
        payload = ErrorPayload(int(code), int(ErrorDomain.RPC), int(ErrorLevel.ERROR),
                               exc.message)
        self._queue(client, client.conn.send(ErrorReply(exc.procedure or 0, exc.serial or 0,
                                                        payload))
                    if not exc.fatal else _raw_error(payload, exc))
        if exc.fatal:
            client.closing = True
            self._flush(client)

    def _queue(self, client: Client, data: bytes) -> None:
        client.out += data
        limit = self.config.limits.max_queued_bytes
        if len(client.out) > limit and self._send_now(client) and len(client.out) > limit:
            # (what the socket takes at once is not queued: a reply larger than the limit
            # is fine for a client that reads it)
            client.log.warning("dropping client: %d bytes queued, over max_queued_bytes=%d "
                               "(it does not read its replies/events)", len(client.out), limit)
            self.close_client(client, "output queue over limit")

    def _send_now(self, client: Client) -> bool:
        """Send what the socket takes now; False if the client had to be closed."""
        out = client.out
        while out:
            try:
                sent = client.transport.send(out)
            except WouldBlock:
                return True
            except OSError as exc:  # ssl.SSLError included
                self.close_client(client, f"write error: {exc}")
                return False
            del out[:sent]
        return not client.closed

    def _write_out(self, client: Client) -> bool:
        """Write what the socket takes now; False if the client had to be closed."""
        if not self._send_now(client):
            return False
        if client.out:
            return True
        if client.closing:
            if client.transport.kind == "tls":
                self._linger(client, "closed after final reply")
            else:
                self.close_client(client, "closed after final reply")
            return False
        return True

    def _linger(self, client: Client, reason: str) -> None:
        """Close a TLS client once it has read what we sent last (at most TLS_LINGER s).

        Closing at once, with the client's HELLO or handshake records still unread, makes
        the kernel send RST, and the client may then never see the alert or error frame
        that says why it was refused.
        """
        assert client.transport.kind == "tls"
        transport = cast("TLSTransport", client.transport)
        client.closing = True
        try:
            transport.shutdown_write()
        except OSError:
            self.close_client(client, reason)
            return
        client.linger = (time.monotonic() + TLS_LINGER, reason)

        def drain(mask: int, c: Client = client) -> None:
            if transport.drain():
                self.close_client(c, reason)

        self.loop.add(transport.fileno(), READ, drain)
        client.interest = -1

    def _flush(self, client: Client) -> None:
        if client.closed:
            return
        if self._write_out(client):
            self._update_interest(client)

    # -- events and streams --------------------------------------------------------------

    def send_event(self, client: Client, event: Event) -> None:
        """Queue an event frame to ``client`` (never blocks; overflow drops the client)."""
        if client.closed or client.closing:
            return
        self._queue(client, client.conn.send(event))
        self._flush(client)

    def send_stream(self, client: Client, msg: StreamData | StreamEnd | StreamAbort) -> None:
        if client.closed:
            return
        self._queue(client, client.conn.send(msg))
        self._flush(client)

    # -- closing -------------------------------------------------------------------------

    def close_client(self, client: Client, reason: str) -> None:
        if client.closed:
            return
        client.closed = True
        if client.turn is not None:
            client.turn.cancel()
            client.turn = None
        self.loop.remove(client.transport.fileno())
        client.transport.close()
        if self.clients.pop(client.id, None) is not None and client.kind == "unix-ro":
            self.unix_ro_clients -= 1
        if client.busy is not None:
            client.busy = None  # the work goes on; its reply has nowhere to go
        for handler in list(client.streams.values()):
            handler.on_end()
        client.streams.clear()
        for cb in client.on_close:
            try:
                cb(client)
            except Exception:
                log.exception("close callback failed for %r", client)
        client.log.info("disconnected: %s (%d calls)", reason, client.calls)

    def stop_listening(self) -> None:
        self.accepting = False
        for listener in self.listeners:
            self.loop.remove(listener.sock.fileno())
            listener.close()
        self.listeners.clear()

    def drained(self) -> bool:
        """True when no client has a reply owed or unsent (used during shutdown)."""
        return all(c.busy is None and not c.out for c in self.clients.values())

    def close_all(self, reason: str) -> None:
        for client in list(self.clients.values()):
            self.close_client(client, reason)
        if self._housekeeping is not None:
            self._housekeeping.cancel()

    # -- housekeeping: deadlines and keepalive -------------------------------------------

    def _schedule_housekeeping(self) -> None:
        lim = self.config.limits
        period = min(1.0, lim.frame_deadline / 4, lim.tls_handshake_deadline / 4)
        if lim.keepalive_interval:
            period = min(period, lim.keepalive_interval / 2)
        self._housekeeping = self.loop.call_later(max(period, 0.05), self._housekeep)

    def _housekeep(self) -> None:
        now = time.monotonic()
        lim = self.config.limits
        for client in list(self.clients.values()):
            if client.linger is not None:
                if now > client.linger[0]:
                    self.close_client(client, client.linger[1])
                continue
            if not client.transport.handshake_done:
                if now - client.accepted_at > lim.tls_handshake_deadline:
                    client.log.warning("TLS handshake from %s not finished within %g s "
                                       "(tls_handshake_deadline): it sent nothing or stalled "
                                       "mid-handshake", client.identity,
                                       lim.tls_handshake_deadline)
                    self.close_client(client, "TLS handshake deadline")
                continue
            if client.partial_since is not None and now - client.partial_since > \
                    lim.frame_deadline:
                client.log.warning("frame incomplete after %g s (frame_deadline); dropping",
                                   lim.frame_deadline)
                self.close_client(client, "partial frame deadline")
                continue
            if lim.keepalive_interval and not client.streams:
                # Busy clients (a deferred call in progress) are pinged too, so they know the
                # daemon is alive while QEMU works; their pongs wait in the socket until the
                # reply is out, so only idle clients can be dropped for silence.
                idle = now - client.last_rx
                if idle >= lim.keepalive_interval * (client.pings + 1):
                    if client.pings >= lim.keepalive_count and client.busy is None:
                        client.log.warning("no answer to %d keepalive pings; dropping",
                                           client.pings)
                        self.close_client(client, "keepalive timeout")
                        continue
                    client.pings += 1
                    self._queue(client, client.conn.send(Ping()))
                    self._flush(client)
        self._schedule_housekeeping()


def _raw_error(payload: ErrorPayload, exc: ProtocolError) -> bytes:
    """An error frame for a connection whose protocol state is broken."""
    return Connection(Role.SERVER).send(ErrorReply(exc.procedure or 0, exc.serial or 0, payload))
