"""Offline coalescing for the file SR: keeps chains short after snapshots are deleted.

Each snapshot adds one hidden base under its source; deleting the snapshot leaves that base with a
single child, so without this a disk snapshotted and cleaned up daily would grow a chain one layer
deeper every day. A base with one child is merged with it: the child's data is committed into the
base, and the base file then takes the child's name (so the child's own children, if the child is a
base too, keep pointing at the right name). Cost is proportional to the child's data.

Only while nothing in the child's subtree is attached: a running qemu holds the files open, and
merging under it needs the hypervisor's block-commit/stream (not done here).
"""

from __future__ import annotations

import asyncio
import os

from . import durable, qemuimg
from .filechain import BASE_SUFFIX, Image, list_images


def children_of(images: dict[str, Image]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for img in images.values():
        if img.backing:
            children.setdefault(img.backing, []).append(img.name)
    return children


def subtree(children: dict[str, list[str]], name: str) -> set[str]:
    found, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(children.get(current, []))
    return found


def next_merge(images: dict[str, Image], busy: set[str]) -> tuple[str, str] | None:
    """A (base, only child) pair that may merge: nothing in busy is open above the base."""
    children = children_of(images)
    return next(
        (
            (base, kids[0])
            for base, kids in children.items()
            if base.endswith(BASE_SUFFIX)
            and base in images
            and len(kids) == 1
            and not (subtree(children, kids[0]) & busy)
        ),
        None,
    )


async def coalesce(root: str, busy: set[str]) -> list[str]:
    """Merge every base that has exactly one child whose subtree holds no name in busy.

    The caller holds the SR lock. Returns the merged (now gone) base names.
    """
    merged: list[str] = []
    while True:
        images = await asyncio.to_thread(list_images, root)
        candidate = next_merge(images, busy)
        if candidate is None:
            return merged
        base, child = candidate
        await _merge(root, images[base], images[child])
        merged.append(base)


async def _merge(root: str, base: Image, child: Image) -> None:
    base_path, child_path = os.path.join(root, base.name), os.path.join(root, child.name)
    child_mode = os.stat(child_path).st_mode & 0o777
    os.chmod(base_path, 0o644)  # bases are kept read-only; commit must write into this one
    try:
        if child.virtual_size > base.virtual_size:
            await qemuimg.resize(base_path, "qcow2", child.virtual_size)
        await qemuimg.commit(child_path, "qcow2")
    except BaseException:
        # A partial commit only wrote regions the child itself holds, which readers take from the
        # child anyway: the chain still reads the same. Just make the base read-only again.
        os.chmod(base_path, 0o444)
        raise
    os.chmod(base_path, child_mode)
    # The merged base must be on disk before it replaces the child: the child's data lives only in it
    # from then on (qemu-img commit flushes, but ignores a failing flush; our fsync reports it).
    await durable.sync_file(base_path)
    os.replace(base_path, child_path)
