"""CURVE keys for cistemd's TCP endpoints, and the allow-list that guards them.

Local clients and workers talk to the daemon over ``ipc://`` sockets inside
the owner-only runtime directory; nothing more is needed there. TCP endpoints
(remote workers, remote clients) use ZeroMQ's CURVE security: the daemon has
a server key pair, every peer has its own key pair, and a peer is let in only
if its public key is in the allow-list directory ``keys/authorized/``.

Files use ZeroMQ's certificate format (readable by :func:`zmq.auth.load_certificate`):
``NAME.key`` holds a public key, ``NAME.key_secret`` a public and a secret key.
Every key file is created 0600 (never world-readable, not even for an
instant), and a secret key file that group or others can read is refused with
an error naming the file and the ``chmod 600`` fix. Secrets never travel on a
command line: a worker gets its key pair and the server's public key through
a 0600 *credentials file* (:func:`write_credentials_file`).

:class:`ZapAllowList` answers ZeroMQ's authentication requests (ZAP, RFC 27)
from the daemon's own poll loop -- no thread -- admitting a CURVE peer whose
public key is in the allow-list and refusing everything else on the domains
it guards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cistemd.errors import CistemError

if TYPE_CHECKING:
    import zmq

__all__ = [
    "CURVE_DOMAIN",
    "InsecureKeyError",
    "KeyPair",
    "ZapAllowList",
    "authorize_public_key",
    "authorized_keys",
    "check_private_file",
    "ensure_server_keys",
    "generate_keypair",
    "load_keypair",
    "load_public_key",
    "read_credentials_file",
    "write_credentials_file",
    "write_keypair",
]

logger = logging.getLogger(__name__)

CURVE_DOMAIN: Final = "cistemd"
"""ZAP domain set on every CURVE socket of the daemon."""

_ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
_ZAP_VERSION: Final = b"1.0"


class InsecureKeyError(CistemError):
    """A key file that others could read, or that is not a usable key file."""

    code = "insecure_key"


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair, Z85-encoded (40 bytes each).

    Parameters
    ----------
    public
        The public key.
    secret
        The secret key (``None`` when only the public key is known).
    """

    public: bytes
    secret: bytes | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"KeyPair(public={self.public!r}, secret={'<hidden>' if self.secret else None})"


def generate_keypair() -> KeyPair:
    """Return a new CURVE key pair.

    Returns
    -------
    KeyPair
    """
    import zmq

    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


def check_private_file(path: str | os.PathLike[str]) -> None:
    """Refuse a secret file that is not a regular file owned by this user with mode 0600.

    Parameters
    ----------
    path
        The file.

    Raises
    ------
    InsecureKeyError
        Missing, a symlink, not a regular file, owned by another user, or
        readable/writable by group or others (the message says ``chmod 600 PATH``).
    """
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise InsecureKeyError(f"{path}: no such key file") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise InsecureKeyError(f"{path}: a key file must be a regular file, not a link")
    if info.st_uid != os.getuid():
        raise InsecureKeyError(
            f"{path}: belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
        )
    if info.st_mode & 0o077:
        raise InsecureKeyError(
            f"{path}: secret key file is accessible to other users "
            f"(mode {stat.S_IMODE(info.st_mode):03o}); cistemd refuses to use it. "
            f"Fix it with `chmod 600 {path}` (and consider the key compromised: "
            "delete it to have a new one generated)"
        )


