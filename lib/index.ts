/**
 * gvm: read and drive the control blocks that the gvm agent (libgvm.so) publishes for each CUDA
 * process under /dev/shm/gvm (or $GVM_SHM_DIR).
 *
 *   const procs = await Gvm.processes();
 *   for (const p of procs) for (const g of p.gpus) console.log(p.pid, g.index, g.memory.current);
 *
 * Every getter reads the live value from the shared mapping (no caching). 64-bit counters are
 * numbers (exact below 2^53: 8 PiB, or 9e15 kernels); nanosecond clocks are bigints.
 */
import * as fs from 'node:fs';

import {
  Backend,
  BACKEND_KERNEL,
  BackendChoice,
  backendChoice,
  debugfsRoot,
  detectBackend,
  detectBackendSync,
  GpuCatalog,
  gpuCatalog,
  KernelBlock,
  kernelPids,
} from './backend/kernel';
import { blockEntries, blockEntryFor, INIT_PID_NS, judgeBlock } from './block-files';
import { codeForStatus, GvmError, isGvmError, statusName } from './errors';
import { native, NativeControlBlock, NativeGpu, NativeHoldParts, NativeRm } from './native';
import { shmDir } from './paths';
import { machineGpuIndex, machineGpuOrder, userName } from './system';

export { GvmError, GvmStatus, isGvmError, codeForStatus, statusName } from './errors';
export type { GvmErrorCode, GvmErrorOptions, GvmStatusName } from './errors';
export { parseBytes, formatBytes } from './units';
export { agentPath, shmDir } from './paths';
export { debugfsRoot } from './backend/kernel';
export type { Backend, BackendChoice } from './backend/kernel';

/** Command keys (enum gvm_key). */
export const GvmKey = {
  PING: 0,
  MEMORY_LIMIT: 1,
  MEMORY_MODE: 2,
  COMPUTE_PRIORITY: 3,
  COMPUTE_FREEZE: 4,
  POLICY_CLASS: 5,
} as const;
export type GvmKeyName = keyof typeof GvmKey;

/** The automatic policy's classes (enum gvm_policy_class). */
export const POLICY_CLASSES = ['none', 'latency', 'best-effort'] as const;
export type PolicyClass = (typeof POLICY_CLASSES)[number];

/** What the policy log records (enum gvm_policy_event_kind). */
export const POLICY_EVENT_KINDS = ['', 'busy', 'idle', 'hold', 'release', 'mem-need', 'mem-lend', 'mem-return', 'peer-gone'] as const;

export interface GvmPolicyEvent {
  /** CLOCK_MONOTONIC of the event, in ns */
  ns: bigint;
  kind: string;
  /** the other process involved (hold: the busy one; lend: the one that needed memory), 0 if none */
  pid: number;
  /** busy: burst number; idle: burst length in us; hold: chain in us; release: held us; mem-*: bytes */
  value: number;
}

export interface GvmPolicy {
  class: PolicyClass;
  /** best-effort: held by the policy right now */
  held: boolean;
  action: 'freeze' | 'throttle';
  idleMs: number;
  /** latency: idle -> busy transitions published */
  bursts: number;
  /** best-effort: times held, and the total time held (ms, closed holds) */
  holds: number;
  heldMs: number;
  /** best-effort: from the first launch of a burst to this process's work stopped (us) */
  chain: { lastUs: number; maxUs: number; p50Us: number | null; p99Us: number | null };
  /** 100-us buckets of that chain; the last bucket is open-ended */
  chainHistogram: number[];
  /** where the chains went (an agent older than control block minor 4 leaves holds at 0) */
  chainParts: GvmChainParts;
  /** best-effort: bytes moved to the host for a more important process */
  memoryLent: number;
  /** latency: allocations that waited for lent memory */
  memoryWaits: number;
  events: GvmPolicyEvent[];
}

/**
 * A hold chain in parts: the wake (the burst's first launch until the best-effort process's policy
 * thread acted), the wait for its control lock (a swap move holds it), and the RM controls.
 */
