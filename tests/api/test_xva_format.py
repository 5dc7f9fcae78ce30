"""The XVA format layer on its own: tar reading and writing, chunk rules, checksums, ova.xml, and
compression, built from the format description (not from pyxapi's own exports alone)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import AsyncIterator

import pytest
import zstandard

from pyxapi.xva import chunks, ovaxml, tar
from pyxapi.xva.errors import ImportFailure, IncompatibleVersion, PrematureEOF, UnexpectedFile
from pyxapi.xva.exporter import _write_disk
from pyxapi.xva.stream import ChunkSource, compression_of, open_archive

MiB = 1 << 20


async def pieces(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def source(data: bytes) -> ChunkSource:
    return ChunkSource(pieces(data))


def tar_of(*members: tarfile.TarInfo | tuple[str, bytes], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                t.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                t.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ tar


async def test_written_members_read_back_with_python_tarfile_and_our_reader() -> None:
    data = tar.member("ova.xml", b"<value/>") + tar.member("Ref:3/00000000", b"x" * 1000) + tar.END_OF_ARCHIVE
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = [m.name for m in t.getmembers()]
    assert names == ["ova.xml", "Ref:3/00000000"]
    reader = tar.TarReader(source(data))
    first = await reader.next()
    assert first == tar.Member("ova.xml", 8)
    assert await reader.read(100) == b"<value/>"
    second = await reader.next()
    assert second is not None and second.size == 1000
    assert await reader.next() is None  # skips the unread data, then the end-of-archive block


async def test_reader_takes_gnu_and_pax_archives_from_other_tools() -> None:
    long_name = "d/" + "n" * 150
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        reader = tar.TarReader(source(tar_of((long_name, b"abc"), fmt=fmt)))
        member = await reader.next()
        assert member == tar.Member(long_name, 3)
        assert await reader.read(10) == b"abc"


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.SYMTYPE, "a symbolic link"),
        (tarfile.LNKTYPE, "a hard link"),
        (tarfile.CHRTYPE, "a character device"),
        (tarfile.BLKTYPE, "a block device"),
        (tarfile.DIRTYPE, "a directory"),
        (tarfile.FIFOTYPE, "a FIFO"),
    ],
)
async def test_special_members_are_refused(kind: bytes, what: str) -> None:
    info = tarfile.TarInfo("ova.xml")
    info.type = kind
    info.linkname = "/etc/shadow"
    with pytest.raises(ImportFailure) as e:
        await tar.TarReader(source(tar_of(info))).next()
    assert what in e.value.msg


@pytest.mark.parametrize("name", ["/etc/passwd", "../../escape", "Ref:1/../../x", "a//b", "./ova.xml", "a\x01b"])
async def test_unsafe_names_are_refused(name: str) -> None:
    info = tarfile.TarInfo("placeholder")
    raw = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    encoded = name.encode()
    raw[0:100] = encoded + bytes(100 - len(encoded))
    raw[148:156] = b"        "
    raw[148:156] = f"{sum(raw):06o}\0 ".encode()
    with pytest.raises(ImportFailure, match="not allowed"):
        await tar.TarReader(source(bytes(raw) + tar.END_OF_ARCHIVE)).next()


async def test_huge_metadata_headers_bad_checksums_and_garbage_are_refused() -> None:
    huge = b"%d path=x\n" % (tar.MAX_META_HEADER + 100)
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = tar.MAX_META_HEADER + 1000
    pax = info.tobuf(format=tarfile.USTAR_FORMAT) + huge
    with pytest.raises(ImportFailure, match="too large"):
        await tar.TarReader(source(pax)).next()
    good = bytearray(tar.member("ova.xml", b"x"))
    good[10] ^= 0xFF
    with pytest.raises(ImportFailure, match="checksum"):
        await tar.TarReader(source(bytes(good))).next()
    with pytest.raises(ImportFailure, match="checksum"):
        await tar.TarReader(source(os.urandom(4096))).next()


async def test_truncated_member_is_a_premature_end() -> None:
    data = tar.member("ova.xml", b"y" * 5000)
    reader = tar.TarReader(source(data[:2000]))
    assert await reader.next() == tar.Member("ova.xml", 5000)
    with pytest.raises(PrematureEOF):
        await reader.read(10_000)
    with pytest.raises(ImportFailure, match="exceeds"):
        reader2 = tar.TarReader(source(data))
        await reader2.next()
        await reader2.read(100)


def test_base256_sizes_are_read() -> None:
    field = bytes([0x80]) + (10 * 2**33).to_bytes(11, "big")
    assert tar._size(field) == 10 * 2**33


# --------------------------------------------------------------------------------------------- chunks


def test_checksums_are_xapis() -> None:
    assert chunks.sha1_hex(b"") == "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert chunks.xxhash_hex(b"") == "EF46DB3751D8E999"  # XXH64, seed 0, as xapi's "%016LX"
    chunks.verify("Ref:1/00000000", ".checksum", b"abc", hashlib.sha1(b"abc").hexdigest().encode())
    with pytest.raises(ImportFailure, match=r"Block Ref:1/00000000 checksum failed"):
        chunks.verify("Ref:1/00000000", ".xxhash", b"abc", b"0000000000000000")


def test_plan_sends_data_chunks_plus_first_and_last() -> None:
    plan = chunks.ChunkPlan(10 * MiB + 5)
    assert plan.last == 10 and plan.length(10) == 5
    assert plan.numbers([]) == [0, 10]
    assert plan.numbers([(3 * MiB + 10, MiB)]) == [0, 3, 4, 10]
    assert chunks.ChunkPlan(MiB).numbers([(0, MiB)]) == [0]


def test_receiver_follows_xapis_rules() -> None:
    r = chunks.DiskReceiver("Ref:7", 5 * MiB)
    assert r.place("Ref:7/00000000", MiB) == 0
    assert r.place("Ref:7/00000003", 0) == 3 * MiB  # an empty keep-alive chunk: offset unchanged after
    assert r.place("Ref:7/00000004", MiB) == 3 * MiB  # …so the next chunk lands where it stood
    assert not r.done
    with pytest.raises(UnexpectedFile):
        r.place("Ref:7/00000002", MiB)  # going back
    with pytest.raises(UnexpectedFile):
        r.place("Ref:8/00000009", MiB)  # another disk's prefix
    with pytest.raises(ImportFailure, match="past the disk"):
        chunks.DiskReceiver("Ref:1", MiB).place("Ref:1/00000001", MiB)
    with pytest.raises(ImportFailure, match="larger"):
        chunks.DiskReceiver("Ref:1", 64 * MiB).place("Ref:1/00000000", chunks.MAX_CHUNK + 1)
    assert chunks.checksum_suffix("Ref:1/00000000", "Ref:1/00000000.xxhash") == ".xxhash"
    with pytest.raises(UnexpectedFile):
        chunks.checksum_suffix("Ref:1/00000000", "Ref:1/00000001")


class MemoryDisk:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    async def data_extents(self) -> list[tuple[int, int]]:
        return [(0, self.size)]  # claims everything: zero chunks must still be left out

    async def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


async def test_disk_round_trip_is_sparse_and_exact() -> None:
    disk = bytearray(6 * MiB + 4096)
    disk[2 * MiB + 7 : 2 * MiB + 20] = b"hello, world!"
    disk[-10:] = b"0123456789"
    out = bytearray()

    async def emit(b: bytes) -> None:
        out.extend(b)

    await _write_disk(MemoryDisk(bytes(disk)), "Ref:5", len(disk), emit, 0, lambda n: None)
    out.extend(tar.END_OF_ARCHIVE)
    with tarfile.open(fileobj=io.BytesIO(bytes(out))) as t:
        names = [m.name for m in t.getmembers()]
    assert names == [f"Ref:5/{n:08d}{s}" for n in (0, 2, 6) for s in ("", ".checksum")]
    # read back with the receiver's rules into a fresh buffer
    rebuilt = bytearray(len(disk))
    reader = tar.TarReader(source(bytes(out)))
    receiver = chunks.DiskReceiver("Ref:5", len(disk))
    while not receiver.done:
        m = await reader.next()
        assert m is not None
        offset = receiver.place(m.name, m.size)
        data = await reader.read(chunks.MAX_CHUNK)
        c = await reader.next()
        assert c is not None
        chunks.verify(m.name, chunks.checksum_suffix(m.name, c.name), data, await reader.read(64))
        rebuilt[offset : offset + len(data)] = data
    assert rebuilt == disk


# -------------------------------------------------------------------------------------------- ova.xml

HAND_MADE = b"""<?xml version="1.0" encoding="UTF-8"?>
<value><struct>
 <member><name>version</name><value><struct>
  <member><name>hostname</name><value>xs1</value></member>
  <member><name>date</name><value>2024-01-01</value></member>
  <member><name>product_version</name><value>8.2.1</value></member>
  <member><name>product_brand</name><value>XCP-ng</value></member>
  <member><name>build_number</name><value>release/yangtze</value></member>
  <member><name>xapi_major</name><value><i4>24</i4></value></member>
  <member><name>xapi_minor</name><value>19</value></member>
  <member><name>export_vsn</name><value>2</value></member>
 </struct></value></member>
 <member><name>objects</name><value><array><data>
  <value><struct>
   <member><name>class</name><value>VM</value></member>
   <member><name>id</name><value>Ref:0</value></member>
   <member><name>snapshot</name><value><struct>
     <member><name>name_label</name><value>hand made</value></member>
     <member><name>is_a_template</name><value><boolean>0</boolean></value></member>
     <member><name>memory_static_max</name><value>268435456</value></member>
   </struct></value></member>
  </struct></value>
 </data></array></value></member>
