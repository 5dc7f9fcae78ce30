"""xe's command line, read as xe reads it.

The client part (newcli): `-s -p -u -pw -pwf -h --nossl --debug --traceparent` and their
`server= port= username= password= passwordfile= nossl=` forms; defaults from `~/.xe`
(`key=value` lines) and from `XE_EXTRA_ARGS` (comma-separated words, `\\,` escapes a comma).
A value given on the command line wins over XE_EXTRA_ARGS, which wins over ~/.xe.

The server part (cli_frontend): the first word is the command; then `--flag` means
`flag=true`, `-x value` is a two-word switch, and `key=value` splits at the first `=`.
"""

from __future__ import annotations

import os

from pyxapi.cli.errors import ParamError

TYPE_CHECKING = False  # typing and dataclasses cost xe ~30 ms at start: plain classes here
if TYPE_CHECKING:
    from collections.abc import Iterator

CLIENT_KEYS = {
    "server",
    "port",
    "username",
    "password",
    "passwordfile",
    "nossl",
    "debug",
    "debugonfail",
    "traceparent",
    "socket",
}
CLIENT_SWITCHES = {
    "-s": "server",
    "-h": "server",
    "-p": "port",
    "-u": "username",
    "-pw": "password",
    "-pwf": "passwordfile",
    "--traceparent": "traceparent",
}
CLIENT_FLAGS = {"--nossl": "nossl", "--debug": "debug", "--debug-on-fail": "debugonfail"}
# Two-word switches the server side knows (the client consumed the others already).
SERVER_SWITCHES = {"-u": "username", "-pw": "password", "-s": "server", "-h": "server", "-p": "port"}
# Parameters every command accepts: never object filters.
STD_PARAMS = (
    "server",
    "password",
    "port",
    "username",
    "minimal",
    "force",
    "multiple",
    "all",
    "message-priority",
    "trace",
)


class Usage(Exception):
    """Print xe's usage text and leave with status 0 (`xe`, `xe --help`)."""


class Params:
    """The command's `key=value` pairs in order; the first occurrence of a key wins, as in xapi."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, str]] | None = None) -> None:
        self.pairs = pairs if pairs is not None else []

    def __repr__(self) -> str:
        return f"Params({self.pairs!r})"

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.pairs)

    def __getitem__(self, key: str) -> str:
        for k, v in self.pairs:
            if k == key:
                return v
        raise KeyError(key)

    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.pairs:
            if k == key:
                return v
        return default

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.pairs if k == key]

    def __iter__(self) -> Iterator[str]:
        return iter([k for k, _ in self.pairs])

    def keys(self) -> list[str]:
        return [k for k, _ in self.pairs]

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.get(key)
        if value is None:
            return default
        return parse_bool(key, value)

    def prefixed(self, name: str) -> list[tuple[str, str]]:
        """`name:key=value` (or legacy `name-key=value`) pairs as (key, value)."""
        n = len(name) + 1
        return [(k[n:], v) for k, v in self.pairs if k.startswith(name) and len(k) > n]

    def without(self, keys: tuple[str, ...] | list[str] | set[str]) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.pairs if k not in keys]


def parse_bool(name: str, value: str) -> bool:
    v = value.lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    from pyxapi.cli.errors import CliFailure

    raise CliFailure(f"Failed to parse parameter '{name}': expecting a boolean (true or false)")


class ClientOptions:
    """Connection settings, with xe's defaults."""

    def __init__(self) -> None:
        self.server = "127.0.0.1"
        self.port: int | None = None
        self.username = "root"
        self.password = "null"
        self.passwordfile = ""
        self.nossl = False
        self.debug = False
        self.traceparent: str | None = None
        self.socket: str | None = None
        self.given: set[str] = set()  # which options were set explicitly

    def set(self, key: str, value: str) -> None:
        if key == "port":
            self.port = parse_port(value)
        elif key in ("nossl", "debug", "debugonfail"):
            flag = value.lower() == "true"
            if key == "nossl":
                self.nossl = flag
            elif key == "debug":
                self.debug = flag
        else:
            setattr(self, key, value)
        self.given.add(key)


