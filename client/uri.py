"""Connection URIs, libvirt style.

=========================================  ============================================
``qemud:///session``                       the per-user daemon's socket
``qemud:///system``                        the system daemon's socket (/run/qemud)
``qemud+unix:///system?socket=/path``      an explicit socket path, used as given
``qemud+tls://host[:port]/system``         TLS; ``?pkipath=DIR``, ``?no_verify=1``
=========================================  ============================================

With no URI, ``$QEMUD_DEFAULT_URI`` is used, then ``uri_default`` from
``~/.config/qemud/client.toml``, then ``qemud:///system`` for root and
``qemud:///session`` for everyone else (as virsh does).

A read-only connection to a local daemon goes to the read-only socket next to the
derived one (``qemud-sock-ro``). An explicit ``socket=`` is used as given, also for
read-only: the client then asks for read-only in its HELLO, as libvirt does.

Every malformed URI raises :class:`InvalidURI` naming the bad part, never ``ValueError``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .errors import InvalidURI

__all__ = ["ParsedURI", "parse_uri", "default_uri", "DEFAULT_TLS_PORT"]

DEFAULT_TLS_PORT = 16514
_SCHEMES = {"qemud": "unix", "qemud+unix": "unix", "qemud+tls": "tls"}
_PARAMS = {"socket", "pkipath", "no_verify"}


@dataclass(frozen=True)
class ParsedURI:
    uri: str
    transport: str  # "unix" | "tls"
    mode: str  # "session" | "system"
    socket: Path | None = None  # unix: the rw socket (ro is derived unless explicit)
    host: str | None = None
    port: int = DEFAULT_TLS_PORT
    pkipath: Path | None = None
    no_verify: bool = False
    #: unix: the socket came from ``socket=`` and is used as given, also for read-only
    explicit_socket: bool = False

    def socket_path(self, readonly: bool) -> Path:
        """The socket to open: a derived socket's ``-ro`` sibling for read-only, an
        explicit ``socket=`` always as given (read-only is then asked for in the HELLO)."""
        assert self.socket is not None
        if readonly and not self.explicit_socket and self.socket.name == "qemud-sock":
            return self.socket.with_name("qemud-sock-ro")
        return self.socket


def _session_socket() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/qemud-{os.getuid()}"
    return Path(runtime) / "qemud" / "qemud-sock"


#: HOST or [IPv6] then an optional :PORT, and nothing else (urlsplit drops the rest)
_HOSTPORT = re.compile(r"(\[[^\[\]@]*\]|[^\[\]:@]+)(:[0-9]*)?")


def parse_uri(uri: str) -> ParsedURI:
    """``uri`` taken apart; InvalidURI (quoting the URI, naming the bad part) if malformed."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # unbalanced or bad [IPv6] brackets
        raise InvalidURI(f"invalid URI {uri!r}: malformed host part: {exc} (an IPv6 address "
                         "goes in brackets, e.g. qemud+tls://[::1]/system)") from None
    if parts.scheme not in _SCHEMES:
        raise InvalidURI(f"invalid URI {uri!r}: unknown scheme {parts.scheme!r} (use "
                         f"{', '.join(sorted(_SCHEMES))})")
    transport = _SCHEMES[parts.scheme]
    mode = parts.path.strip("/")
    if mode not in ("session", "system"):
        raise InvalidURI(f"invalid URI {uri!r}: path must be /session or /system, "
                         f"not {parts.path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - _PARAMS
    if unknown:
        raise InvalidURI(f"invalid URI {uri!r}: unknown parameter(s) "
                         f"{', '.join(sorted(unknown))} (known: {', '.join(sorted(_PARAMS))})")
    params = {k: v[-1] for k, v in query.items()}
    for name, value in params.items():
        if "\0" in value:
            raise InvalidURI(f"invalid URI {uri!r}: {name}= contains a NUL byte")
    if parts.fragment:
        raise InvalidURI(f"invalid URI {uri!r}: unexpected fragment '#{parts.fragment}' (a "
                         "'#' in a path must be written %23)")
    if transport == "unix":
        if parts.netloc:
            raise InvalidURI(f"invalid URI {uri!r}: a local URI has no host "
                             f"({parts.netloc!r}); use qemud+tls://{parts.netloc}/{mode}")
        if "socket" in params:
            if not params["socket"]:
                raise InvalidURI(f"invalid URI {uri!r}: socket= needs a path")
            return ParsedURI(uri, "unix", mode, socket=Path(params["socket"]),
                             explicit_socket=True)
        if mode == "system":
            sock = Path("/run/qemud/qemud-sock")
        else:
            sock = _session_socket()
        return ParsedURI(uri, "unix", mode, socket=sock)
    if not parts.hostname:
        raise InvalidURI(f"invalid URI {uri!r}: qemud+tls needs a host, e.g. "
                         f"qemud+tls://host.example/{mode}")
    try:
        port = parts.port
    except ValueError:
        raise InvalidURI(f"invalid URI {uri!r}: bad port in {parts.netloc!r}") from None
    if port == 0:
        raise InvalidURI(f"invalid URI {uri!r}: bad port in {parts.netloc!r} (1-65535)")
    if "@" in parts.netloc:
        raise InvalidURI(f"invalid URI {uri!r}: a user name ({parts.netloc!r}) is not used "
                         "by qemud+tls: the client certificate is the identity")
    if not _HOSTPORT.fullmatch(parts.netloc):
        raise InvalidURI(f"invalid URI {uri!r}: malformed host[:port] {parts.netloc!r}")
    host = parts.hostname
    if ":" not in host:  # a name or IPv4 address, not IPv6
        try:
            host.encode("idna")
        except UnicodeError as exc:  # what socket.getaddrinfo() would raise
            reason = re.sub(r"^encoding with 'idna' codec failed \(UnicodeError: (.*)\)$",
                            r"\1", str(exc))
            raise InvalidURI(f"invalid URI {uri!r}: bad host name {host!r} ({reason})"
                             ) from None
    no_verify = params.get("no_verify", "0")
    if no_verify not in ("0", "1"):
        raise InvalidURI(f"invalid URI {uri!r}: no_verify must be 0 or 1")
    return ParsedURI(uri, "tls", mode, host=host, port=port or DEFAULT_TLS_PORT,
                     pkipath=Path(params["pkipath"]) if params.get("pkipath") else None,
                     no_verify=no_verify == "1")


def default_uri() -> str:
    env = os.environ.get("QEMUD_DEFAULT_URI")
    if env:
        return env
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    client_conf = config_home / "qemud" / "client.toml"
    if client_conf.exists():
        try:
            value = tomllib.loads(client_conf.read_text()).get("uri_default")
        except UnicodeDecodeError:
            raise InvalidURI(f"{client_conf}: not UTF-8 text") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidURI(f"{client_conf}: {exc}") from None
        if value:
            return str(value)
    return "qemud:///system" if os.geteuid() == 0 else "qemud:///session"
