"""Reading an XVA: ova.xml first, objects created from it, then each disk's chunks written into the
new VDIs as they arrive, checksums verified on the way (unless `force`, as xapi).

Any failure unwinds everything this import made (again unless `force`), so a bad archive leaves no
VM, VDI, VBD, VIF or network behind; the error is the one xapi gives for the same archive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyxapi.api.dispatch import Call
from pyxapi.xva import disks, ovaxml
from pyxapi.xva.chunks import MAX_CHECKSUM_MEMBER, MAX_CHUNK, DiskReceiver, checksum_suffix, is_zero, verify
from pyxapi.xva.errors import ImportFailure, PrematureEOF, UnexpectedFile
from pyxapi.xva.restore import ImportConfig, Importer
from pyxapi.xva.tar import Member, TarReader

log = logging.getLogger(__name__)

Progress = Callable[[float], None]


@dataclass(slots=True)
class ImportResult:
    vms: list[str]
    objects: int
    bytes_written: int


async def read_header(reader: TarReader, member: Member | None) -> tuple[ovaxml.Version, list[ovaxml.ExportObject]]:
    """ova.xml, which must be the archive's first member (`member`, already read)."""
    if member is None:
        raise PrematureEOF()
    if member.name != ovaxml.FILENAME:
        raise UnexpectedFile(ovaxml.FILENAME, member.name)
    version, objects = ovaxml.decode(await reader.read(ovaxml.MAX_SIZE))
    ovaxml.check_compatible(version)
    return version, objects


async def import_xva(
    call: Call, reader: TarReader, first: Member | None, config: ImportConfig, progress: Progress | None = None
) -> ImportResult:
    version, objects = await read_header(reader, first)
    if config.sr is not None and version.export_vsn < 1:
        raise ImportFailure("archives without inline chunk checksums (export_vsn 0) are not supported")
    importer = Importer(call, config, objects)
    try:
        await importer.create_objects()
        written = 0
        if config.sr is not None and not config.dry_run:
            written = await _receive_disks(call, reader, importer, config.force, progress)
        vms = importer.complete()
    except BaseException:
        if config.force:
            log.warning("import failed; what it made is kept because force was given (as xapi does)")
        else:
            await importer.rollback()
        raise
    return ImportResult(vms, len(objects), written)


async def _receive_disks(
    call: Call, reader: TarReader, importer: Importer, force: bool, progress: Progress | None
) -> int:
    plan = importer.disks_to_stream()
    total = sum(size for _, _, size in plan) or 1
    done = written = 0
    last_report = 0.0
    for prefix, vdi, size in plan:
        receiver = DiskReceiver(prefix, size)
        async with disks.writing(call.ctx, vdi) as out:
            while not receiver.done:
                member = await reader.next()
                if member is None:
                    raise PrematureEOF()
                offset = receiver.place(member.name, member.size)
                data = await reader.read(MAX_CHUNK)
                check = await reader.next()
                if check is None:
                    raise PrematureEOF()
                suffix = checksum_suffix(member.name, check.name)
                stated = await reader.read(MAX_CHECKSUM_MEMBER)
                if not force:
                    verify(member.name, suffix, data, stated)
                if not is_zero(data):  # a new VDI reads as zeros already: keep it thin
                    await out.write(offset, data)
                    written += len(data)
                now = time.monotonic()
                if progress is not None and now - last_report > 0.5:
                    last_report = now
                    progress(min((done + receiver.offset) / total, 1.0))
        done += size
    return written
