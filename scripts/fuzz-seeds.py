#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/: a few
small valid inputs each, laid out as the targets read them (fuzz/src/lib.rs for
guest RAM). Deterministic; run again after changing a layout."""

import gzip
import io
import json
import os
import struct
import sys
import tarfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "fuzz", "corpus")

QUEUE_STRIDE = 0x400
DATA_START = 0x1000
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


class Guest:
    """Guest RAM from address 0 with split virtqueues at the fuzz harness's places."""

    def __init__(self):
        self.mem = bytearray(0x10000)
        self.avail = {}

    def put(self, addr, data):
        self.mem[addr:addr + len(data)] = data

    def chain(self, queue, first, bufs):
        """Publishes descriptors first.. for bufs [(addr, len, write)] on queue."""
        base = queue * QUEUE_STRIDE
        for i, (addr, length, write) in enumerate(bufs):
            idx = first + i
            flags = (F_WRITE if write else 0) | (F_NEXT if i + 1 < len(bufs) else 0)
            self.put(base + 16 * idx, struct.pack("<QIHH", addr, length, flags, idx + 1))
        heads = self.avail.setdefault(queue, [])
        avail = base + 0x100
        self.put(avail + 4 + 2 * len(heads), struct.pack("<H", first))
        heads.append(first)
        self.put(avail, struct.pack("<HH", 0, len(heads)))

    def image(self):
        return bytes(self.mem).rstrip(b"\0")


def blk():
    seeds = {}
    for name, kind, sector, write in [("read", 0, 1, True), ("write", 1, 2, False)]:
        g = Guest()
        g.put(DATA_START, struct.pack("<IIQ", kind, 0, sector))
        if not write:
            g.put(DATA_START + 0x100, bytes(range(256)) * 2)
        g.chain(0, 0, [(DATA_START, 16, False), (DATA_START + 0x100, 512, write),
                       (DATA_START + 0x400, 1, True)])
        seeds[name] = g.image()
    g = Guest()
    g.put(DATA_START, struct.pack("<IIQ", 4, 0, 0))
    g.chain(0, 0, [(DATA_START, 16, False), (DATA_START + 0x400, 1, True)])
    g.put(DATA_START + 0x20, struct.pack("<IIQ", 8, 0, 0))
    g.chain(0, 2, [(DATA_START + 0x20, 16, False), (DATA_START + 0x200, 20, True),
                   (DATA_START + 0x401, 1, True)])
    seeds["flush-get-id"] = g.image()
    return seeds


def vsock_hdr(op, src_port, dst_port, length=0):
    # src_cid, dst_cid, src_port, dst_port, len, type (stream), op, flags, buf_alloc, fwd_cnt
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, length, 1, op, 0, 65536, 0)


def vsock():
    seeds = {}
    for name, packets in [
        ("request", [vsock_hdr(1, 1234, 1024)]),
        ("request-rw-shutdown", [vsock_hdr(1, 1234, 1024), vsock_hdr(5, 1234, 1024, 5) + b"hello",
                                 vsock_hdr(4, 1234, 1024), vsock_hdr(7, 1234, 1024)]),
    ]:
        g = Guest()
        # Two receive buffers on queue 0, header and payload in separate descriptors.
        for i in range(2):
            at = 0x4000 + i * 0x1000
            g.chain(0, 2 * i, [(at, 44, True), (at + 0x100, 0xf00, True)])
        for i, pkt in enumerate(packets):
            at = DATA_START + i * 0x100
            g.put(at, pkt)
            g.chain(1, i, [(at, len(pkt), False)])
        seeds[name] = g.image()
    return seeds


def net():
    g = Guest()
    g.chain(0, 0, [(0x4000, 0x800, True), (0x4800, 0x800, True)])
    g.chain(0, 2, [(0x6000, 0x10, True)])
    frame = bytes(12) + b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06" + bytes(46)
    g.put(DATA_START, frame)
    g.chain(1, 0, [(DATA_START, 12, False), (DATA_START + 12, len(frame) - 12, False)])
    return {"rx-tx": g.image()}


def balloon():
    g = Guest()
    # Free page reports on queue 2: aligned, unaligned, and outside guest RAM.
    g.chain(2, 0, [(0x8000, 0x4000, True)])
    g.chain(2, 1, [(0xc800, 0x2000, True), (0xf000, 0x1000, True)])
    g.chain(2, 3, [(0x10_0000, 0x1000, True)])
    g.chain(0, 0, [(DATA_START, 8, False)])
    return {"reports": g.image()}


def rng():
    g = Guest()
    g.chain(0, 0, [(DATA_START, 64, True), (DATA_START + 0x100, 0x1000, True)])
    g.chain(0, 2, [(DATA_START + 0x2000, 16, False)])
    return {"fill": g.image()}


