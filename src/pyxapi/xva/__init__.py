"""XenServer's VM archive format (XVA) and OVF/OVA, read and written as streams.

An XVA is a tar: `ova.xml` first (an XML-RPC value: a `version` struct and `objects`, the VM and
its VBDs, VDIs, VIFs, networks and SRs as get_record structs whose refs are export-local ids
`Ref:N`), then each disk as `Ref:N/00000000`, `Ref:N/00000001`, … chunks of 1 MiB, each followed
by its checksum member (`.checksum`: SHA-1 hex; newer xapi also writes `.xxhash`: XXH64). All-zero
chunks are left out except the first and the last, which end a disk.

Modules: tar (strict streaming tar reader and header writer), stream (byte sources and
compression), ovaxml (the ova.xml codec), chunks (chunk names, checksums, the chunk sequence rules),
nbd (disk bytes through qemu-nbd), disks (a VDI's data in and out), collect (the objects an
export carries), restore (the objects an import creates, with undo), ovf (OVF descriptors).
"""
