// Whose control block is this, seen from this process's PID namespace: the block's file name for a
// pid, the pid of a block's process here, and whether its owner still runs (its owner lock). Shared
// by the addon and gvmd's FUSE tree; no N-API here.
//
// A process in a container names its block "<pid>@<pid_ns>" (control_block.h): its own pid, then
// its PID namespace's inode. A tool in the same container addresses it by that pid; a tool in the
// initial namespace (the host) finds its host pid through /proc/<pid>/status NSpid and the start
// time the block records; a tool in another container cannot see it, and leaves it alone.
#pragma once

#include <cstdint>
#include <string>

namespace gvm {

// Inode of this process's PID namespace (readlink /proc/self/ns/pid), 0 if unknown.
uint64_t SelfPidNs();

// A directory entry's block name: "<pid>" (ns 0) or "<pid>@<ns>". False for anything else.
bool ParseBlockName(const char* name, int* pid, uint64_t* ns);

// The file name of the block of `pid`, a pid of this namespace (for a pid that runs no process, the
// name its block would have here); empty if its namespace cannot be read (another user's process in
// a container).
std::string BlockNameFor(int pid);

// The pid, in this namespace, of the process whose block is named (nspid, ns) and records start
// time `startTime`; 0 when no such process is visible from here. ownerAlive: the block's owner lock
// is held (its process lives), so its pid and namespace identify it whatever its start time reads.
int PidHere(int nspid, uint64_t ns, uint64_t startTime, bool ownerAlive);

// 1: the owner lock on byte 0 of the block file `fd` is held (its process runs); 0: it is not;
// -1: the lock cannot be tested.
int OwnerLockHeld(int fd);

}  // namespace gvm
