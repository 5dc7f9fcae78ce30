"""Path rules shared by the directory-backed drivers: nothing a client names may leave the SR directory."""

from __future__ import annotations

import os
import re
import uuid as uuidlib
from collections.abc import Mapping

from .base import InvalidDeviceConfig, InvalidUuid, SMError, UnsafePath

# File-SR VDI names: what we generate (<uuid>.qcow2) plus what an admin may drop in, without anything a
# shell, a qemu option string (',' ':') or a URL parser could misread.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,250}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def device_config_dir(
    device_config: Mapping[str, str],
    key: str = "location",
    missing: SMError = SMError.CONFIG_LOCATION_MISSING,
    invalid: SMError = SMError.INVALID_ARG,
) -> str:
    """The directory named by device_config[key]: absolute, normalised, no '.'/'..' components."""
    value = device_config.get(key)
    if not value:
        raise InvalidDeviceConfig(key, "missing", missing)
    if not isinstance(value, str) or _CONTROL.search(value):
        raise InvalidDeviceConfig(key, "contains control characters", invalid)
    if not value.startswith("/"):
        raise InvalidDeviceConfig(key, f"{value!r} is not an absolute path", invalid)
    stripped = value.rstrip("/")
    if not stripped:
        raise InvalidDeviceConfig(key, "the root directory cannot be an SR", invalid)
    parts = stripped.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidDeviceConfig(key, f"{value!r} must be a normalised path without '.' or '..'", invalid)
    return stripped


def check_file_name(location: str, suffixes: tuple[str, ...]) -> str:
    """A VDI location in a file SR: a plain file name of safe characters with a known suffix."""
    if not isinstance(location, str) or not location:
        raise UnsafePath(str(location), "empty location")
    if "/" in location or "\\" in location:
        raise UnsafePath(location, "a location is a file name inside the SR, not a path")
    if location in (".", "..") or ".." in location:
        raise UnsafePath(location, "'..' is not allowed")
    if not SAFE_NAME.match(location):
        raise UnsafePath(location, "only letters, digits and . _ + - are allowed, not starting with '.'")
    if not location.endswith(suffixes):
        raise UnsafePath(location, f"the name must end with one of {', '.join(suffixes)}")
    return location


def check_library_name(location: str, suffix: str) -> str:
    """An ISO library name: anything printable (ISO names have spaces and brackets) but no path."""
    if not isinstance(location, str) or not location:
        raise UnsafePath(str(location), "empty location")
    if "/" in location or "\\" in location or _CONTROL.search(location):
        raise UnsafePath(location, "a location is a file name inside the SR, not a path")
    if location.startswith(".") or location in ("..",):
        raise UnsafePath(location, "hidden names and '..' are not allowed")
    if not location.lower().endswith(suffix) or len(location.encode()) > 255:
        raise UnsafePath(location, f"the name must end with {suffix}")
    return location


def inside(root_real: str, name: str, allow_symlink_inside: bool) -> str:
    """Join a checked name to the SR root, refusing symlinks that lead out (or any, if so asked)."""
    path = os.path.join(root_real, name)
    if os.path.islink(path):
        if not allow_symlink_inside:
            raise UnsafePath(name, "symbolic links are not VDIs in this SR")
        target = os.path.realpath(path)
        if not target.startswith(root_real + os.sep):
            raise UnsafePath(name, "symbolic link leads outside the SR")
    return path


def check_uuid(value: str, kind: str = "VDI") -> str:
    """A canonical lowercase uuid; anything else could smuggle text into a file name."""
    try:
        canonical = str(uuidlib.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidUuid(kind, str(value)) from None
    if canonical != value:
        raise InvalidUuid(kind, value)
    return value


def uuid_of(name: str) -> str | None:
    stem = name.split(".", 1)[0]
    try:
        return stem if str(uuidlib.UUID(stem)) == stem else None
    except ValueError:
        return None


def fs_space(path: str) -> tuple[int, int]:
    """(size, free-for-us) of the filesystem holding path, from statvfs."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