export interface GvmChainParts {
  holds: number;
  wake: { meanUs: number | null; p50Us: number | null; p99Us: number | null };
  lock: { meanUs: number | null; maxUs: number };
  rm: { meanUs: number | null; p50Us: number | null; p99Us: number | null; maxUs: number };
  /** 100-us buckets, as chainHistogram */
  wakeHistogram: number[];
  rmHistogram: number[];
}

/** A percentile (upper bucket edge, us) of a 100-us histogram; null when empty. */
export function histogramPercentile(hist: readonly number[], q: number): number | null {
  const total = hist.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  let seen = 0;
  for (let i = 0; i < hist.length; i++) {
    seen += hist[i]!;
    if (seen >= q * total) return (i + 1) * 100;
  }
  return hist.length * 100;
}

function chainPartsOf(raw: NativeHoldParts): GvmChainParts {
  const mean = (sum: number): number | null => (raw.holds > 0 ? sum / raw.holds / 1e3 : null);
  const pct = (hist: readonly number[]): { p50Us: number | null; p99Us: number | null } => ({
    p50Us: histogramPercentile(hist, 0.5),
    p99Us: histogramPercentile(hist, 0.99),
  });
  return {
    holds: raw.holds,
    wake: { meanUs: mean(raw.wakeNsSum), ...pct(raw.wakeHistogram) },
    lock: { meanUs: mean(raw.lockNsSum), maxUs: raw.lockMaxNs / 1e3 },
    rm: { meanUs: mean(raw.rmNsSum), ...pct(raw.rmHistogram), maxUs: raw.rmMaxNs / 1e3 },
    wakeHistogram: raw.wakeHistogram,
    rmHistogram: raw.rmHistogram,
  };
}

export type AgentState = 'starting' | 'ready' | 'disabled' | 'exited' | 'unknown';
export type MemoryMode = 'oom' | 'swap';

const AGENT_STATES: readonly AgentState[] = ['starting', 'ready', 'disabled', 'exited'];

export interface GvmMemory {
  /** Device bytes held by the process. */
  current: number;
  /** The limit in force (the GPU's total when unlimited). */
  limit: number;
  /** Device allocations living on the host (swap mode). */
  swapCurrent: number;
  peak: number;
  managed: number;
  host: number;
  mode: MemoryMode;
}

export interface GvmKernels {
  submitted: number;
  ended: number;
  /** submitted - ended, never negative. */
  pending: number;
}

/**
 * How compute control reaches the GPU: RM controls on the process's channels, the software fallback,
 * or the nvidia-uvm module (kernel backend).
 */
export type ComputeControlMode = 'none' | 'rm' | 'software' | 'kernel';
const CONTROL_MODES: readonly ComputeControlMode[] = ['none', 'rm', 'software', 'kernel'];

export interface GvmCompute {
  /** 0..15, lower is more important; 8 is the driver's default. */
  priority: number;
  frozen: boolean;
  mode: ComputeControlMode;
}

function computeOf(raw: NativeGpu): GvmCompute {
  return { priority: raw.priority, frozen: raw.frozen, mode: CONTROL_MODES[raw.controlMode] ?? 'none' };
}

/** Checks a compute.priority value: an integer 0..15, else EGVM_INVALID (nothing is sent). */
export function checkPriority(value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 15) {
    throw new GvmError(`compute.priority must be an integer 0..15, not ${String(value)}`, 'EGVM_INVALID');
  }
  return value;
}

export interface GvmAllocations {
  count: number;
  frees: number;
  failures: number;
}

export interface GvmTsg {
  handle: number;
  engineType: number;
  /** "compute" for engine type 1 (GR), else "copy". */
  engine: 'compute' | 'copy';
  channelCount: number;
  parent: number;
  timesliceUs: number;
}

export interface GvmRm {
  fd: number;
  client: number;
  device: number;
  subdevice: number;
  tsgs: GvmTsg[];
  channels: { handle: number; tsg: number; classId: number }[];
}