</struct></value>"""


def test_ova_xml_hand_made_and_round_trip() -> None:
    version, objects = ovaxml.decode(HAND_MADE)
    assert (version.xapi_major, version.xapi_minor, version.export_vsn) == (24, 19, 2)
    assert objects[0].cls == "VM" and objects[0].id == "Ref:0"
    assert objects[0].snapshot == {"name_label": "hand made", "is_a_template": False, "memory_static_max": "268435456"}
    text = ovaxml.encode(version, objects)
    assert b"<value>hand made</value>" in text and b"<?xml" not in text  # bare strings, like xapi
    assert ovaxml.decode(text) == (version, objects)


def test_ova_xml_bad_input() -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><value>&a;</value>'
    with pytest.raises(ImportFailure, match="DTD"):
        ovaxml.decode(bomb)
    with pytest.raises(ImportFailure, match="not a valid"):
        ovaxml.decode(b"<value><struct><member>")
    with pytest.raises(ImportFailure, match="version"):
        ovaxml.decode(b"<value><struct></struct></value>")
    newer = HAND_MADE.replace(b"<name>export_vsn</name><value>2", b"<name>export_vsn</name><value>3")
    version, _ = ovaxml.decode(newer)
    with pytest.raises(IncompatibleVersion):
        ovaxml.check_compatible(version)
    with pytest.raises(ImportFailure, match="legacy"):
        ovaxml.decode(b"<?xml version='1.0'?><appliance version='0.1'><vm name='x'/></appliance>")


# ---------------------------------------------------------------------------------------- compression


async def drain(src: ChunkSource) -> bytes:
    out = bytearray()
    while not await src.at_eof():
        out += await src.read_exactly(1)
    return bytes(out)


async def test_gzip_and_zstd_bodies_are_detected_and_decoded() -> None:
    plain = tar.member("ova.xml", os.urandom(3000) + bytes(100_000)) + tar.END_OF_ARCHIVE
    two_members = gzip.compress(plain[:1000]) + gzip.compress(plain[1000:])
    zstd = zstandard.ZstdCompressor().compress(plain)
    for body, kind in ((plain, None), (two_members, "gzip"), (zstd, "zstd")):
        src, found = await open_archive(pieces(body, 999))
        assert found == kind
        assert await src.read_exactly(len(plain)) == plain
        assert await src.at_eof()
    corrupt = bytearray(gzip.compress(plain))
    corrupt[20:40] = bytes(20)
    src, _ = await open_archive(pieces(bytes(corrupt)))
    with pytest.raises((ImportFailure, PrematureEOF)):
        await src.read_exactly(len(plain))
    assert compression_of("true") == "gzip" and compression_of("zstd") == "zstd" and compression_of("no") is None
