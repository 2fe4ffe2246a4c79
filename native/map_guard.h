// Mappings of control block files, guarded against the file shrinking under them.
//
// A block belongs to its process's user, who may truncate the file at any time; the next access to
// a page past the new end raises SIGBUS, which would kill the reader: `gvm`, or gvmd, which runs as
// root and reads every user's blocks (one user could take it down for all). Every mapping of a block
// is registered here. A SIGBUS inside a registered mapping replaces the rest of it with zero pages
// (the faulting access is retried and reads zeros) and marks it truncated; its owner checks the mark
// and reports the block as unusable. A SIGBUS anywhere else goes to whoever handled it before.
#pragma once

#include <cstddef>

namespace gvm {

// Registers [addr, addr+length); returns its slot, or -1 when the table is full (then unguarded).
int GuardMapping(void* addr, size_t length);

// Forgets a slot (before the munmap); -1 is ignored.
void UnguardMapping(int slot);

// Whether a SIGBUS found the mapping's file shrunk (its contents past that point now read as zeros).
bool MappingTruncated(int slot);

}  // namespace gvm
