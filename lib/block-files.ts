/**
 * Control block files as seen from this process's PID namespace. A process in a container names its
 * block "<pid>@<pid namespace inode>" (include/gvm/control_block.h), so containers sharing one
 * directory never collide; a tool finds the pid of such a process here (on the host: its host pid),
 * and judges liveness by the owner lock every agent holds on its block, which no pid can fake. A
 * block of a process this namespace cannot see is left alone: it is not ours to call stale.
 */
import * as path from 'node:path';

import { native, NativeControlBlock } from './native';

/** control_block.h GVM_CB_FLAG_OWNER_LOCK */
const FLAG_OWNER_LOCK = 1;
/** control_block.h GVM_INIT_PID_NS: the host's PID namespace */
export const INIT_PID_NS = 0xeffffffc;

export interface BlockEntry {
  /** the block file */
  file: string;
  /** the pid in its own namespace, as its name says */
  nspid: number;
  /** its PID namespace inode; 0 for a plain "<pid>" (the initial namespace) */
  ns: number;
}

export type BlockJudgement =
  | { state: 'live'; pid: number; startTime: number } // its pid and /proc start time as seen here
  | { state: 'stale' } // its process is gone: the file may be removed
  | { state: 'elsewhere' }; // live, or not knowable, in a namespace we cannot see

/** The block files among a directory's entries, by pid. */
export function blockEntries(dir: string, names: readonly string[]): BlockEntry[] {
  const out: BlockEntry[] = [];
  for (const name of names) {
    const parsed = native().parseBlockName(name);
    if (parsed !== null) out.push({ file: path.join(dir, name), nspid: parsed.pid, ns: parsed.ns });
  }
  return out.sort((a, b) => a.nspid - b.nspid || a.ns - b.ns);
}

/** The block file of `pid` (a pid of this namespace), whether or not it exists. */
export function blockEntryFor(dir: string, pid: number): BlockEntry {
  const name = native().blockName(pid);
  const parsed = name === null ? null : native().parseBlockName(name);
  if (name === null || parsed === null) return { file: path.join(dir, String(pid)), nspid: pid, ns: 0 };
  return { file: path.join(dir, name), nspid: parsed.pid, ns: parsed.ns };
}

/** Whether this process runs in the host's (initial) PID namespace; also when it cannot tell. */
export function inHostPidNamespace(): boolean {
  const self = native().pidNamespace();
  return self === 0 || self === INIT_PID_NS;
}

/** Whether the namespace a block name points at (0: the host's) is this process's own. */
function ours(ns: number): boolean {
  return ns === 0 ? inHostPidNamespace() : ns === native().pidNamespace();
}

/** Is the block's process alive, and what is its pid here? */
export function judgeBlock(entry: BlockEntry, handle: NativeControlBlock): BlockJudgement {
  const a = native();
  const h = handle.header();
  if (h.pid !== entry.nspid) return { state: 'stale' }; // not the block its name says
  const locked = h.versionMinor >= 3 && (h.flags & FLAG_OWNER_LOCK) !== 0;
  const held = locked ? a.ownerLockHeld(entry.file) : null;
  if (held === false) return { state: 'stale' };
  const pid = a.pidHere(entry.nspid, entry.ns, h.startTime, held === true);
  // the start time as /proc shows it here: the block's own differs for a process in another time namespace
  const startTime = pid > 0 ? a.processStartTime(pid) : null;
  if (pid > 0 && startTime !== null) return { state: 'live', pid, startTime };
  if (held === true) return { state: 'elsewhere' };
  // no lock to ask: only a block of our own namespace can be judged by its pid
  return ours(entry.ns) ? { state: 'stale' } : { state: 'elsewhere' };
}
