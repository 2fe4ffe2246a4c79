#!/usr/bin/env python3
"""Where is a stuck process waiting? Prints, for every thread of PID: its name, state, kernel wait
channel and current system call; an ioctl on an NVIDIA device is decoded (the RM control's command,
client and object for /dev/nvidiactl, the request number for /dev/nvidia-uvm); the kernel stack when
readable (root); then gdb's backtraces of every thread when gdb is installed.

Used by the device runs (bench/swap/run.sh --diagnose, test/gpu/*) so that a hang costs one run, not
a guess: usage: hang_dump.py PID
"""
import os
import shutil
import struct
import subprocess
import sys

SYSCALLS = {0: "read", 1: "write", 7: "poll", 16: "ioctl", 23: "select", 35: "nanosleep", 202: "futex",
            230: "clock_nanosleep", 232: "epoll_wait", 61: "wait4", 281: "epoll_pwait", 271: "ppoll"}


def read(path, binary=False):
    try:
        with open(path, "rb" if binary else "r") as f:
            return f.read()
    except OSError as e:
        return None if binary else f"({e.strerror})"


def decode_ioctl(pid, args):
    fd, req, arg = args[0], args[1], args[2]
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        target = "?"
    nr, size, magic = req & 0xFF, (req >> 16) & 0x3FFF, (req >> 8) & 0xFF
    text = f"ioctl fd {fd} ({target}) nr {nr:#x} size {size}"
    if target.startswith("/dev/nvidia") and magic == ord("F") and nr == 0x2A and size == 32:
        try:
            with open(f"/proc/{pid}/mem", "rb") as m:
                m.seek(arg)
                client, obj, cmd = struct.unpack("<III", m.read(12))
            text += f": RM_CONTROL cmd {cmd:#010x} client {client:#x} object {obj:#x}"
        except OSError as e:
            text += f": RM_CONTROL (params unreadable: {e.strerror})"
    elif target.startswith("/dev/nvidia") and magic == ord("F"):
        text += {0x2B: ": RM_ALLOC", 0x29: ": RM_FREE"}.get(nr, "")
    return text


def main():
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    pid = int(sys.argv[1])
    if not os.path.isdir(f"/proc/{pid}"):
        print(f"hang_dump: no process {pid}")
        return 1
    cmdline = (read(f"/proc/{pid}/cmdline", True) or b"").replace(b"\0", b" ").decode(errors="replace")
    print(f"== process {pid}: {cmdline}")
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        base = f"/proc/{pid}/task/{tid}"
        comm = read(f"{base}/comm").strip()
        stat = read(f"{base}/stat")
        state = stat[stat.rfind(")") + 2] if ")" in stat else "?"
        wchan = read(f"{base}/wchan").strip()
        sc = read(f"{base}/syscall").split()
        what = " ".join(sc)
        if sc and sc[0].isdigit():
            no, args = int(sc[0]), [int(a, 16) for a in sc[1:7]]
            what = SYSCALLS.get(no, f"syscall {no}")
            if no == 16:
                what = decode_ioctl(pid, args)
            elif no == 202:
                what += f" addr {args[0]:#x} op {args[1] & 0x7f}"
        print(f"-- thread {tid} '{comm}' state {state} wchan {wchan}: {what}")
        kstack = read(f"{base}/stack")
        if kstack and not kstack.startswith("("):
            for line in kstack.strip().splitlines()[:12]:
                print(f"     k {line}")
    gdb = shutil.which("gdb")
    if gdb:
        r = subprocess.run([gdb, "-p", str(pid), "-batch", "-nx", "-ex", "set pagination off", "-ex",
                            "thread apply all bt 25"], capture_output=True, text=True, timeout=120)
        print(r.stdout[-20000:])
    else:
        print("(gdb not installed: no user-space backtraces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
