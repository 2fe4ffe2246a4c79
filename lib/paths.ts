/** Where gvm finds things: the package root, the control blocks, the agent. */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { GvmError } from './errors';

/** The package root: lib/ (sources) and dist/ (compiled) both sit one level below it. */
export const packageRoot: string = path.resolve(__dirname, '..');

/** The control block directory: $GVM_SHM_DIR, else /dev/shm/gvm. */
export function shmDir(): string {
  const dir = process.env.GVM_SHM_DIR;
  return dir !== undefined && dir !== '' ? dir : '/dev/shm/gvm';
}

/**
 * Why a process started now could not publish its control block in `dir` (the agent would then run
 * it without any control: no limit, priority or freeze), or undefined when it could. `bytes` is the
 * block's size. Checks what the agent will need: a directory it can create or write into, and room.
 */
export function shmProblem(dir: string, bytes: number): string | undefined {
  let existing = path.resolve(dir);
  for (;;) {
    let st: fs.Stats;
    try {
      st = fs.statSync(existing);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      /* not there yet (the agent makes it), or below a file (the walk up finds the file) */
      if (code !== 'ENOENT' && code !== 'ENOTDIR') return `${existing}: ${(e as Error).message}`;
      const parent = path.dirname(existing);
      if (parent === existing) return `${dir}: no existing directory above it`;
      existing = parent;
      continue;
    }
    if (!st.isDirectory()) return `${existing} is not a directory`;
    break;
  }
  try {
    fs.accessSync(existing, fs.constants.W_OK | fs.constants.X_OK);
  } catch {
    return `${existing} is not writable by this user`;
  }
  try {
    const fsStat = fs.statfsSync(existing);
    const free = Number(fsStat.bavail) * Number(fsStat.bsize);
    if (free < bytes) return `${existing} has ${free} bytes free, a control block needs ${bytes} (a full /dev/shm?)`;
  } catch {
    /* a file system that cannot say: the agent finds out, and warns */
  }
  return undefined;
}

/** The candidates for the agent, in the order they are tried. */
export function agentCandidates(): string[] {
  const fromEnv = process.env.GVM_AGENT_PATH;
  if (fromEnv !== undefined && fromEnv !== '') return [path.resolve(fromEnv)];
  return [
    path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, 'libgvm.so'),
    path.join(packageRoot, 'build', 'Release', 'libgvm.so'),
  ];
}

/** The agent library (libgvm.so) for LD_PRELOAD, as an absolute path. */
export function agentPath(): string {
  const tried = agentCandidates();
  for (const candidate of tried) {
    if (fs.existsSync(candidate)) return candidate;
  }
  const fromEnv = process.env.GVM_AGENT_PATH !== undefined && process.env.GVM_AGENT_PATH !== '';
  throw new GvmError(
    `cannot find the gvm agent libgvm.so; tried:\n  ${tried.join('\n  ')}\n` +
      (fromEnv
        ? 'GVM_AGENT_PATH is set: point it at an existing libgvm.so, or unset it.'
        : 'Rebuild it with `npm rebuild gvm` (needs cmake, g++, make and the CUDA headers), ' +
          'or set GVM_AGENT_PATH to a libgvm.so.'),
    'EGVM_NOT_FOUND',
  );
}

/** Where the NVIDIA driver lists the machine's GPUs by PCI bus id ($GVM_NVIDIA_PROC_DIR for tests). */
export function nvidiaGpusDir(): string {
  const dir = process.env.GVM_NVIDIA_PROC_DIR;
  return dir !== undefined && dir !== '' ? dir : '/proc/driver/nvidia/gpus';
}