export interface GvmCommandOptions {
  /** How long to wait for the agent's answer (default 2000 ms). */
  timeoutMs?: number;
}

export interface GvmCommandResult {
  status: number;
  message: string;
  seq: number;
}

/** A plain, JSON-friendly copy of one GPU's state. */
export interface GvmGpuSnapshot {
  index: number;
  ordinal: number;
  uuid: string;
  name: string;
  pciBusId: string;
  totalBytes: number;
  memory: GvmMemory;
  kernels: GvmKernels;
  compute: GvmCompute;
  contexts: number;
  allocations: GvmAllocations;
}

export interface GvmOptions {
  /** The control block directory (default $GVM_SHM_DIR, else /dev/shm/gvm). */
  shmDir?: string;
  /**
   * agent: the agents' control blocks; kernel: the patched nvidia-uvm module's files; auto (default,
   * or $GVM_BACKEND): kernel when the module's tree is there and writable.
   */
  backend?: BackendChoice;
  /** The module's tree (default $GVM_DEBUGFS_ROOT, else /sys/kernel/debug/nvidia-uvm). */
  debugfsRoot?: string;
}

const DEFAULT_TIMEOUT_MS = 2000;

function keyName(key: number): string {
  for (const [name, value] of Object.entries(GvmKey)) if (value === key) return name.toLowerCase();
  return `key ${key}`;
}

/** One GPU as one process sees it (the slot of gvm_gpu_block[] its CUDA ordinal selects). */
export class GvmGpu {
  readonly #process: GvmProcess;
  readonly #slot: number;
  readonly #gpuOrder: readonly string[];

  /** @internal */
  constructor(process: GvmProcess, slot: number, gpuOrder: readonly string[]) {
    this.#process = process;
    this.#slot = slot;
    this.#gpuOrder = gpuOrder;
  }

