"""Summarises an agent RM trace (GVM_RM_TRACE=path, written by cuda-intercept/src/rm_observer.c): the
channel groups and channels libcuda allocated, in order, with the controls issued on them and their
status, then every control command by count. A device check prints it when the agent did not see
or could not stop what it should have.

Trace line: "<nr hex> <fd> <arg size> <ioctl ret> <creating gpu> <arg hex> <params hex>".
"""
import collections
import struct
import sys

ESC_FREE, ESC_CONTROL, ESC_ALLOC = 0x29, 0x2A, 0x2B
TSG = 0xA06C


def is_channel(klass):
    return klass & 0xFF == 0x6F and klass > 0xFF


def words(hexstr):
    raw = bytes.fromhex(hexstr) if hexstr != "-" else b""
    return struct.unpack("<%dI" % (len(raw) // 4), raw[: len(raw) // 4 * 4]), raw


def main(path):
    classes = {}  # (client, handle) -> class
    controls = collections.Counter()
    shown = 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6:
                continue
            nr, size, gpu = int(parts[0], 16), int(parts[2]), parts[4]
            w, raw = words(parts[5])
            if nr == ESC_ALLOC and len(w) >= 4:
                status = struct.unpack_from("<I", raw, 28 if size == 32 else 36 if size == 40 else 40)[0]
                client, parent, handle, klass = w[:4]
                classes[(client, handle)] = klass
                if (klass == TSG or is_channel(klass)) and shown < 30:
                    kind = "TSG" if klass == TSG else "channel"
                    print(f"alloc {kind} {klass:#06x} handle {handle:#x} parent {parent:#x} client {client:#x} gpu {gpu} status {status:#x}")
                    shown += 1
            elif nr == ESC_CONTROL and len(w) >= 8:
                client, obj, cmd, status = w[0], w[1], w[2], w[7]
                controls[(cmd, status)] += 1
                klass = classes.get((client, obj), 0)
                if (klass == TSG or is_channel(klass) or cmd >> 16 in (0xA06C, 0xA06F)) and shown < 30:
                    print(f"control {cmd:#010x} on {obj:#x} (class {klass:#06x}) status {status:#x}")
                    shown += 1
            elif nr == ESC_FREE and len(w) >= 4:
                klass = classes.pop((w[0], w[2]), 0)
                if (klass == TSG or is_channel(klass)) and shown < 30:
                    print(f"free {klass:#06x} handle {w[2]:#x}")
                    shown += 1
    print("controls by command (status): " + ", ".join(f"{c:#010x}({s:#x})x{n}" for (c, s), n in sorted(controls.items())))


if __name__ == "__main__":
    main(sys.argv[1])
