/**
 * Loads the N-API addon (gvm.node) once, lazily, and hands it the GvmError class.
 * $GVM_ADDON_PATH overrides the search; otherwise node-gyp-build looks in prebuilds/ and build/.
 */
import * as path from 'node:path';

import { GvmError } from './errors';
import { packageRoot } from './paths';

/** Header fields of a control block. 64-bit fields are numbers, except nanosecond clocks (bigint). */
export interface NativeHeader {
  versionMajor: number;
  versionMinor: number;
  size: number;
  gpuBlockSize: number;
  pid: number;
  uid: number;
  /** /proc/<pid>/stat field 22 of the process (clock ticks after boot). */
  startTime: number;
  createdUnixMs: number;
  /** CLOCK_MONOTONIC nanoseconds: a bigint, as it passes 2^53 after 104 days of uptime. */
  heartbeatNs: bigint;
  agentState: number;
  gpuCount: number;
  driverVersion: number;
  flags: number;
  /** inode of the process's PID namespace (minor 3; 0 in older blocks) */
  pidNs: number;
  /** enum gvm_backend (minor 2): 1 when the agent runs in kernel mode (0 in older blocks) */
  backend: number;
  agentVersion: string;
  cmdline: string;
}

export interface NativeGpu {
  present: boolean;
  ordinal: number;
  uuid: string;
  pciBusId: string;
  name: string;
  totalBytes: number;
  memoryLimit: number;
  memoryMode: number;
  priority: number;
  frozen: boolean;
  /** enum gvm_control_mode: 0 none yet, 1 RM controls, 2 software freeze */
  controlMode: number;
  contexts: number;
  memoryCurrent: number;
  memorySwapCurrent: number;
  memoryPeak: number;
  managedBytes: number;
  hostBytes: number;
  kernelsSubmitted: number;
  kernelsEnded: number;
  allocCount: number;
  freeCount: number;
  allocFailures: number;
  updatedNs: bigint;
}

export interface NativeTsg {
  handle: number;
  engineType: number;
  channelCount: number;
  parent: number;
  timesliceUs: number;
}

export interface NativeChannel {
  handle: number;
  tsg: number;
  classId: number;
}

export interface NativeRm {
  fd: number;
  client: number;
  device: number;
  subdevice: number;
  tsgs: NativeTsg[];
  channels: NativeChannel[];
}

export interface NativePolicyEvent {
  ns: bigint;
  /** enum gvm_policy_event_kind */
  kind: number;
  pid: number;
  value: number;
}

export interface NativePolicy {
  /** enum gvm_policy_class: 0 none, 1 latency, 2 best-effort */
  class: number;
  held: boolean;
  /** 0 freeze, 1 throttle */
  action: number;
  idleMs: number;
  bursts: number;
  holds: number;
  heldNs: number;
  chainLastNs: number;
  chainMaxNs: number;
  memoryLent: number;
  memoryWaits: number;
  chainHistogram: number[];
  /** minor 4 (zeros from an older agent) */
  holdParts: NativeHoldParts;
  events: NativePolicyEvent[];
}

export interface NativeHoldParts {
  holds: number;
  wakeNsSum: number;
  lockNsSum: number;
  lockMaxNs: number;
  rmNsSum: number;
  rmMaxNs: number;
  wakeHistogram: number[];
  rmHistogram: number[];
}

export interface NativeCommandResult {
  status: number;
  message: string;
  seq: number;
}

export interface NativeControlBlock {
  header(): NativeHeader;
  gpu(index: number): NativeGpu;
  rm(index: number): NativeRm;
  policy(index: number): NativePolicy;
  command(key: number, gpu: number, value: bigint, timeoutMs: number): Promise<NativeCommandResult>;
  close(): void;
  readonly closed: boolean;
  readonly writable: boolean;
  readonly path: string;
}

export interface NativeControlBlockClass {
  open(path: string, writable: boolean): NativeControlBlock;
}

export type NativeLayout = Record<string, Record<string, number>>;