  #raw(): NativeGpu {
    return this.#process._handle().gpu(this.#slot);
  }

  get process(): GvmProcess {
    return this.#process;
  }

  /** The CUDA device ordinal inside the process. */
  get ordinal(): number {
    return this.#raw().ordinal;
  }

  /** The machine-wide index (nvidia-smi's order by PCI bus id); the ordinal when that is unknown. */
  get index(): number {
    const raw = this.#raw();
    return machineGpuIndex(this.#gpuOrder, raw.pciBusId) ?? raw.ordinal;
  }

  get present(): boolean {
    return this.#raw().present;
  }

  get uuid(): string {
    return this.#raw().uuid;
  }

  get name(): string {
    return this.#raw().name;
  }

  get pciBusId(): string {
    return this.#raw().pciBusId;
  }

  get totalBytes(): number {
    return this.#raw().totalBytes;
  }

  get memory(): GvmMemory {
    return memoryOf(this.#raw());
  }

  get kernels(): GvmKernels {
    return kernelsOf(this.#raw());
  }

  get compute(): GvmCompute {
    return computeOf(this.#raw());
  }

  /** The automatic policy's state and recent decisions on this GPU. */
  get policy(): GvmPolicy {
    const raw = this.#process._handle().policy(this.#slot);
    return {
      class: POLICY_CLASSES[raw.class] ?? 'none',
      held: raw.held,
      action: raw.action === 1 ? 'throttle' : 'freeze',
      idleMs: raw.idleMs,
      bursts: raw.bursts,
      holds: raw.holds,
      heldMs: raw.heldNs / 1e6,
      chain: {
        lastUs: raw.chainLastNs / 1e3,
        maxUs: raw.chainMaxNs / 1e3,
        p50Us: histogramPercentile(raw.chainHistogram, 0.5),
        p99Us: histogramPercentile(raw.chainHistogram, 0.99),
      },
      chainHistogram: raw.chainHistogram,
      chainParts: chainPartsOf(raw.holdParts),
      memoryLent: raw.memoryLent,
      memoryWaits: raw.memoryWaits,
      events: raw.events.map((e) => ({ ns: e.ns, kind: POLICY_EVENT_KINDS[e.kind] || `kind ${e.kind}`, pid: e.pid, value: e.value })),
    };
  }

  /** Puts the process in a policy class on this GPU; resolves once the agent applied it. */
  async setPolicyClass(cls: PolicyClass, options: GvmCommandOptions = {}): Promise<GvmCommandResult> {
    const value = POLICY_CLASSES.indexOf(cls);
    if (value < 0) throw new GvmError(`policy.class must be none, latency or best-effort, not '${String(cls)}'`, 'EGVM_INVALID');
    return this.command(GvmKey.POLICY_CLASS, value, options);
  }

  /** Sets the compute priority (the timeslice of every channel group); resolves once the agent applied it. */
  async setPriority(priority: number, options: GvmCommandOptions = {}): Promise<GvmCommandResult> {
    return this.command(GvmKey.COMPUTE_PRIORITY, checkPriority(priority), options);
  }

  /** Stops the process's GPU work on this GPU; resolves once the GPU stopped running it. */
  async freeze(options: GvmCommandOptions = {}): Promise<GvmCommandResult> {
    return this.command(GvmKey.COMPUTE_FREEZE, 1, options);
  }

  /** Lets a frozen process run again; nothing was lost while it was frozen. */
  async thaw(options: GvmCommandOptions = {}): Promise<GvmCommandResult> {
    return this.command(GvmKey.COMPUTE_FREEZE, 0, options);
  }

  /**
   * Sets memory.limit in bytes (1 .. the GPU's size), else EGVM_INVALID. A GPU of unknown size (kernel
   * backend, no agent or driver listing names it) is checked against 2^63-1, then by the module.
   */
  async setMemoryLimit(bytes: number | bigint, options: GvmCommandOptions = {}): Promise<GvmCommandResult> {
    const n = typeof bytes === 'bigint' ? bytes : Number.isInteger(bytes) ? BigInt(bytes) : -1n;
    const most = this.totalBytes > 0 ? BigInt(this.totalBytes) : (1n << 63n) - 1n;
    if (n < 1n || n > most) {
      throw new GvmError(`memory.limit must be 1..${most} bytes, not ${String(bytes)}`, 'EGVM_INVALID');
    }
    return this.command(GvmKey.MEMORY_LIMIT, n, options);
  }

  get contexts(): number {
    return this.#raw().contexts;
  }

  get allocations(): GvmAllocations {
    const raw = this.#raw();
    return { count: raw.allocCount, frees: raw.freeCount, failures: raw.allocFailures };
  }

  /** CLOCK_MONOTONIC ns of the agent's last publish for this GPU. */
  get updatedNs(): bigint {
    return this.#raw().updatedNs;
  }

  /** Every field at one moment, as plain data. */
  snapshot(): GvmGpuSnapshot {
    const raw = this.#raw();
    return {
      index: machineGpuIndex(this.#gpuOrder, raw.pciBusId) ?? raw.ordinal,
      ordinal: raw.ordinal,
      uuid: raw.uuid,
      name: raw.name,
      pciBusId: raw.pciBusId,
      totalBytes: raw.totalBytes,
      memory: memoryOf(raw),
      kernels: kernelsOf(raw),
      compute: computeOf(raw),
      contexts: raw.contexts,
      allocations: { count: raw.allocCount, frees: raw.freeCount, failures: raw.allocFailures },
    };
  }

  /** The RM objects the agent recorded (debug view), read consistently under the agent's seqlock. */
  rm(): GvmRm {
    const raw: NativeRm = this.#process._handle().rm(this.#slot);
    return {
      fd: raw.fd,
      client: raw.client,
      device: raw.device,
      subdevice: raw.subdevice,
      tsgs: raw.tsgs.map((t) => ({ ...t, engine: t.engineType === 1 ? 'compute' : 'copy' })),
      channels: raw.channels.map((c) => ({ ...c })),
    };
  }

  /**
   * Sends one command to the agent for this GPU and waits for its answer. Resolves on OK; an agent
   * refusal rejects with GvmError: INVALID -> EGVM_INVALID, UNSUPPORTED -> EGVM_UNSUPPORTED,
   * NO_GPU -> EGVM_NOT_FOUND, DRIVER/BUSY -> EGVM_AGENT, no answer in time -> EGVM_TIMEOUT.
   */
  async command(key: number, value: bigint | number, options: GvmCommandOptions = {}): Promise<GvmCommandResult> {
    return this.#process._command(key, this.#slot, value, options);
  }

  /** Proves the agent's control thread answers; resolves with the round trip in milliseconds. */
  async ping(options: GvmCommandOptions = {}): Promise<number> {
    const start = process.hrtime.bigint();
    await this.command(GvmKey.PING, 0n, options);
    return Number(process.hrtime.bigint() - start) / 1e6;
  }
}

function memoryOf(raw: NativeGpu): GvmMemory {
  return {
    current: raw.memoryCurrent,
    limit: raw.memoryLimit,
    swapCurrent: raw.memorySwapCurrent,
    peak: raw.memoryPeak,
    managed: raw.managedBytes,
    host: raw.hostBytes,
    mode: raw.memoryMode === 1 ? 'swap' : 'oom',
  };
}

function kernelsOf(raw: NativeGpu): GvmKernels {
  const pending = raw.kernelsSubmitted - raw.kernelsEnded;
  return { submitted: raw.kernelsSubmitted, ended: raw.kernelsEnded, pending: pending > 0 ? pending : 0 };
}

/** One process running under the gvm agent: a mapping of its control block. */
export class GvmProcess implements Disposable {
  readonly #handle: NativeControlBlock;
  readonly #gpus = new Map<number, GvmGpu>();
  readonly #gpuOrder: readonly string[];
  readonly #pid: number | undefined;
  readonly #startTime: number | undefined;

  /**
   * @internal here: the process's pid and /proc start time as seen from this process (they differ from
   * what its block records when it runs in another PID or time namespace)
   */
  constructor(handle: NativeControlBlock, gpuOrder: readonly string[], here?: { pid: number; startTime: number }) {
    this.#handle = handle;
    this.#gpuOrder = gpuOrder;
    this.#pid = here?.pid;
    this.#startTime = here?.startTime;
  }

  /** @internal */
  _handle(): NativeControlBlock {
    return this.#handle;
  }

  /** @internal The control block file behind this process (undefined for the kernel module's view). */
  _blockFile(): string | undefined {
    return this.#handle instanceof KernelBlock ? undefined : this.#handle.path;
  }

  /**
   * Who applies this process's settings: 'kernel' when the nvidia-uvm module does (a process read
   * from the module's files, or an agent in kernel mode), else 'agent'.
   */
  get backend(): Backend {
    if (this.#handle instanceof KernelBlock) return 'kernel';
    return this.#handle.header().backend === BACKEND_KERNEL ? 'kernel' : 'agent';
  }

  /**
   * Reads the values again. A control block is a live mapping (its getters always read the present);
   * the kernel backend's files are read when the process is opened and here (and after each write).
   */
  async refresh(): Promise<void> {
    if (this.#handle instanceof KernelBlock) await this.#handle.refresh();
  }

  /** The pid in this process's PID namespace (a container's process seen from the host: its host pid). */
  get pid(): number {
    const header = this.#handle.header(); // throws EGVM_CLOSED once closed, like every other getter
    return this.#pid ?? header.pid;
  }

  get uid(): number {
    return this.#handle.header().uid;
  }

  /**
   * Where the process runs, for one in a container: its pid there and the inode of its PID namespace
   * (`readlink /proc/<pid>/ns/pid`). Undefined for a process of the host's namespace, or one whose
   * agent predates the field.
   */
  get container(): { pid: number; pidNamespace: number } | undefined {
    const h = this.#handle.header();
    return h.pidNs !== 0 && h.pidNs !== INIT_PID_NS ? { pid: h.pid, pidNamespace: h.pidNs } : undefined;
  }

  /** The user name from /etc/passwd, or the uid as a string. */
  get user(): string {
    return userName(this.uid);
  }

  /** argv joined by spaces (truncated by the agent at 511 bytes). */
  get command(): string {
    return this.#handle.header().cmdline;
  }

  /** /proc/<pid>/stat field 22: clock ticks after boot. */
  /** /proc/<pid>/stat field 22 as this process reads it (clock ticks after boot). */
  get startTime(): number {
    const header = this.#handle.header();
    return this.#startTime ?? header.startTime;
  }

  get createdAt(): Date {
    return new Date(this.#handle.header().createdUnixMs);
  }

  get agentState(): AgentState {
    return AGENT_STATES[this.#handle.header().agentState] ?? 'unknown';
  }

  get agentVersion(): string {
    return this.#handle.header().agentVersion;
  }

  /** cuDriverGetVersion(), e.g. 13000. */
  get driverVersion(): number {
    return this.#handle.header().driverVersion;
  }

  /** CLOCK_MONOTONIC ns, bumped by the agent's control thread on every tick. */
  get heartbeatNs(): bigint {
    return this.#handle.header().heartbeatNs;
  }

  /** Devices visible to the process (cuDeviceGetCount). */
  get gpuCount(): number {
    return this.#handle.header().gpuCount;
  }

  /** The GPUs the agent has published (present), by ordinal. */
  get gpus(): GvmGpu[] {
    const out: GvmGpu[] = [];
    for (let slot = 0; slot < 16; slot++) {
      if (this.#handle.gpu(slot).present) out.push(this.#gpu(slot));
    }
    return out;
  }

  #gpu(slot: number): GvmGpu {
    let g = this.#gpus.get(slot);
    if (g === undefined) {
      g = new GvmGpu(this, slot, this.#gpuOrder);
      this.#gpus.set(slot, g);
    }
    return g;
  }

  /** The GPU with this CUDA ordinal; EGVM_NOT_FOUND when the process has none. */
  gpu(ordinal: number): GvmGpu {
    if (!Number.isInteger(ordinal) || ordinal < 0) {
      throw new GvmError(`invalid GPU ordinal ${String(ordinal)}`, 'EGVM_INVALID');
    }
    if (ordinal < 16 && this.#handle.gpu(ordinal).present) return this.#gpu(ordinal);
    throw new GvmError(`process ${this.pid} has no GPU with ordinal ${ordinal}`, 'EGVM_NOT_FOUND');
  }

  /** The GPU with this machine-wide index (nvidia-smi's numbering); EGVM_NOT_FOUND when none. */
  gpuByIndex(index: number): GvmGpu {
    const g = this.gpus.find((x) => x.index === index);
    if (g === undefined) throw new GvmError(`process ${this.pid} does not use GPU ${index}`, 'EGVM_NOT_FOUND');
    return g;
  }

  /** Pings the agent through the first present GPU slot (slot 0 when none). */
  async ping(options: GvmCommandOptions = {}): Promise<number> {
    const first = this.gpus[0];
    if (first !== undefined) return first.ping(options);
    const start = process.hrtime.bigint();
    await this._command(GvmKey.PING, 0, 0n, options);
    return Number(process.hrtime.bigint() - start) / 1e6;
  }

  /** @internal */
  async _command(key: number, slot: number, value: bigint | number, options: GvmCommandOptions): Promise<GvmCommandResult> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!Number.isInteger(key) || key < 0 || key > 0xffffffff) throw new GvmError(`invalid command key ${key}`, 'EGVM_INVALID');
    if (typeof value === 'number') {
      if (!Number.isSafeInteger(value) || value < 0) throw new GvmError(`invalid command value ${value}`, 'EGVM_INVALID');
      value = BigInt(value);
    }
    if (value < 0n || value >= 1n << 64n) throw new GvmError(`invalid command value ${value}`, 'EGVM_INVALID');
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0) throw new GvmError(`invalid timeoutMs ${timeoutMs}`, 'EGVM_INVALID');
    const pid = this.pid;
    const result = await this.#handle.command(key, slot, value, timeoutMs);
    const code = codeForStatus(result.status);
    if (code !== undefined) {
      const detail = result.message !== '' ? result.message : statusName(result.status);
      throw new GvmError(`process ${pid} GPU ${slot}: ${keyName(key)} ${value}: ${detail}`, code, {
        status: result.status,
        agentMessage: result.message,
      });
    }
    return { status: result.status, message: result.message, seq: result.seq };
  }

  get closed(): boolean {
    return this.#handle.closed;
  }

  /** Unmaps the block. Idempotent; any later read throws EGVM_CLOSED. */
  close(): void {
    this.#handle.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Opens a block writable when we may (so commands work), else read-only. */
function openBlock(file: string): NativeControlBlock {
  const { ControlBlock } = native();
  try {
    return ControlBlock.open(file, true);
  } catch (e) {
    if (isGvmError(e, 'EGVM_PERMISSION')) return ControlBlock.open(file, false);
    throw e;
  }
}

async function removeStale(file: string): Promise<void> {
  try {
    await fs.promises.unlink(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'EACCES' && code !== 'EPERM') throw e;
  }
}

export class Gvm {
  private constructor() {}

  /** The backend used when no option says otherwise: $GVM_BACKEND, else detected (see detectBackend). */
  static get backend(): Backend {
    return detectBackendSync(backendChoice(), debugfsRoot());
  }

  /**
   * The backend these options select: options.backend, else $GVM_BACKEND, else auto: 'kernel' when
   * the nvidia-uvm module's tree (<debugfsRoot>/processes) is there and writable, else 'agent'.
   */
  static async detectBackend(options: GvmOptions = {}): Promise<Backend> {
    return detectBackend(backendChoice(options.backend), options.debugfsRoot ?? debugfsRoot());
  }

  /**
   * Every live process under gvm. Agent backend: every control block (stale ones removed, unreadable
   * ones skipped). Kernel backend: every process the module lists, merged with its agent block when
   * it has one, plus the agent processes the module does not list.
   */
  static async processes(options: GvmOptions = {}): Promise<GvmProcess[]> {
    if ((await Gvm.detectBackend(options)) === 'agent') return Gvm.#agentProcesses(options);
    const root = options.debugfsRoot ?? debugfsRoot();
    const pids = await kernelPids(root);
    const agents = await Gvm.#companions(options);
    const catalog = await gpuCatalog(agents.map((p) => p._handle()));
    const byPid = new Map(agents.map((p) => [p.pid, p]));
    const gpuOrder = machineGpuOrder();
    const out: GvmProcess[] = [];
    try {
      for (const pid of pids) {
        const agent = byPid.get(pid);
        let block: KernelBlock;
        try {
          block = await KernelBlock.open(root, pid, { agent: agent?._handle(), catalog });
        } catch (e) {
          if (isGvmError(e, 'EGVM_NOT_FOUND') || isGvmError(e, 'EGVM_PERMISSION')) continue; // exited while listed
          throw e;
        }
        byPid.delete(pid); // its block now owns the agent's mapping
        out.push(new GvmProcess(block, gpuOrder));
      }
    } catch (e) {
      for (const p of [...out, ...byPid.values()]) p.close();
      throw e;
    }
    return [...out, ...byPid.values()].sort((a, b) => a.pid - b.pid);
  }

  /** The agents' processes beside the kernel backend; none when the addon cannot load (not needed). */
  static async #companions(options: GvmOptions): Promise<GvmProcess[]> {
    try {
      native();
    } catch {
      return [];
    }
    return Gvm.#agentProcesses(options);
  }

  /** The kernel backend's view of `pid`, or undefined when the module does not list it. */
  static async #kernelProcess(pid: number, options: GvmOptions): Promise<GvmProcess | undefined> {
    const root = options.debugfsRoot ?? debugfsRoot();
    try {
      if (!(await fs.promises.stat(`${root}/processes/${pid}`)).isDirectory()) return undefined;
    } catch {
      return undefined;
    }
    const agents = await Gvm.#companions(options);
    const catalog: GpuCatalog = await gpuCatalog(agents.map((p) => p._handle()));
    const agent = agents.find((p) => p.pid === pid);
    for (const p of agents) if (p !== agent) p.close();
    try {
      return new GvmProcess(await KernelBlock.open(root, pid, { agent: agent?._handle(), catalog }), machineGpuOrder());
    } catch (e) {
      agent?.close();
      throw e;
    }
  }

  static async #agentProcesses(options: GvmOptions): Promise<GvmProcess[]> {
    const dir = options.shmDir ?? shmDir();
    let names: string[];
    try {
      names = await fs.promises.readdir(dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return [];
      throw new GvmError(`cannot list ${dir}: ${(e as Error).message}`, code === 'EACCES' ? 'EGVM_PERMISSION' : 'EGVM_IO', { cause: e });
    }
    const gpuOrder = machineGpuOrder();
    const out: GvmProcess[] = [];
    for (const entry of blockEntries(dir, names)) {
      let handle: NativeControlBlock;
      try {
        handle = openBlock(entry.file);
      } catch (e) {
        if (isGvmError(e) && ['EGVM_PERMISSION', 'EGVM_NOT_FOUND', 'EGVM_VERSION', 'EGVM_INVALID'].includes(e.code)) continue;
        throw e;
      }
      const seen = judgeBlock(entry, handle);
      if (seen.state !== 'live') {
        handle.close();
        if (seen.state === 'stale') await removeStale(entry.file);
        continue;
      }
      out.push(new GvmProcess(handle, gpuOrder, seen));
    }
    return out.sort((a, b) => a.pid - b.pid);
  }

  /**
   * The process with this pid: on the kernel backend, the module's view when it lists the pid (else
   * its control block). EGVM_NOT_FOUND when it has no block (or only a stale one, which is
   * removed), EGVM_PERMISSION when the block is another user's, EGVM_VERSION when it is not readable.
   */
  static async process(pid: number, options: GvmOptions = {}): Promise<GvmProcess> {
    if (!Number.isInteger(pid) || pid <= 0) throw new GvmError(`invalid pid ${String(pid)}`, 'EGVM_INVALID');
    if ((await Gvm.detectBackend(options)) === 'kernel') {
      const p = await Gvm.#kernelProcess(pid, options);
      if (p !== undefined) return p;
    }
    const dir = options.shmDir ?? shmDir();
    const entry = blockEntryFor(dir, pid);
    const file = entry.file;
    let handle: NativeControlBlock;
    try {
      handle = openBlock(file);
    } catch (e) {
      if (isGvmError(e, 'EGVM_NOT_FOUND')) {
        throw new GvmError(`no gvm process ${pid} (no control block in ${dir})`, 'EGVM_NOT_FOUND', { cause: e });
      }
      if (isGvmError(e, 'EGVM_PERMISSION')) {
        throw new GvmError(`process ${pid} belongs to another user (${file}: permission denied)`, 'EGVM_PERMISSION', { cause: e });
      }
      throw e;
    }
    const seen = judgeBlock(entry, handle);
    if (seen.state !== 'live' || seen.pid !== pid) {
      handle.close();
      if (seen.state !== 'stale') throw new GvmError(`no gvm process ${pid} (${file} is not its block)`, 'EGVM_NOT_FOUND');
      await removeStale(file);
      throw new GvmError(`no gvm process ${pid} (its control block was stale and has been removed)`, 'EGVM_NOT_FOUND');
    }
    return new GvmProcess(handle, machineGpuOrder(), seen);
  }
}
