"""``qemud-certs``: create a small CA, issue server/client certificates, install, show.

A thin argparse front-end over :mod:`certs.issue`, :mod:`certs.install` and
:mod:`certs.describe`, so that everything it does is also available (and tested) as
a library.  Every user error -- argparse's included -- exits 1 with one
``error: <message>`` line on stderr naming the file or option at fault; the
message comes from the :class:`~certs.errors.CertError` raised below.

Working directory layout (``--dir``, default ``.``): ``cacert.pem``, ``cakey.pem``,
``servercert.pem``, ``serverkey.pem``, ``clientcert.pem``, ``clientkey.pem`` -- the
same names as a ``?pkipath=DIR`` directory (:meth:`PKIPaths.from_dir`).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)

from certs.checks import can_sign, check_is_ca, check_key_matches
from certs.describe import describe_cert
from certs.errors import CertError, CertFileError, CertFileExistsError, CertParamError
from certs.fsutil import ensure_dir
from certs.install import install_files
from certs.issue import (
    DEFAULT_CA_DAYS,
    DEFAULT_LEAF_DAYS,
    MAX_DAYS,
    make_ca,
    make_client_cert,
    make_server_cert,
    write_cert,
    write_key,
)
from certs.names import IPAddress, check_dn_text, normalize_hostname, parse_ip
from certs.paths import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CLIENT_CERT_FILE,
    CLIENT_KEY_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    Endpoint,
    PKIPaths,
)
from certs.pem import load_cert, load_certs, load_key
from certs.validity import Validity, not_after, validity_status
from qemud import __version__

__all__ = ["build_parser", "main"]

PROG = "qemud-certs"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors follow the CLI's ``error:``/exit 1 rule."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"error: {message}\n")


def _argtype(func: Callable[[str], object], name: str) -> Callable[[str], object]:
    """Adapt a validator raising CertParamError into an argparse ``type=``."""

    def convert(text: str) -> object:
        try:
            return func(text)
        except CertParamError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name  # argparse shows this in "invalid <name> value" messages
    return convert


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise CertParamError(f"{text!r} is not a whole number of days") from None
    if days <= 0:
        raise CertParamError(f"must be a positive number of days, got {days}")
    if days > MAX_DAYS:
        raise CertParamError(f"must be at most {MAX_DAYS} (100 years), got {days}")
    return days


def _text(what: str) -> Callable[[str], str]:
    return lambda value: check_dn_text(value, what)


# ---------------------------------------------------------------- helpers


def _say(message: str) -> None:
    print(message, flush=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    """Check every output up front so a refused run writes nothing at all."""
    if force:
        return
    for p in paths:
        if os.path.lexists(p):
            raise CertFileExistsError(f"refusing to overwrite existing file {p}", p)


def _write_pair(directory: Path, cert_name: str, key_name: str, key: PrivateKeyTypes,
                cert: x509.Certificate, force: bool) -> None:
    cert_path, key_path = directory / cert_name, directory / key_name
    _refuse_existing([cert_path, key_path], force)
    ensure_dir(directory, 0o700)
    write_key(key_path, key, force=force)
    write_cert(cert_path, cert, force=force)
    _say(f"wrote {key_path} (private key, mode 0600)")
    _say(f"wrote {cert_path}")


def _load_ca(directory: Path) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    for path in (cert_path, key_path):
        if not path.exists():
            raise CertFileError(
                f"CA file {path} does not exist (create a CA with "
                f"'{PROG} ca --dir {directory}' or point --dir at one)", path
            )
    cert = load_cert(cert_path, "CA certificate")
    key = load_key(key_path, "CA private key")
    _warn_if_exposed(key_path)
    check_is_ca(cert, f"CA certificate {cert_path}")
    check_key_matches(key, cert, f"CA private key {key_path}", f"CA certificate {cert_path}")
    if not can_sign(key):
        raise CertFileError(f"CA private key {key_path} cannot sign certificates", key_path)
    status = validity_status(cert)
    if status is not Validity.VALID:
        raise CertFileError(f"CA certificate {cert_path} is {status.value}", cert_path)
    return key, cert


def _warn_if_exposed(key_path: Path) -> None:
    """Warn when users other than the owner may read the CA key it is about to sign with:
    anyone who can read it can issue certificates every qemud trusting the CA accepts."""
    try:
        mode = stat.S_IMODE(key_path.stat().st_mode)
    except OSError:
        return  # it was just read; a race is not worth a second error
    if mode & 0o077:
        who = "all users" if mode & 0o007 else "its group"
        _warn(f"CA private key {key_path} is open to {who} (mode {mode:04o}): anyone who "
              f"can read it can issue certificates your daemons trust; "
              f"run 'chmod 600 {key_path}'")


def _warn_outlives_ca(cert: x509.Certificate, ca: x509.Certificate) -> None:
    if not_after(cert) > not_after(ca):
        _warn(f"the certificate is valid until {not_after(cert):%Y-%m-%d} but the CA "
              f"expires on {not_after(ca):%Y-%m-%d}; it stops working then")


# ---------------------------------------------------------------- commands


def _cmd_ca(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    _refuse_existing([directory / CA_CERT_FILE, directory / CA_KEY_FILE], args.force)
    key, cert = make_ca(args.cn, days=args.days)
    _write_pair(directory, CA_CERT_FILE, CA_KEY_FILE, key, cert, args.force)


def _cmd_server(args: argparse.Namespace) -> None:
    hostnames: list[str] = args.hostname or []
    ips: list[IPAddress] = args.ip or []
    if not hostnames and not ips:
        raise CertParamError("a server certificate needs at least one --hostname or --ip")
    directory = Path(args.dir)
    _refuse_existing([directory / SERVER_CERT_FILE, directory / SERVER_KEY_FILE], args.force)
    ca_key, ca_cert = _load_ca(directory)
    key, cert = make_server_cert(ca_key, ca_cert, hostnames, ips, days=args.days)
    _write_pair(directory, SERVER_CERT_FILE, SERVER_KEY_FILE, key, cert, args.force)
    _warn_outlives_ca(cert, ca_cert)


def _cmd_client(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    _refuse_existing([directory / CLIENT_CERT_FILE, directory / CLIENT_KEY_FILE], args.force)
    ca_key, ca_cert = _load_ca(directory)
    key, cert = make_client_cert(ca_key, ca_cert, args.cn, args.org, days=args.days)
    _write_pair(directory, CLIENT_CERT_FILE, CLIENT_KEY_FILE, key, cert, args.force)
    _warn_outlives_ca(cert, ca_cert)


def _cmd_install(args: argparse.Namespace) -> None:
    system = args.system if args.system or args.session else os.geteuid() == 0
    paths = PKIPaths.system(args.prefix) if system else PKIPaths.session(args.prefix)
    endpoint: Endpoint = args.role or ("server" if system else "client")
    directory = Path(args.dir)
    ca, cert, key = args.ca, args.cert, args.key
    if ca is None and cert is None and key is None:
        source = PKIPaths.from_dir(directory)
        ca, cert, key = source.ca_cert, source.cert(endpoint), source.key(endpoint)
    elif (cert is None) != (key is None):
        raise CertParamError("--cert and --key must be given together")
    for item in install_files(paths, endpoint, ca=ca, cert=cert, key=key, force=args.force):
        _say(f"installed {item.source} -> {item.target} (mode {item.mode:04o})")
        if item.target != paths.key(endpoint):
            status = validity_status(load_cert(item.target))
            if status is not Validity.VALID:
                _warn(f"{item.target} is {status.value}")


def _cmd_show(args: argparse.Namespace) -> None:
    now = datetime.now().astimezone()
    blocks: list[str] = []
    for name in args.files:
        certs = load_certs(Path(name))
        for i, cert in enumerate(certs, start=1):
            header = f"{name}" + (f" (certificate {i} of {len(certs)})" if len(certs) > 1 else "")
            blocks.append(f"{header}\n{describe_cert(cert, now)}")
    _say("\n\n".join(blocks))


# ---------------------------------------------------------------- parser


def _add_common(p: argparse.ArgumentParser, days: int) -> None:
    p.add_argument("--dir", metavar="D", default=".",
                   help="working directory holding cacert.pem/cakey.pem and receiving the "
                        "new files (default: current directory)")
    p.add_argument("--days", metavar="N", type=_argtype(_days, "days"), default=days,
                   help=f"validity period in days, 1..{MAX_DAYS} (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="replace existing output files instead of refusing")


def build_parser() -> argparse.ArgumentParser:
    """The ``qemud-certs`` argument parser (exposed for tests and docs)."""
    parser = _Parser(
        prog=PROG,
        description="Create and manage the TLS certificates qemud uses for mutual TLS. "
                    "Keys are EC P-256; private keys are written mode 0600.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("ca", help="create a CA key and self-signed CA certificate",
                       description="Create cakey.pem and cacert.pem in --dir "
                                   "(CA:TRUE, keyCertSign+cRLSign).")
    _add_common(p, DEFAULT_CA_DAYS)
    p.add_argument("--cn", metavar="NAME", default="qemud CA", type=_argtype(_text("--cn"), "cn"),
                   help="the CA's common name (default: %(default)r)")
    p.set_defaults(func=_cmd_ca)

    p = sub.add_parser("server", help="issue a server certificate signed by the CA",
                       description="Issue servercert.pem/serverkey.pem in --dir, signed by "
                                   "the CA in --dir (EKU serverAuth, SANs from --hostname/--ip).")
    _add_common(p, DEFAULT_LEAF_DAYS)
    p.add_argument("--hostname", metavar="H", action="append",
                   type=_argtype(normalize_hostname, "hostname"),
                   help="DNS name clients use to reach the daemon; repeatable; the first "
                        "one is also the subject CN")
    p.add_argument("--ip", metavar="A", action="append", type=_argtype(parse_ip, "ip"),
                   help="IPv4/IPv6 address clients use to reach the daemon; repeatable")
    p.set_defaults(func=_cmd_server)

    p = sub.add_parser("client", help="issue a client certificate signed by the CA",
                       description="Issue clientcert.pem/clientkey.pem in --dir, signed by "
                                   "the CA in --dir (EKU clientAuth, subject O=ORG,CN=CN).")
    _add_common(p, DEFAULT_LEAF_DAYS)
    p.add_argument("--cn", metavar="CN", required=True, type=_argtype(_text("--cn"), "cn"),
                   help="the client's common name, e.g. a user name (matched by allow-lists)")
    p.add_argument("--org", metavar="O", type=_argtype(_text("--org"), "org"),
                   help="organization (O) to put before the CN in the subject")
    p.set_defaults(func=_cmd_client)

    p = sub.add_parser("install", help="copy CA/certificate/key to the default locations",
                       description="Validate and copy certificates into the system "
                                   "(/etc/pki/...) or per-user (~/.pki/qemud) layout. With none "
                                   "of --ca/--cert/--key, installs cacert.pem and the --role "
                                   "pair from --dir.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--system", action="store_true",
                      help="install into /etc/pki/CA and /etc/pki/qemud "
                           "(default when run as root)")
    mode.add_argument("--session", action="store_true",
                      help="install into ~/.pki/qemud (default when not root)")
    p.add_argument("--ca", metavar="F", type=Path, help="CA certificate to install")
    p.add_argument("--cert", metavar="F", type=Path,
                   help="certificate to install for --role (needs --key)")
    p.add_argument("--key", metavar="F", type=Path,
                   help="private key to install for --role (needs --cert); written 0600")
    p.add_argument("--role", choices=("server", "client"),
                   help="install --cert/--key as the server or client pair "
                        "(default: server with --system, client with --session)")
    p.add_argument("--prefix", metavar="ROOT",
                   help="relocate the target layout: the filesystem root for --system, the "
                        "home directory for --session (for tests and image building)")
    p.add_argument("--dir", metavar="D", default=".",
                   help="where to take cacert.pem and the --role certificate/key from when "
                        "none of --ca/--cert/--key is given (default: current directory)")
    p.add_argument("--force", action="store_true",
                   help="replace already installed files instead of refusing")
    p.set_defaults(func=_cmd_install)

    p = sub.add_parser("show", help="print a certificate's subject, SANs, usage and validity",
                       description="Print subject/issuer DN (the exact string allow-lists "
                                   "match), serial, SANs, key usage, EKU and validity, "
                                   "flagging EXPIRED / NOT YET VALID.")
    p.add_argument("files", metavar="FILE", nargs="+", help="PEM or DER certificate file")
    p.set_defaults(func=_cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 error)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CertFileExistsError as e:
        print(f"error: {e} (use --force to replace it)", file=sys.stderr)
        return 1
    except CertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `qemud-certs show x.pem | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as e:  # safety net; certs wraps file errors itself
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