def parse_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        import sys

        sys.stderr.write("Port number must be an integer (0-65535)\n")
        raise Usage
    return port


def read_rc(home: str | None = None) -> list[tuple[str, str]]:
    """~/.xe: `key=value` lines; one malformed line and none of it is used (as xe does)."""
    home = home if home is not None else os.environ.get("HOME", "")
    try:
        with open(os.path.join(home, ".xe")) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    pairs = []
    for line in lines:
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            import sys

            sys.stderr.write("Error parsing rc file. No defaults loaded\n")
            return []
        pairs.append((key, value))
    return pairs


def split_extra_args(text: str) -> list[str]:
    """XE_EXTRA_ARGS: words separated by commas; `\\,` keeps a comma inside a word."""
    words, cur, i = [], "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur += text[i + 1]
            i += 2
            continue
        if ch == ",":
            if cur:
                words.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    if cur:
        words.append(cur)
    return words


def _consume_client(words: list[str], opts: ClientOptions) -> list[str]:
    """Take the client's own options out of `words`; return the rest in order."""
    rest: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in CLIENT_SWITCHES and i + 1 < len(words):
            opts.set(CLIENT_SWITCHES[w], words[i + 1])
            i += 2
            continue
        if w in CLIENT_FLAGS:
            opts.set(CLIENT_FLAGS[w], "true")
            i += 1
            continue
        key, sep, value = w.partition("=")
        if sep and key in CLIENT_KEYS:
            opts.set(key, value)
        else:
            rest.append(w)
        i += 1
    return rest


def parse_client(argv: list[str], environ: dict[str, str] | None = None) -> tuple[ClientOptions, list[str], bool]:
    """Returns (options, words for the command, whether --help was asked for)."""
    env = os.environ if environ is None else environ
    opts = ClientOptions()
    rc_rest = []
    for key, value in read_rc(env.get("HOME")):
        if key in CLIENT_KEYS:
            opts.set(key, value)
        else:
            rc_rest.append(f"{key}={value}")
    extras_rest = _consume_client(split_extra_args(env.get("XE_EXTRA_ARGS", "")), opts)
    wants_help = any(w in ("-help", "--help") for w in argv)
    words = [w for w in argv if w not in ("-help", "--help")]
    args_rest = _consume_client(words, opts)
    if opts.passwordfile:
        read_password_file(opts)
    return opts, args_rest + extras_rest + rc_rest, wants_help


def read_password_file(opts: ClientOptions) -> None:
    from pyxapi.cli.errors import XeExit

    try:
        with open(opts.passwordfile) as f:
            lines = f.read().splitlines()
    except OSError:
        import sys

        sys.stderr.write(f"Error opening password file '{opts.passwordfile}'\n")
        raise XeExit(1) from None
    if len(lines) < 2:
        import sys

        sys.stderr.write(
            "Error: password file format: expecting username on the first line, password on the second line\n"
        )
        raise XeExit(1)
    opts.username, opts.password = lines[0], lines[1]
    opts.given |= {"username", "password"}


def parse_command(words: list[str]) -> tuple[str, Params]:
    """The server side: command name, then its parameters."""
    if not words:
        raise Usage
    name = words[0]
    if "=" in name:
        raise ParamError("Syntax error", "command name is missing")
    pairs: list[tuple[str, str]] = []
    i = 1
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            pairs.append((w[2:], "true"))
        elif w.startswith("-"):
            if w not in SERVER_SWITCHES:
                raise ParamError("Syntax error", f"Unknown switch: {w}")
            if i + 1 >= len(words):
                raise ParamError("Syntax error", "")
            pairs.append((SERVER_SWITCHES[w], words[i + 1]))
            i += 1
        else:
            key, _, value = w.partition("=")
            pairs.append((key, value))
        i += 1
    return name, Params(pairs)
