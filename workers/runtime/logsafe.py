"""Secrets out of texts that evalq stores or logs: errors, log records, URLs.

Provider keys stay in the environment. What could still carry one into a stored error, a
report or a log line is masked here, in one place:

- the values of secret-looking environment variables (``*_API_KEY``, ``*_TOKEN``, ...);
- values evalq itself sent that may be credentials (the header values of a model call),
  remembered with :func:`remember_secret`;
- anything shaped like a credential: ``Bearer <token>``, ``Basic <base64>``, ``sk-...``;
- a URL's userinfo (``user:pass@``) and query string (``?token=...``).

:func:`install_log_filters` puts one filter on the loggers of the HTTP libraries (httpx
logs "HTTP Request: POST https://host/hook?token=..." at INFO), the OpenAI client and
litellm, so their records are scrubbed whatever the log level and whoever handles them.
A filter must sit on the logger that emits a record (a parent's filters are not
consulted for its children's records), hence the list of exact names.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import threading
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit

MASK = "***"
_SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_KEY")
MIN_SECRET_CHARS = 8  # shorter values are not credentials, and masking "1" garbles texts
_REMEMBERED_MAX = 1000

# `Bearer abc.def` and `Basic dXNlcjpwYXNz` (base64 of user:pass): the scheme is kept, the
# value masked. A "basic" followed by an ordinary word is left alone.
_BEARER = re.compile(r"\b(bearer)(\s+)([A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE)
_BASIC = re.compile(r"\b(basic)(\s+)([A-Za-z0-9+/]{4,}={0,2})", re.IGNORECASE)
_KEY_SHAPED = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_SECRET_WORDS = ("secret", "password", "passwd", "authoriz", "credential", "cookie",
                 "signature")
_SECRET_SEGMENTS = frozenset({"auth", "sig", "pwd", "pass"})

# A header value given as `env:NAME` is read from the calling process's environment
# (workers.llm.calls): the parameter stores the variable's name, never its value.
ENV_REFERENCE = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")

_remembered: set[str] = set()
_lock = threading.Lock()


def remember_secret(value: str) -> None:
    """Mask `value` from now on in this process's stored errors and scrubbed log records
    (a header value a model call sends). Short values are ignored; at most 1000 kept."""
    if len(value) < MIN_SECRET_CHARS:
        return
    with _lock:
        if value not in _remembered and len(_remembered) < _REMEMBERED_MAX:
            _remembered.add(value)


def secret_name(name: str) -> bool:
    """True for a name that says its value is a credential: a header (Authorization,
    X-API-Key, Cookie, X-Auth-Token), a query parameter (key, token, sig) or a model
    parameter (api_key, access_token, client_secret); not max_tokens or top_k."""
    lowered = name.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    return any(part.endswith(("key", "token")) or part in _SECRET_SEGMENTS
               for part in re.split(r"[^a-z0-9]+", lowered))


def secret_param(name: str, value: Any) -> str | None:
    """Why the model parameter `name` = `value` carries a credential, or None: its name
    looks like one, a mapping in it (headers) has a secret-looking key with a text value,
    or a text in it is shaped like one (`Bearer ...`, `Basic ...`, `sk-...`, the value of
    a secret environment variable, a URL password). An `env:NAME` value is a reference
    to an environment variable, not a credential."""
    if secret_name(name):
        return "by its name"
    stack: list[tuple[str | None, Any]] = [(None, value)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, dict):
            stack += [(str(k), v) for k, v in item.items()]
        elif isinstance(item, list | tuple):
            stack += [(key, v) for v in item]
        elif isinstance(item, str):
            if ENV_REFERENCE.match(item):
                continue  # a variable's name: the value stays in the environment
            if key is not None and secret_name(key):
                return f"{key!r} in it is named like a credential"
            if mask_credentials(item) != item:
                where = f"the value of {key!r}" if key is not None else "a value in it"
                return f"{where} is shaped like a credential"
    return None


def strip_url(url: str) -> str:
    """`url` without userinfo, query string or fragment: `https://host:8443/path`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # an unparseable URL: keep what precedes any query or userinfo
        head = url.split("?", 1)[0].split("#", 1)[0]
        return re.sub(r"//[^/@]*@", "//", head)
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, "", ""))


def mask_url(url: str) -> str:
    """`url` for display: its password and query parameter values masked, names kept
    (`https://hooks.example/evalq?token=***`)."""
    text = re.sub(r"(://)[^/\s@]*@", rf"\1{MASK}@", url)
    head, sep, query = text.partition("?")
    if not sep:
        return text
    names = [name for name, _ in parse_qsl(query.partition("#")[0], keep_blank_values=True)]
    return head + "?" + "&".join(f"{name}={MASK}" for name in names)


def scrub_urls(text: str) -> str:
    """Every URL in `text` with its userinfo, query string and fragment removed."""
    return _URL.sub(lambda m: strip_url(m.group(0)), text)


def mask_credentials(text: str, values: tuple[str, ...] | list[str] = ()) -> str:
    """`text` with secret values masked: secret-looking environment variables, values
    remembered with remember_secret, the given `values` (of 8 characters or more),
    `Bearer`/`Basic` credentials, `sk-` keys and URL userinfo."""
    secrets = [v for v in values if len(v) >= MIN_SECRET_CHARS]
    secrets += [value for name, value in os.environ.items()
                if len(value) >= MIN_SECRET_CHARS and name.upper().endswith(_SECRET_SUFFIXES)]
    with _lock:
        secrets += _remembered
    for value in sorted(set(secrets), key=len, reverse=True):  # longest first
        if value in text:
            text = text.replace(value, MASK)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _BASIC.sub(_mask_basic, text)
    text = _KEY_SHAPED.sub(MASK, text)
    return re.sub(r"(://)[^/\s@'\"<>]*@", rf"\1{MASK}@", text)


def _mask_basic(match: re.Match[str]) -> str:
    value = match.group(3).rstrip("=")
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return match.group(0)
    if ":" not in decoded or not decoded.isprintable():  # user:pass
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{MASK}"


def scrub(text: str) -> str:
    """A log line made safe: credentials masked, URLs without userinfo or query string."""
    return scrub_urls(mask_credentials(text))


def url_secret(url: str) -> str | None:
    """Why `url` carries a credential (userinfo, or a secret-looking query parameter),
    or None when it carries none."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None:
        return "it holds a user name or password (user:pass@)"
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if secret_name(name):
            return f"its query parameter {name!r} looks like a credential"
    return None


def http_url_problem(url: str) -> str | None:
    """What makes `url` unusable as an http(s) endpoint, or None when it is one."""
    if not url or url != url.strip() or any(c.isspace() for c in url):
        return "it is empty or contains spaces"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"it is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return (f"its scheme is {parts.scheme!r}, not http or https" if parts.scheme
                else "it has no http:// or https:// scheme")
    if not parts.hostname:
        return "it has no host"
    return None


class ScrubFilter(logging.Filter):
    """Rewrites a record's message with :func:`scrub`; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


# The loggers that emit request URLs, headers or provider texts.
SCRUBBED_LOGGERS = (
    "httpx",
    "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
    "httpcore.socks",
    "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.connection",
    "urllib3.response", "urllib3.util.retry",
    "openai", "openai._base_client",
    "LiteLLM", "LiteLLM Router", "LiteLLM Proxy",
)
_FILTER = ScrubFilter()
_installed = False


def install_log_filters() -> None:
    """Put the scrubbing filter on every logger in SCRUBBED_LOGGERS, once per process."""
    global _installed
    with _lock:
        if _installed:
            return
        for name in SCRUBBED_LOGGERS:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
        _installed = True
