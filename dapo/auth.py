"""The deployment's secrets: the service token, the Redis password, TLS files; and keeping them out of logs.

Every secret is read from an environment variable, or from the file named by the same variable with
`_FILE` appended (a mounted Kubernetes Secret); setting both is an error that names them.

| variable | what |
|---|---|
| `DAPO_SERVICE_TOKEN` | sent by every gRPC client of ours, required by every gRPC server (health excepted) |
| `DAPO_API_TOKEN` | the controller's REST bearer token on mutating endpoints (may equal the service token) |
| `DAPO_REDIS_PASSWORD` | Redis AUTH password, used when the Redis URL carries none |
| `DAPO_TLS_CERT_FILE`, `DAPO_TLS_KEY_FILE` | PEM certificate and key: gRPC and REST serve TLS |
| `DAPO_TLS_CA_FILE` | PEM CA: clients verify servers with it; gRPC servers then require client certificates |
| `DAPO_TLS_SERVER_NAME` | the name clients check server certificates against (for addresses that are IPs) |

Nothing here logs a secret: `redact_url` hides the password of a URL wherever one is shown.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SERVICE_TOKEN = "DAPO_SERVICE_TOKEN"
API_TOKEN = "DAPO_API_TOKEN"
REDIS_PASSWORD = "DAPO_REDIS_PASSWORD"
TLS_CERT_FILE = "DAPO_TLS_CERT_FILE"
TLS_KEY_FILE = "DAPO_TLS_KEY_FILE"
TLS_CA_FILE = "DAPO_TLS_CA_FILE"
TLS_SERVER_NAME = "DAPO_TLS_SERVER_NAME"
REDACTED = "***"


def read_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of `$name`, else the contents of the file `$name_FILE` (stripped); None if neither is set."""
    env = os.environ if environ is None else environ
    value, path = env.get(name) or None, env.get(f"{name}_FILE") or None
    if value is not None and path is not None:
        raise ValueError(f"{name} and {name}_FILE are both set: set one of them")
    if path is None:
        return value
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{name}_FILE={path}: cannot read it ({exc.strerror})") from exc
    if not text:
        raise ValueError(f"{name}_FILE={path}: the file is empty")
    return text


def service_token(environ: Mapping[str, str] | None = None) -> str | None:
    return read_secret(SERVICE_TOKEN, environ)


def api_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The controller's REST bearer token (none: the REST API's mutating endpoints are open)."""
    return read_secret(API_TOKEN, environ)


def redis_password(environ: Mapping[str, str] | None = None) -> str | None:
    return read_secret(REDIS_PASSWORD, environ)


def new_token() -> str:
    """A random token (256 bits, URL-safe), e.g. for one local launch."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TlsFiles:
    """The deployment's TLS material (PEM files). One certificate serves as server and client certificate."""

    cert_file: str
    key_file: str
    ca_file: str | None = None
    server_name: str | None = None

    @property
    def is_mutual(self) -> bool:
        return self.ca_file is not None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, private key, CA certificates or None)."""
        ca = Path(self.ca_file).read_bytes() if self.ca_file else None
        return Path(self.cert_file).read_bytes(), Path(self.key_file).read_bytes(), ca


def tls_files(environ: Mapping[str, str] | None = None) -> TlsFiles | None:
    """The TLS files from the environment; None when $DAPO_TLS_CERT_FILE is not set (plain text)."""
    env = os.environ if environ is None else environ
    cert, key, ca = (env.get(n) or None for n in (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE))
    if cert is None and key is None:
        if ca is not None:
            raise ValueError(f"{TLS_CA_FILE} is set without {TLS_CERT_FILE} and {TLS_KEY_FILE}")
        return None
    if cert is None or key is None:
        missing = TLS_CERT_FILE if cert is None else TLS_KEY_FILE
        raise ValueError(f"{missing} is not set: TLS needs both {TLS_CERT_FILE} and {TLS_KEY_FILE}")
    for name, path in ((TLS_CERT_FILE, cert), (TLS_KEY_FILE, key), (TLS_CA_FILE, ca)):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{name}={path}: no such file (expected a PEM file)")
    return TlsFiles(cert, key, ca, env.get(TLS_SERVER_NAME) or None)


def redact_url(url: str) -> str:
    """`url` with its password (if any) replaced by ***, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{REDACTED}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redis_options(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for `redis.Redis.from_url(url, ...)`: the password of $DAPO_REDIS_PASSWORD when the
    URL has none, and for a `rediss://` URL the deployment's CA, certificate and key."""
    options: dict[str, Any] = {}
    if urlsplit(url).password is None:
        password = redis_password(environ)
        if password is not None:
            options["password"] = password
    if url.startswith("rediss://"):
        tls = tls_files(environ)
        if tls is not None:
            options.update(ssl_certfile=tls.cert_file, ssl_keyfile=tls.key_file)
            if tls.ca_file is not None:
                options["ssl_ca_certs"] = tls.ca_file
    return options


def uvicorn_tls_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """uvicorn's HTTPS settings from the TLS files ({} without them). REST clients (users, browsers)
    authenticate with the API token, so no client certificate is asked for."""
    tls = tls_files(environ)
    if tls is None:
        return {}
    return {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}


def http_verify(environ: Mapping[str, str] | None = None) -> ssl.SSLContext | bool:
    """What an HTTP client of ours (httpx `verify=`) checks servers with: the deployment's CA if there is one."""
    tls = tls_files(environ)
    if tls is None or tls.ca_file is None:
        return True
    return ssl.create_default_context(cafile=tls.ca_file)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's view
    return bool((mapped or address).is_loopback)


def warn_if_exposed(host: str, setting: str, logger: logging.Logger) -> None:
    """Warn when a server listens beyond loopback with no service token to check."""
    if not is_loopback(host) and service_token() is None:
        logger.warning(
            "%s binds %s without %s: anyone who reaches this port can call every method; set %s (or %s_FILE)",
            setting,
            host,
            SERVICE_TOKEN,
            SERVICE_TOKEN,
            SERVICE_TOKEN,
        )
