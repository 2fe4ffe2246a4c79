/**
 * What gvm can do on this machine, checked the way the agent and the tools will meet it: the built
 * pieces, the NVIDIA driver (whether priority and hardware freeze are available or only the software
 * freeze), the block directory, MPS, a container's PID namespace, gvmd's FUSE needs, the backend.
 * `gvm doctor` prints it; each finding says what to do about it.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { inHostPidNamespace } from './block-files';
import { Gvm } from './index';
import { controlBlockBytes, native, nativeFuse } from './native';
import { agentPath, nvidiaGpusDir, shmDir, shmProblem } from './paths';

export type CheckStatus = 'ok' | 'info' | 'warn' | 'fail';

export interface Check {
  /** stable name: agent, addon, driver, gpus, libcuda, blocks, namespace, mps, fuse, backend, user */
  name: string;
  status: CheckStatus;
  /** what was found */
  detail: string;
  /** what to do about it (warn and fail) */
  fix?: string;
}

/** The driver releases whose RM control layouts the agent was verified against (compute.c). */
const VERIFIED = { first: 525, last: 580 };

/** The NVIDIA kernel module's version file ($GVM_NVIDIA_VERSION_FILE for tests; the agent reads it too). */
export function nvidiaVersionFile(): string {
  const f = process.env.GVM_NVIDIA_VERSION_FILE;
  return f !== undefined && f !== '' ? f : '/sys/module/nvidia/version';
}

function readText(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function onPath(program: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir === '') continue;
    const f = path.join(dir, program);
    try {
      fs.accessSync(f, fs.constants.X_OK);
      return f;
    } catch {
      /* next */
    }
  }
  return undefined;
}

function checkAgent(): Check {
  try {
    return { name: 'agent', status: 'ok', detail: `libgvm.so at ${agentPath()}` };
  } catch (e) {
    return { name: 'agent', status: 'fail', detail: (e as Error).message.split('\n')[0]!, fix: 'npm rebuild gvm (needs cmake, g++, make and the CUDA headers), or set GVM_AGENT_PATH' };
  }
}

function checkAddon(): Check {
  try {
    native();
    return { name: 'addon', status: 'ok', detail: 'the native addon loads' };
  } catch (e) {
    return { name: 'addon', status: 'fail', detail: (e as Error).message.split('\n')[0]!, fix: 'npm rebuild gvm' };
  }
}

function checkDriver(): Check {
  const file = nvidiaVersionFile();
  const version = readText(file);
  if (version === undefined) {
    return {
      name: 'driver',
      status: 'warn',
      detail: `no NVIDIA kernel module (${file} is not readable): no process here can use a GPU`,
      fix: 'install the NVIDIA driver (525 to 580 for priority and the hardware freeze)',
    };
  }
  const major = Number.parseInt(version, 10);
  if (major >= VERIFIED.first && major <= VERIFIED.last) {
    return { name: 'driver', status: 'ok', detail: `NVIDIA ${version}: priority and the hardware freeze through the driver's RM controls` };
  }
  return {
    name: 'driver',
    status: 'warn',
    detail: `NVIDIA ${version} is outside ${VERIFIED.first}..${VERIFIED.last}, whose RM control layouts gvm verified: freeze holds launches (software freeze), priority is unsupported`,
    fix: `a driver in ${VERIFIED.first}..${VERIFIED.last}; GVM_RM_ANY_DRIVER=1 uses the RM path anyway (unverified layouts)`,
  };
}

function checkGpus(): Check {
  const dir = nvidiaGpusDir();
  let ids: string[];
  try {
    ids = fs.readdirSync(dir).sort();
  } catch {
    return { name: 'gpus', status: 'warn', detail: `${dir} is not there: no NVIDIA GPU visible` };
  }
  if (ids.length === 0) return { name: 'gpus', status: 'warn', detail: `${dir} lists no GPU` };
  return { name: 'gpus', status: 'ok', detail: `${ids.length} GPU${ids.length === 1 ? '' : 's'}: ${ids.join(', ')}` };
}

function checkLibcuda(): Check {
  const ld = spawnSync('ldconfig', ['-p'], { encoding: 'utf8' });
  const line = (ld.stdout ?? '').split('\n').find((l) => /\blibcuda\.so\.1\b/.test(l));
  const fromLd = line?.split('=>')[1]?.trim();
  const where = fromLd ?? ['/usr/lib/x86_64-linux-gnu', '/usr/lib64', '/usr/lib/aarch64-linux-gnu', '/usr/local/nvidia/lib64']
    .map((d) => path.join(d, 'libcuda.so.1'))
    .find((f) => fs.existsSync(f));
  if (where !== undefined) return { name: 'libcuda', status: 'ok', detail: `the driver's libcuda.so.1 at ${where}` };
  return { name: 'libcuda', status: 'warn', detail: 'libcuda.so.1 not found (ldconfig -p, the usual folders)', fix: "CUDA programs need the driver's user-space library" };
}

