/**
 * The kernel backend: a patched nvidia-uvm module serves each process's settings and counters as
 * files under <root>/processes/<pid>/<gpu>/ (root: $GVM_DEBUGFS_ROOT, else
 * /sys/kernel/debug/nvidia-uvm; <gpu> is the module's zero-based GPU index):
 *
 *   uuid (r)  memory.limit (rw)  memory.current (r)  memory.swap.current (r)
 *   compute.priority (rw, 0..15)  compute.freeze (rw, 0/1)  gcgroup.stat (r, "key value" lines)
 *
 * KernelBlock presents one such directory with the interface of a mapped control block, so that
 * GvmProcess and GvmGpu work unchanged on either backend. Files cannot be read synchronously the way
 * a mapping can, so values are read when the block is opened and on refresh(); every write re-reads
 * the GPU it changed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { fromSystemError, GvmError, GvmStatus } from '../errors';
import { NativeCommandResult, NativeControlBlock, NativeGpu, NativeHeader, NativePolicy, NativeRm } from '../native';
import { nvidiaGpusDir } from '../paths';
import { normalizePciBusId } from '../system';

export type Backend = 'agent' | 'kernel';
export type BackendChoice = Backend | 'auto';

/** enum gvm_backend in include/gvm/control_block.h */
export const BACKEND_KERNEL = 1;
/** enum gvm_control_mode gains this value on the TypeScript side only: the module applies it */
export const CONTROL_MODE_KERNEL = 3;

const MAX_SLOTS = 16; // GVM_MAX_GPUS: GvmProcess looks at slots 0..15
const U63 = (1n << 63n) - 1n;
/* GVM_KEY_* (kept here, not imported from index.ts, which imports this module) */
const KEY = { PING: 0, MEMORY_LIMIT: 1, MEMORY_MODE: 2, COMPUTE_PRIORITY: 3, COMPUTE_FREEZE: 4 } as const;

/** The module's tree: $GVM_DEBUGFS_ROOT, else /sys/kernel/debug/nvidia-uvm. */
export function debugfsRoot(): string {
  const dir = process.env.GVM_DEBUGFS_ROOT;
  return dir !== undefined && dir !== '' ? dir : '/sys/kernel/debug/nvidia-uvm';
}

/** The backend asked for: the option, else $GVM_BACKEND, else auto. EGVM_INVALID for anything else. */
export function backendChoice(option?: BackendChoice): BackendChoice {
  const want = option ?? (process.env.GVM_BACKEND || 'auto');
  if (want !== 'auto' && want !== 'agent' && want !== 'kernel') {
    throw new GvmError(`backend must be agent, kernel or auto, not '${String(want)}'`, 'EGVM_INVALID');
  }
  return want;
}

/**
 * auto: the kernel backend when <root>/processes is a directory and <root> is writable by us (the
 * module's files are root's: a user who cannot write them is better served by the agent's blocks).
 */
export async function detectBackend(choice: BackendChoice, root: string): Promise<Backend> {
  if (choice !== 'auto') return choice;
  try {
    const st = await fs.promises.stat(path.join(root, 'processes'));
    if (!st.isDirectory()) return 'agent';
    await fs.promises.access(root, fs.constants.W_OK);
    return 'kernel';
  } catch {
    return 'agent';
  }
}

/** The same decision, synchronously (for Gvm.backend). */
export function detectBackendSync(choice: BackendChoice, root: string): Backend {
  if (choice !== 'auto') return choice;
  try {
    if (!fs.statSync(path.join(root, 'processes')).isDirectory()) return 'agent';
    fs.accessSync(root, fs.constants.W_OK);
    return 'kernel';
  } catch {
    return 'agent';
  }
}