export interface NativeAddon {
  ControlBlock: NativeControlBlockClass;
  setErrorClass(cls: typeof GvmError): void;
  layout(): NativeLayout;
  processStartTime(pid: number): number | null;
  /** This process's PID namespace inode (0 if unknown). */
  pidNamespace(): number;
  /** The block file name of a process of this namespace ("<pid>" or "<pid>@<ns>"), null if none. */
  blockName(pid: number): string | null;
  /** A directory entry as a block name, or null. ns is 0 for a plain "<pid>". */
  parseBlockName(name: string): { pid: number; ns: number } | null;
  /**
   * The pid here of the process of block (nspid, ns) with that start time; 0 when not visible here.
   * ownerAlive: its owner lock is held, so pid and namespace identify it whatever its start time reads.
   */
  pidHere(nspid: number, ns: number, startTime: number, ownerAlive: boolean): number;
  /** Whether a block's owner lock is held (its process runs); null when it cannot be tested. */
  ownerLockHeld(file: string): boolean | null;
}

/** gvmd's FUSE tree (native/fuse_tree.cc, its own gvm_fuse.node so only gvmd needs libfuse3). */
export interface NativeFuse {
  mountTree(mountPoint: string, shmDir: string, allowOther: boolean): NativeMount;
  unmountTree(mount: NativeMount): void;
}

let fuseAddon: NativeFuse | undefined;

/** Loads gvm_fuse.node (GVM_FUSE_ADDON_PATH, the prebuild, or the build); EGVM_IO says what was tried. */
export function nativeFuse(): NativeFuse {
  if (fuseAddon !== undefined) return fuseAddon;
  const override = process.env.GVM_FUSE_ADDON_PATH;
  const tried =
    override !== undefined && override !== ''
      ? [path.resolve(override)]
      : [
          path.join(packageRoot, 'build', 'Release', 'fuse', 'gvm_fuse.node'),
          path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, 'fuse', 'gvm_fuse.node'),
        ];
  const errors: string[] = [];
  for (const file of tried) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      fuseAddon = require(file) as NativeFuse;
      return fuseAddon;
    } catch (e) {
      errors.push(`${file}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  throw new GvmError(
    `cannot load gvmd's FUSE addon. Tried:\n  ${errors.join('\n  ')}\n` +
      'It needs libfuse3 (Debian: apt-get install fuse3 libfuse3-dev) and a build (npm install).',
    'EGVM_IO',
  );
}

/** An opaque handle of a mounted tree. */
export interface NativeMount {
  readonly __mount: unique symbol;
}

let addon: NativeAddon | undefined;

function loadFrom(): { addon: NativeAddon; tried: string[] } {
  const override = process.env.GVM_ADDON_PATH;
  if (override !== undefined && override !== '') {
    const file = path.resolve(override);
    return { addon: require(file) as NativeAddon, tried: [file] };
  }
  // node-gyp-build: prebuilds/<platform>-<arch>/*.node (matching napi tags), build/Release, build/Debug.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const load = require('node-gyp-build') as (dir: string) => unknown;
  return { addon: load(packageRoot) as NativeAddon, tried: [] };
}

/** The addon, loaded on first use. Throws GvmError EGVM_IO listing what was tried and how to fix it. */
export function native(): NativeAddon {
  if (addon !== undefined) return addon;
  let loaded: NativeAddon;
  try {
    loaded = loadFrom().addon;
  } catch (e) {
    const override = process.env.GVM_ADDON_PATH;
    const tried =
      override !== undefined && override !== ''
        ? [`GVM_ADDON_PATH=${path.resolve(override)}`]
        : [
            path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, '*.node'),
            path.join(packageRoot, 'build', 'Release', '*.node'),
            path.join(packageRoot, 'build', 'Debug', '*.node'),
          ];
    throw new GvmError(
      `cannot load the gvm native addon (${(e as Error).message.split('\n')[0]}); tried:\n  ${tried.join('\n  ')}\n` +
        'Fix: run `npm rebuild gvm` (needs cmake, g++ and make), or build it in a checkout with ' +
        '`npx cmake-js rebuild`, or set GVM_ADDON_PATH to a built gvm.node.',
      'EGVM_IO',
      { cause: e },
    );
  }
  loaded.setErrorClass(GvmError);
  addon = loaded;
  return addon;
}

/** A control block's size; a page when the addon cannot say (gvm run and doctor work without it). */
export function controlBlockBytes(): number {
  try {
    return native().layout().controlBlock?.sizeof ?? 4096;
  } catch {
    return 4096;
  }
}
