"""Connection URIs, libvirt style.

=========================================  ============================================
``qemud:///session``                       the per-user daemon's socket
``qemud:///system``                        the system daemon's socket (/run/qemud)
``qemud+unix:///system?socket=/path``      an explicit socket path
``qemud+tls://host[:port]/system``         TLS; ``?pkipath=DIR``, ``?no_verify=1``
=========================================  ============================================

With no URI, ``$QEMUD_DEFAULT_URI`` is used, then ``uri_default`` from
``~/.config/qemud/client.toml``, then ``qemud:///system`` for root and
``qemud:///session`` for everyone else (as virsh does).
"""

from __future__ import annotations

import os
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
    socket: Path | None = None  # unix: the rw socket (ro is derived)
    host: str | None = None
    port: int = DEFAULT_TLS_PORT
    pkipath: Path | None = None
    no_verify: bool = False

    def socket_path(self, readonly: bool) -> Path:
        assert self.socket is not None
        if readonly and self.socket.name == "qemud-sock":
            return self.socket.with_name("qemud-sock-ro")
        return self.socket


def _session_socket() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/qemud-{os.getuid()}"
    return Path(runtime) / "qemud" / "qemud-sock"


def parse_uri(uri: str) -> ParsedURI:
    parts = urlsplit(uri)
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
    if transport == "unix":
        if parts.netloc:
            raise InvalidURI(f"invalid URI {uri!r}: a local URI has no host "
                             f"({parts.netloc!r}); use qemud+tls://{parts.netloc}/{mode}")
        if "socket" in params:
            if not params["socket"]:
                raise InvalidURI(f"invalid URI {uri!r}: socket= needs a path")
            sock = Path(params["socket"])
        elif mode == "system":
            sock = Path("/run/qemud/qemud-sock")
        else:
            sock = _session_socket()
        return ParsedURI(uri, "unix", mode, socket=sock)
    if not parts.hostname:
        raise InvalidURI(f"invalid URI {uri!r}: qemud+tls needs a host, e.g. "
                         f"qemud+tls://host.example/{mode}")
    try:
        port = parts.port or DEFAULT_TLS_PORT
    except ValueError:
        raise InvalidURI(f"invalid URI {uri!r}: bad port in {parts.netloc!r}") from None
    no_verify = params.get("no_verify", "0")
    if no_verify not in ("0", "1"):
        raise InvalidURI(f"invalid URI {uri!r}: no_verify must be 0 or 1")
    return ParsedURI(uri, "tls", mode, host=parts.hostname, port=port,
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
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidURI(f"{client_conf}: {exc}") from None
        if value:
            return str(value)
    return "qemud:///system" if os.geteuid() == 0 else "qemud:///session"