/** The pids the module lists (numeric directory names under <root>/processes), ascending. */
export async function kernelPids(root: string): Promise<number[]> {
  let names: string[];
  try {
    names = await fs.promises.readdir(path.join(root, 'processes'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw fromSystemError(e, `cannot list ${path.join(root, 'processes')}`);
  }
  return names.filter((n) => /^[1-9]\d*$/.test(n)).map(Number).sort((a, b) => a - b);
}

/** What gvm knows about a GPU beyond its UUID: where it sits (for the machine index), name, size. */
export interface GpuIdentity {
  pciBusId: string;
  name: string;
  totalBytes: number;
}

/** UUID (lower case, "GPU-…") -> identity. */
export type GpuCatalog = Map<string, GpuIdentity>;

/**
 * Identities from the agents' blocks (any process's: they carry UUID, PCI bus id, name and size),
 * then from the NVIDIA driver's /proc/driver/nvidia/gpus/<bus>/information (UUID, model, bus).
 */
export async function gpuCatalog(blocks: readonly NativeControlBlock[]): Promise<GpuCatalog> {
  const catalog: GpuCatalog = new Map();
  for (const b of blocks) {
    for (let slot = 0; slot < MAX_SLOTS; slot++) {
      const g = b.gpu(slot);
      if (!g.present || /^GPU-[0-]*$/.test(g.uuid)) continue;
      catalog.set(g.uuid.toLowerCase(), { pciBusId: g.pciBusId, name: g.name, totalBytes: g.totalBytes });
    }
  }
  let buses: string[] = [];
  try {
    buses = await fs.promises.readdir(nvidiaGpusDir());
  } catch {
    // no NVIDIA driver listing: identities come from the blocks alone
  }
  for (const bus of buses) {
    let text: string;
    try {
      text = await fs.promises.readFile(path.join(nvidiaGpusDir(), bus, 'information'), 'utf8');
    } catch {
      continue;
    }
    const field = (name: string) => new RegExp(`^${name}:\\s*(.+?)\\s*$`, 'm').exec(text)?.[1];
    const uuid = field('GPU UUID')?.toLowerCase();
    if (uuid === undefined || catalog.has(uuid)) continue;
    catalog.set(uuid, { pciBusId: normalizePciBusId(field('Bus Location') ?? bus), name: field('Model') ?? '', totalBytes: 0 });
  }
  return catalog;
}

interface GpuReading {
  uvmIndex: number;
  dir: string;
  uuid: string;
  limit: number;
  current: number;
  swap: number;
  priority: number;
  frozen: boolean;
  stat: Map<string, number>;
  readNs: bigint;
}

function wantNumber(text: string, file: string): number {
  const s = text.trim();
  if (!/^\d+$/.test(s)) throw new GvmError(`${file}: expected a decimal number, read '${s.slice(0, 40)}'`, 'EGVM_IO');
  return Number(s);
}

async function readText(file: string): Promise<string> {
  try {
    return await fs.promises.readFile(file, 'utf8');
  } catch (e) {
    throw fromSystemError(e, `cannot read ${file}`);
  }
}

async function readGpu(dir: string, uvmIndex: number): Promise<GpuReading> {
  const f = (name: string) => path.join(dir, name);
  const [uuid, limit, current, swap, priority, freeze, stat] = await Promise.all(
    ['uuid', 'memory.limit', 'memory.current', 'memory.swap.current', 'compute.priority', 'compute.freeze', 'gcgroup.stat'].map(
      (name) => readText(f(name)),
    ),
  );
  const statMap = new Map<string, number>();
  for (const line of stat!.split('\n')) {
    const m = /^(\w+)\s+(\d+)\s*$/.exec(line);
    if (m !== null) statMap.set(m[1]!, Number(m[2]));
  }
  return {
    uvmIndex,
    dir,
    uuid: uuid!.trim(),
    limit: wantNumber(limit!, f('memory.limit')),
    current: wantNumber(current!, f('memory.current')),
    swap: wantNumber(swap!, f('memory.swap.current')),
    priority: wantNumber(priority!, f('compute.priority')),
    frozen: wantNumber(freeze!, f('compute.freeze')) !== 0,
    stat: statMap,
    readNs: process.hrtime.bigint(),
  };
}

/** Facts about a live process from /proc (uid, start time, command line); NOT_FOUND once it exited. */
async function procInfo(pid: number): Promise<{ uid: number; startTime: number; cmdline: string }> {
  const [status, stat, cmdline] = await Promise.all(
    ['status', 'stat', 'cmdline'].map((name) =>
      fs.promises.readFile(`/proc/${pid}/${name}`, 'utf8').catch((e: unknown) => {
        throw new GvmError(`no process ${pid} (${(e as Error).message})`, 'EGVM_NOT_FOUND', { cause: e });
      }),
    ),
  );
  const uid = Number(/^Uid:\s+(\d+)/m.exec(status!)?.[1] ?? 0);
  const startTime = Number(stat!.slice(stat!.lastIndexOf(')') + 2).split(' ')[19] ?? 0);
  return { uid, startTime, cmdline: cmdline!.split('\0').filter((a) => a !== '').join(' ').slice(0, 511) };
}

const EMPTY_GPU: NativeGpu = {
  present: false, ordinal: -1, uuid: '', pciBusId: '', name: '', totalBytes: 0, memoryLimit: 0, memoryMode: 0,
  priority: 0, frozen: false, controlMode: 0, contexts: 0, memoryCurrent: 0, memorySwapCurrent: 0, memoryPeak: 0,
  managedBytes: 0, hostBytes: 0, kernelsSubmitted: 0, kernelsEnded: 0, allocCount: 0, freeCount: 0,
  allocFailures: 0, updatedNs: 0n,
};

const EMPTY_RM: NativeRm = { fd: -1, client: 0, device: 0, subdevice: 0, tsgs: [], channels: [] };

const EMPTY_POLICY: NativePolicy = {
  class: 0, held: false, action: 0, idleMs: 0, bursts: 0, holds: 0, heldNs: 0, chainLastNs: 0, chainMaxNs: 0,
  memoryLent: 0, memoryWaits: 0, chainHistogram: [], events: [],
  holdParts: { holds: 0, wakeNsSum: 0, lockNsSum: 0, lockMaxNs: 0, rmNsSum: 0, rmMaxNs: 0, wakeHistogram: [], rmHistogram: [] },
};

export interface KernelOpenOptions {
  /** The process's own agent block, when it has one (agent in kernel mode): the block takes it over. */
  agent?: NativeControlBlock;
  catalog: GpuCatalog;
}

/** One process of the module's tree, shaped as a control block. Slots are the module's GPU indices. */
export class KernelBlock implements NativeControlBlock {
  readonly path: string;
  readonly writable = true;
  #pid: number;
  #agent: NativeControlBlock | undefined;
  #catalog: GpuCatalog;
  #proc: { uid: number; startTime: number; cmdline: string } = { uid: 0, startTime: 0, cmdline: '' };
  #gpus = new Map<number, GpuReading>();
  /** module index -> the agent's slot for the same UUID (found on refresh: identities never change) */
  #agentSlots = new Map<number, number>();
  #closed = false;

  private constructor(dir: string, pid: number, options: KernelOpenOptions) {
    this.path = dir;
    this.#pid = pid;
    this.#agent = options.agent;
    this.#catalog = options.catalog;
  }

  /** Reads <root>/processes/<pid>; EGVM_NOT_FOUND when the module or /proc does not list it. */
  static async open(root: string, pid: number, options: KernelOpenOptions): Promise<KernelBlock> {
    const block = new KernelBlock(path.join(root, 'processes', String(pid)), pid, options);
    try {
      await block.refresh();
    } catch (e) {
      block.#agent = undefined; // on failure the caller keeps the agent block
      block.close();
      throw e;
    }
    return block;
  }

  /** Reads every file again (and /proc). EGVM_NOT_FOUND once the process is gone. */
  async refresh(): Promise<void> {
    this.#check();
    let names: string[];
    try {
      names = await fs.promises.readdir(this.path);
    } catch (e) {
      throw fromSystemError(e, `no kernel-backend process ${this.#pid} (${this.path})`);
    }
    const indices = names.filter((n) => /^\d+$/.test(n)).map(Number).filter((i) => i < MAX_SLOTS);
    const [proc, ...readings] = await Promise.all([
      procInfo(this.#pid),
      ...indices.map((i) => readGpu(path.join(this.path, String(i)), i)),
    ]);
    this.#proc = proc as { uid: number; startTime: number; cmdline: string };
    this.#gpus = new Map((readings as GpuReading[]).map((r) => [r.uvmIndex, r]));
    this.#agentSlots.clear();
    for (const r of this.#gpus.values()) {
      for (let s = 0; this.#agent !== undefined && s < MAX_SLOTS; s++) {
        const g = this.#agent.gpu(s);
        if (g.present && g.uuid.toLowerCase() === r.uuid.toLowerCase()) this.#agentSlots.set(r.uvmIndex, s);
      }
    }
  }

  #check(): void {
    if (this.#closed) throw new GvmError('the process handle is closed', 'EGVM_CLOSED');
  }


  header(): NativeHeader {
    this.#check();
    const a = this.#agent?.header();
    return {
      versionMajor: a?.versionMajor ?? 0,
      versionMinor: a?.versionMinor ?? 0,
      size: a?.size ?? 0,
      gpuBlockSize: a?.gpuBlockSize ?? 0,
      pid: this.#pid,
      uid: this.#proc.uid,
      startTime: this.#proc.startTime,
      createdUnixMs: a?.createdUnixMs ?? 0,
      heartbeatNs: a?.heartbeatNs ?? 0n,
      agentState: a?.agentState ?? 1, // no agent: the module serves the process, so it is ready
      gpuCount: this.#gpus.size,
      driverVersion: a?.driverVersion ?? 0,
      flags: a?.flags ?? 0,
      pidNs: a?.pidNs ?? 0,
      backend: BACKEND_KERNEL,
      agentVersion: a?.agentVersion ?? '',
      cmdline: a?.cmdline || this.#proc.cmdline,
    };
  }

  gpu(slot: number): NativeGpu {
    this.#check();
    const r = this.#gpus.get(slot);
    if (r === undefined) return EMPTY_GPU;
    const s = this.#agentSlot(slot);
    const a = s < 0 ? undefined : this.#agent!.gpu(s);
    const id = this.#catalog.get(r.uuid.toLowerCase());
    const totalBytes = a?.totalBytes || id?.totalBytes || 0;
    // the module has no kernel counters until its launch hooks land: the agent's count stands in
    const submitted = r.stat.get('nr_submitted_kernels') ?? 0;
    const fromAgent = submitted === 0 && a !== undefined;
    return {
      present: true,
      ordinal: slot,
      uuid: r.uuid,
      pciBusId: a?.pciBusId || id?.pciBusId || '',
      name: a?.name || id?.name || '',
      totalBytes,
      memoryLimit: r.limit,
      memoryMode: 1, // the module always swaps past the limit
      priority: r.priority,
      frozen: r.frozen,
      controlMode: CONTROL_MODE_KERNEL,
      contexts: a?.contexts ?? 0,
      memoryCurrent: r.current,
      memorySwapCurrent: r.swap,
      memoryPeak: Math.max(a?.memoryPeak ?? 0, r.current),
      managedBytes: a?.managedBytes ?? 0,
      hostBytes: a?.hostBytes ?? 0,
      kernelsSubmitted: fromAgent ? a.kernelsSubmitted : submitted,
      kernelsEnded: fromAgent ? a.kernelsEnded : (r.stat.get('nr_ended_kernels') ?? 0),
      allocCount: a?.allocCount ?? 0,
      freeCount: a?.freeCount ?? 0,
      allocFailures: a?.allocFailures ?? 0,
      updatedNs: r.readNs,
    };
  }

  /** The agent's slot for the module's GPU `slot` (same UUID), or -1. */
  #agentSlot(slot: number): number {
    return this.#agent === undefined ? -1 : (this.#agentSlots.get(slot) ?? -1);
  }

  /** The RM objects the process's agent recorded (debug view); empty without an agent. */
  rm(slot: number): NativeRm {
    this.#check();
    const s = this.#agentSlot(slot);
    return s < 0 ? EMPTY_RM : this.#agent!.rm(s);
  }

  policy(slot: number): NativePolicy {
    this.#check();
    const s = this.#agentSlot(slot);
    return s < 0 ? EMPTY_POLICY : this.#agent!.policy(s);
  }

  /**
   * Applies a command by writing the module's file. Values are checked first, so a bad one changes
   * nothing; the module's EINVAL still comes back as INVALID. timeoutMs does not apply: a write
   * returns when the module is done (a freeze, once the preempt completed).
   */
  async command(key: number, slot: number, value: bigint, _timeoutMs: number): Promise<NativeCommandResult> {
    this.#check();
    const answer = (status: number, message: string): NativeCommandResult => ({ status, message, seq: 0 });
    if (key === KEY.PING) return answer(GvmStatus.OK, 'pong (kernel backend: nothing to ask)');
    const r = this.#gpus.get(slot);
    if (r === undefined) return answer(GvmStatus.NO_GPU, `the module lists no GPU ${slot} for this process`);
    const total = BigInt(this.gpu(slot).totalBytes);
    let file: string;
    switch (key) {
      case KEY.MEMORY_LIMIT:
        if (value < 1n || value > U63 || (total > 0n && value > total)) {
          return answer(GvmStatus.INVALID, `memory.limit must be 1..${total > 0n ? total : U63} bytes`);
        }
        file = 'memory.limit';
        break;
      case KEY.MEMORY_MODE:
        if (value === 1n) return answer(GvmStatus.OK, 'mode swap: the kernel backend always swaps past memory.limit');
        return answer(GvmStatus.UNSUPPORTED, 'memory.mode oom is not available on the kernel backend: the module always swaps');
      case KEY.COMPUTE_PRIORITY:
        if (value > 15n) return answer(GvmStatus.INVALID, 'compute.priority must be 0..15');
        file = 'compute.priority';
        break;
      case KEY.COMPUTE_FREEZE:
        if (value > 1n) return answer(GvmStatus.INVALID, 'compute.freeze must be 0 or 1');
        file = 'compute.freeze';
        break;
      default:
        return answer(GvmStatus.INVALID, `unknown key ${key}`);
    }
    const target = path.join(r.dir, file);
    const start = process.hrtime.bigint();
    try {
      // no O_CREAT: a vanished process must fail, not leave a file behind; O_TRUNC as a shell's echo
      await fs.promises.writeFile(target, `${value}\n`, { flag: fs.constants.O_WRONLY | fs.constants.O_TRUNC });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EINVAL' || code === 'ERANGE') return answer(GvmStatus.INVALID, `the module refused ${file} ${value} (${code})`);
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ESRCH' || code === 'ENODEV') {
        throw new GvmError(`process ${this.#pid} GPU ${slot}: ${target} is gone (the process exited?)`, 'EGVM_NOT_FOUND', { cause: e });
      }
      throw fromSystemError(e, `cannot write ${target}`);
    }
    const ms = (Number(process.hrtime.bigint() - start) / 1e6).toFixed(2);
    this.#gpus.set(slot, await readGpu(r.dir, slot)); // the same UUID: the agent slot stands
    const g = this.gpu(slot);
    switch (key) {
      case KEY.MEMORY_LIMIT:
        return answer(GvmStatus.OK, `limit set: ${g.memoryCurrent} bytes on the GPU, ${g.memorySwapCurrent} on the host`);
      case KEY.COMPUTE_PRIORITY:
        return answer(GvmStatus.OK, `priority ${value} (nvidia-uvm)`);
      default:
        return answer(GvmStatus.OK, `${value === 1n ? 'frozen' : 'thawed'} in ${ms} ms (nvidia-uvm)`);
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Idempotent; closes the agent block it took over. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#agent?.close();
    this.#agent = undefined;
  }
}
