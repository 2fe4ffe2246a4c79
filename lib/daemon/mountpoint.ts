/**
 * The mount point before gvmd mounts on it: a mount left by a killed gvmd (it answers ENOTCONN) is
 * detached lazily; a live gvm tree (another gvmd) or any other file system there is refused.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { GvmError } from '../errors';

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

/** Decodes mountinfo's octal escapes (\040 for a space, ...). */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Entries of /proc/self/mountinfo (mount point, type, source). */
export function mounts(text: string = fs.readFileSync('/proc/self/mountinfo', 'utf8')): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const before = line.slice(0, sep).split(' ');
    const after = line.slice(sep + 3).split(' ');
    if (before.length < 5 || after.length < 2) continue;
    out.push({ mountPoint: unescape(before[4]!), fsType: after[0]!, source: unescape(after[1]!) });
  }
  return out;
}

/** The innermost mount exactly at `dir`, if any. */
export function mountAt(dir: string): MountEntry | undefined {
  const abs = path.resolve(dir);
  return mounts().filter((m) => m.mountPoint === abs).pop();
}

function errnoOf(fn: () => void): string | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? 'EIO';
  }
}

/** Readies `dir` for a mount; `log` tells what was done. Throws GvmError EGVM_IO when it cannot. */
export function prepareMountPoint(dir: string, log: (line: string) => void): void {
  const abs = path.resolve(dir);
  const err = errnoOf(() => fs.statSync(abs));
  if (err === 'ENOTCONN' || err === 'ECONNABORTED') {
    log(`${abs} is a stale mount from an earlier gvmd (${err}); detaching it`);
    // fixed commands with a fixed argument list: nothing read from a file is ever run
    spawnSync('fusermount3', ['-uz', abs], { stdio: 'ignore' });
    if (errnoOf(() => fs.statSync(abs)) === 'ENOTCONN') spawnSync('umount', ['-l', abs], { stdio: 'ignore' });
    const still = errnoOf(() => fs.statSync(abs));
    if (still === 'ENOTCONN') {
      throw new GvmError(`cannot detach the stale mount at ${abs}; run: umount -l ${abs}`, 'EGVM_IO');
    }
  } else if (err === undefined) {
    const m = mountAt(abs);
    if (m?.fsType === 'fuse.gvm') {
      throw new GvmError(`${abs} is already served by a running gvmd; stop it first or pick another --mount`, 'EGVM_IO');
    }
    if (m !== undefined) {
      throw new GvmError(`${abs} is a mount point (${m.fsType} from ${m.source}); pick another --mount`, 'EGVM_IO');
    }
    if (!fs.statSync(abs).isDirectory()) throw new GvmError(`${abs} is not a directory`, 'EGVM_IO');
  } else if (err !== 'ENOENT') {
    throw new GvmError(`cannot use ${abs} as the mount point: ${err}`, 'EGVM_IO');
  }
  fs.mkdirSync(abs, { recursive: true, mode: 0o755 });
}