def _write_private_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (fails if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may not narrow it, but be explicit
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            fd = -1
            handle.write(text)
    finally:
        if fd >= 0:
            os.close(fd)


def _certificate_text(keys: KeyPair, *, with_secret: bool) -> str:
    when = datetime.now(UTC).isoformat(timespec="seconds")
    kind = "secret" if with_secret else "public"
    lines = [
        f"#   cistemd CURVE {kind} certificate, created {when}",
        "#   ZeroMQ certificate format; keep secret files private (mode 0600).",
        "metadata",
        "curve",
        f'    public-key = "{keys.public.decode("ascii")}"',
    ]
    if with_secret:
        if keys.secret is None:
            raise ValueError("no secret key to write")
        lines.append(f'    secret-key = "{keys.secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def write_keypair(directory: str | os.PathLike[str], name: str, keys: KeyPair) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` in ``directory``, both 0600.

    Parameters
    ----------
    directory
        Where to write (must exist).
    name
        Base name of the files.
    keys
        The pair; its secret must be set.

    Returns
    -------
    tuple of Path
        ``(public_file, secret_file)``.

    Raises
    ------
    FileExistsError
        Either file exists already (keys are never overwritten).
    """
    directory = Path(directory)
    public_file = directory / f"{name}.key"
    secret_file = directory / f"{name}.key_secret"
    _write_private_file(secret_file, _certificate_text(keys, with_secret=True))
    try:
        _write_private_file(public_file, _certificate_text(keys, with_secret=False))
    except BaseException:
        secret_file.unlink(missing_ok=True)
        raise
    return public_file, secret_file


def _load(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise InsecureKeyError(f"{path}: not a usable key file ({exc})") from None
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise InsecureKeyError(f"{path}: keys must be 40-character Z85 strings")
    return public, secret


def load_keypair(path: str | os.PathLike[str]) -> KeyPair:
    """Load a secret certificate after checking that only its owner can read it.

    Parameters
    ----------
    path
        A ``.key_secret`` file.

    Returns
    -------
    KeyPair

    Raises
    ------
    InsecureKeyError
        See :func:`check_private_file`, or the file holds no secret key.
    """
    path = Path(path)
    check_private_file(path)
    public, secret = _load(path)
    if secret is None:
        raise InsecureKeyError(f"{path}: holds no secret key")
    return KeyPair(public, secret)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Load the public key of a certificate file.

    Parameters
    ----------
    path
        A ``.key`` (or ``.key_secret``) file.

    Returns
    -------
    bytes
        The Z85 public key.

    Raises
    ------
    InsecureKeyError
        Not a usable key file.
    """
    return _load(Path(path))[0]


def ensure_server_keys(keys_dir: str | os.PathLike[str]) -> KeyPair:
    """Return the daemon's key pair, creating ``server.key[_secret]`` the first time.

    Parameters
    ----------
    keys_dir
        ``$CISTEM_HOME/keys`` (must exist, 0700).

    Returns
    -------
    KeyPair

    Raises
    ------
    InsecureKeyError
        The existing secret file is readable by others (or broken).
    """
    keys_dir = Path(keys_dir)
    secret_file = keys_dir / "server.key_secret"
    if not secret_file.exists() and not secret_file.is_symlink():
        keys = generate_keypair()
        (keys_dir / "server.key").unlink(missing_ok=True)
        write_keypair(keys_dir, "server", keys)
        logger.info("created the daemon's CURVE key pair in %s", keys_dir)
        return keys
    return load_keypair(secret_file)


def authorize_public_key(
    authorized_dir: str | os.PathLike[str], name: str, public_key: bytes
) -> Path:
    """Add a public key to the allow-list.

    Parameters
    ----------
    authorized_dir
        ``$CISTEM_HOME/keys/authorized``.
    name
        File base name (letters, digits, ``-``, ``_``, ``.``).
    public_key
        Z85 public key (40 bytes).

    Returns
    -------
    Path
        The new ``NAME.key`` file.
    """
    if not name or any(not (c.isalnum() or c in "-_.") for c in name) or name.startswith("."):
        raise ValueError(f"bad key name {name!r}")
    if len(public_key) != 40:
        raise ValueError("a Z85 public key has 40 characters")
    path = Path(authorized_dir) / f"{name}.key"
    _write_private_file(path, _certificate_text(KeyPair(public_key), with_secret=False))
    return path


def authorized_keys(authorized_dir: str | os.PathLike[str]) -> frozenset[bytes]:
    """Return every public key in the allow-list directory (``*.key``).

    Unreadable or malformed files are skipped with a warning.

    Parameters
    ----------
    authorized_dir
        The directory.

    Returns
    -------
    frozenset of bytes
    """
    keys: set[bytes] = set()
    directory = Path(authorized_dir)
    if not directory.is_dir():
        return frozenset()
    for path in sorted(directory.glob("*.key")):
        try:
            keys.add(load_public_key(path))
        except InsecureKeyError as exc:
            logger.warning("allow-list: skipping %s", exc)
    return frozenset(keys)


def write_credentials_file(
    path: str | os.PathLike[str], *, server_public: bytes, client: KeyPair, endpoint: str
) -> Path:
    """Write what a remote worker needs to connect over CURVE, as a 0600 JSON file.

    Parameters
    ----------
    path
        The file to create (must not exist).
    server_public
        The daemon's public key.
    client
        The worker's key pair.
    endpoint
        The daemon's TCP endpoint.

    Returns
    -------
    Path
    """
    if client.secret is None:
        raise ValueError("a credentials file needs the client's secret key")
    data = {
        "endpoint": endpoint,
        "server_public_key": server_public.decode("ascii"),
        "public_key": client.public.decode("ascii"),
        "secret_key": client.secret.decode("ascii"),
    }
    path = Path(path)
    _write_private_file(path, json.dumps(data) + "\n")
    return path


def read_credentials_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a credentials file written by :func:`write_credentials_file`.

    Parameters
    ----------
    path
        The file; must be 0600 and owned by this user.

    Returns
    -------
    dict
        ``endpoint`` (str), ``server_public_key``, ``public_key``, ``secret_key`` (bytes).

    Raises
    ------
    InsecureKeyError
        Readable by others, or not a credentials file.
    """
    path = Path(path)
    check_private_file(path)
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        result: dict[str, Any] = {"endpoint": str(data["endpoint"])}
        for key in ("server_public_key", "public_key", "secret_key"):
            value = str(data[key]).encode("ascii")
            if len(value) != 40:
                raise ValueError(f"{key} is not a 40-character Z85 key")
            result[key] = value
    except (OSError, ValueError, KeyError, TypeError, UnicodeError) as exc:
        raise InsecureKeyError(f"{path}: not a cistemd credentials file ({exc})") from None
    return result


class ZapAllowList:
    """A ZAP handler admitting CURVE peers whose public key is in an allow-list.

    Bind it before any CURVE socket is bound; poll :attr:`socket` in the
    daemon's loop and call :meth:`handle` when it is readable. On the domains
    it guards (default :data:`CURVE_DOMAIN`) only the CURVE mechanism with an
    allowed key passes; other domains (sockets that set no ZAP domain do not
    ask at all) are admitted, being protected otherwise.

    Parameters
    ----------
    context
        The daemon's ZeroMQ context (ZAP is per context).
    authorized_dir
        Directory of allowed ``*.key`` files; re-read by :meth:`reload`.
    domains
        The ZAP domains that require an allowed CURVE key.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        authorized_dir: str | os.PathLike[str],
        *,
        domains: Iterable[str] = (CURVE_DOMAIN,),
    ) -> None:
        import zmq

        self.authorized_dir = Path(authorized_dir)
        self.domains = frozenset(domains)
        self.allowed: frozenset[bytes] = frozenset()
        self.admitted = 0
        self.refused = 0
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(_ZAP_ENDPOINT)
        self.reload()

    def reload(self) -> None:
        """Re-read the allow-list directory."""
        self.allowed = authorized_keys(self.authorized_dir)
        logger.info("CURVE allow-list: %d key(s) in %s", len(self.allowed), self.authorized_dir)

    def handle(self) -> None:
        """Answer one pending ZAP request (non-blocking; nothing pending is fine)."""
        import zmq
        import zmq.utils.z85

        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(frames) < 6:
            logger.warning("ZAP: malformed request of %d frames", len(frames))
            # A REP socket must answer before it can receive again.
            self.socket.send_multipart([_ZAP_VERSION, b"", b"500", b"malformed request", b"", b""])
            return
        version, request_id, domain_raw, address_raw, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        domain = domain_raw.decode("utf-8", "replace")
        address = address_raw.decode("utf-8", "replace")
        status, text, user = b"400", b"not allowed", b""
        if version != _ZAP_VERSION:
            status, text = b"500", b"unsupported ZAP version"
        elif domain not in self.domains:
            status, text = b"200", b"OK"
        elif mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            public = zmq.utils.z85.encode(credentials[0])
            if public in self.allowed:
                status, text, user = b"200", b"OK", public
            else:
                text = b"public key not in the allow-list"
        else:
            text = b"CURVE with an allowed key is required"
        if status == b"200":
            self.admitted += 1
        else:
            self.refused += 1
            logger.warning(
                "refused a %s connection from %s on domain %r: %s",
                mechanism.decode("ascii", "replace"),
                address,
                domain,
                text.decode(),
            )
        self.socket.send_multipart([_ZAP_VERSION, request_id, status, text, user, b""])

    def close(self) -> None:
        """Close the ZAP socket."""
        with contextlib.suppress(Exception):
            self.socket.close(linger=0)