def mmio():
    def op(kind, offset, value):
        return struct.pack("<BBHI", kind, 0, offset, value)

    w, r = 5, 4  # 4-byte write, 4-byte read
    ops = [op(r, 0x00, 0), op(r, 0x08, 0), op(w, 0x70, 1), op(w, 0x70, 3),
           op(w, 0x14, 0), op(r, 0x10, 0), op(w, 0x14, 1), op(r, 0x10, 0),
           op(w, 0x24, 1), op(w, 0x20, 1), op(w, 0x70, 11), op(r, 0x70, 0),
           op(w, 0x30, 0), op(r, 0x34, 0), op(w, 0x38, 16), op(w, 0x80, 0), op(w, 0x84, 0),
           op(w, 0x90, 0x100), op(w, 0x94, 0), op(w, 0xa0, 0x200), op(w, 0xa4, 0),
           op(w, 0x44, 1), op(w, 0x70, 15), op(r, 0x100, 0), op(w, 0x50, 0),
           op(r, 0x60, 0), op(w, 0x64, 1)]
    g = Guest()
    g.put(DATA_START, struct.pack("<IIQ", 0, 0, 1))
    g.chain(0, 0, [(DATA_START, 16, False), (DATA_START + 0x100, 512, True),
                   (DATA_START + 0x400, 1, True)])
    return {"handshake-read": bytes([len(ops)]) + b"".join(ops) + g.image()}


def tar_layer(entries, fmt):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    # Without the zero padding tarfile adds up to its record size.
    body = raw.rstrip(b"\0")
    body += b"\0" * (-len(body) % 512)
    return body + b"\0" * 1024


def tar_entry(name, kind=tarfile.REGTYPE, data=None, link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, link, 1_700_000_000
    info.size = len(data) if data is not None else 0
    return info, data


def tar_unpack():
    first = tar_layer([
        tar_entry("etc/", tarfile.DIRTYPE, mode=0o755),
        tar_entry("etc/hosts", data=b"127.0.0.1 localhost\n"),
        tar_entry("etc/gone", data=b"x"),
        tar_entry("bin/", tarfile.DIRTYPE, mode=0o755),
        tar_entry("bin/sh", data=b"#!", mode=0o4755),
        tar_entry("bin/ln", tarfile.LNKTYPE, link="bin/sh"),
        tar_entry("lib", tarfile.SYMTYPE, link="usr/lib"),
        tar_entry("dev/null", tarfile.CHRTYPE, mode=0o666),
    ], tarfile.GNU_FORMAT)
    second = tar_layer([
        tar_entry("etc/.wh.gone"),
        tar_entry("bin/.wh..wh..opq"),
        tar_entry("opt/" + "long-name/" * 12 + "file", data=b"pax"),
    ], tarfile.PAX_FORMAT)
    gnu_long = tar_layer([tar_entry("d/" + "n" * 200, data=b"gnu")], tarfile.GNU_FORMAT)
    assert len(first) // 512 < 256
    zipped = gzip.compress(second, mtime=0)
    return {
        "two-layers": bytes([len(first) // 512]) + first + second,
        "tar-then-gzip": bytes([len(first) // 512]) + first + zipped,
        "gnu-long-name": bytes([0]) + gnu_long,
    }


DIGEST = "sha256:" + "ab" * 32


def image_config():
    oci = {"architecture": "amd64", "os": "linux",
           "config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["PATH=/bin"],
                      "WorkingDir": "/", "User": "1000:1000", "ExposedPorts": {"80/tcp": {}},
                      "Volumes": {"/data": {}}, "Labels": {"a": "b"}, "StopSignal": "SIGTERM"},
           "rootfs": {"type": "layers", "diff_ids": [DIGEST]},
           "history": [{"created_by": "fuzz"}]}
    bare = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    return {"oci": json.dumps(oci).encode(), "bare": json.dumps(bare).encode()}


def image_manifest():
    desc = lambda media, size: {"mediaType": media, "digest": DIGEST, "size": size}
    image = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
             "config": desc("application/vnd.oci.image.config.v1+json", 1024),
             "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", 4096),
                        desc("application/vnd.oci.image.layer.v1.tar+zstd", 8192)]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [
                 dict(desc("application/vnd.oci.image.manifest.v1+json", 500),
                      platform={"architecture": "arm64", "os": "linux", "variant": "v8"}),
                 dict(desc("application/vnd.oci.image.manifest.v1+json", 500),
                      platform={"architecture": "amd64", "os": "linux"})]}
    docker = {"schemaVersion": 2,
              "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
              "config": desc("application/vnd.docker.container.image.v1+json", 1024),
              "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", 4096)]}
    return {name: json.dumps(doc).encode()
            for name, doc in [("oci-image", image), ("oci-index", index), ("docker", docker)]}


TARGETS = {
    "virtio_blk": blk, "virtio_vsock": vsock, "virtio_net": net,
    "virtio_balloon": balloon, "virtio_rng": rng, "virtio_mmio": mmio, "tar_unpack": tar_unpack,
    "image_config": image_config, "image_manifest": image_manifest,
}


def main():
    for target, make in TARGETS.items():
        out = os.path.join(CORPUS, target)
        os.makedirs(out, exist_ok=True)
        for name, data in make().items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