function checkBlocks(bytes: number): Check[] {
  const dir = shmDir();
  const problem = shmProblem(dir, bytes);
  if (problem !== undefined) {
    return [{ name: 'blocks', status: 'fail', detail: `${problem}: processes would run without gvm's control`, fix: 'free space there, or point GVM_SHM_DIR at a writable tmpfs directory' }];
  }
  const out: Check[] = [{ name: 'blocks', status: 'ok', detail: `control blocks in ${dir}` }];
  try {
    const mode = fs.statSync(dir).mode & 0o7777;
    if (mode !== 0o1777) {
      out.push({
        name: 'blocks',
        status: 'warn',
        detail: `${dir} has mode ${mode.toString(8)}, not 1777: processes of other users cannot create their blocks there`,
        fix: `chmod 1777 ${dir}`,
      });
    }
  } catch {
    /* not there yet: the first agent creates it with 1777 */
  }
  return out;
}

function checkNamespace(): Check {
  if (inHostPidNamespace()) return { name: 'namespace', status: 'ok', detail: "the host's PID namespace" };
  const ns = native().pidNamespace();
  return {
    name: 'namespace',
    status: 'info',
    detail: `a container (PID namespace ${ns}): blocks are named <pid>@${ns}, and gvm here sees this container's processes only`,
    fix: `to steer them from the host, bind-mount one host directory at ${shmDir()} in every container (README: Containers)`,
  };
}

function checkMps(): Check {
  const dir = process.env.CUDA_MPS_PIPE_DIRECTORY || '/tmp/nvidia-mps';
  if (!fs.existsSync(path.join(dir, 'control'))) return { name: 'mps', status: 'ok', detail: 'no MPS control daemon' };
  return {
    name: 'mps',
    status: 'warn',
    detail: `an MPS control daemon at ${dir}: CUDA processes here become MPS clients, whose work runs on the MPS server's channels; for them freeze holds launches (software), priority is unsupported and swap moves are off`,
    fix: 'stop MPS (echo quit | nvidia-cuda-mps-control) for the hardware controls',
  };
}

function checkFuse(): Check {
  const missing: string[] = [];
  if (!fs.existsSync('/dev/fuse')) missing.push('/dev/fuse');
  if (onPath('fusermount3') === undefined) missing.push('fusermount3 (package fuse3)');
  if (missing.length === 0) {
    try {
      nativeFuse();
    } catch (e) {
      missing.push((e as Error).message.split('\n')[0]!);
    }
  }
  if (missing.length === 0) return { name: 'fuse', status: 'ok', detail: "gvmd can serve GVM's file tree (FUSE)" };
  return { name: 'fuse', status: 'warn', detail: `gvmd's file tree cannot mount: missing ${missing.join(', ')}`, fix: 'apt-get install fuse3 libfuse3-dev, then npm rebuild gvm; metrics and the policy work without it' };
}

async function checkBackend(): Promise<Check> {
  const backend = await Gvm.detectBackend();
  if (backend === 'kernel') return { name: 'backend', status: 'ok', detail: 'kernel: the patched nvidia-uvm module applies the settings' };
  return { name: 'backend', status: 'ok', detail: 'agent: the agent in each process applies the settings (no patched nvidia-uvm module)' };
}

function checkUser(): Check {
  if (process.getuid?.() === 0) return { name: 'user', status: 'ok', detail: "root: every user's processes are visible" };
  return { name: 'user', status: 'info', detail: 'not root: only your own processes are visible and steerable', fix: "run as root to see and steer every user's" };
}

/** Every check, in a fixed order. */
export async function diagnose(): Promise<Check[]> {
  const out: Check[] = [checkAgent(), checkAddon(), checkDriver(), checkGpus(), checkLibcuda()];
  const addonLoads = out[1]!.status === 'ok';
  out.push(...checkBlocks(controlBlockBytes()));
  if (addonLoads) out.push(checkNamespace());
  out.push(checkMps(), checkFuse());
  if (addonLoads) out.push(await checkBackend());
  out.push(checkUser());
  return out;
}
