/** gvm get: one value of a process on one GPU, and the target syntax PID[:GPU] every command shares. */
import { GvmError } from '../errors';
import { Gvm, GvmGpu, GvmProcess } from '../index';
import { isHelp, out, USAGE, UsageError } from './common';

export const GET_KEYS = [
  'memory.current',
  'memory.limit',
  'memory.swap.current',
  'memory.peak',
  'memory.mode',
  'compute.priority',
  'compute.freeze',
  'policy.class',
  'policy.stat',
  'policy.events',
  'policy.chain',
  'policy.chain.wake',
  'policy.chain.rm',
  'gcgroup.stat',
  'kernels.submitted',
  'kernels.ended',
  'kernels.pending',
] as const;
export type GetKey = (typeof GET_KEYS)[number];

export function parseTarget(text: string | undefined, command: string): { pid: number; gpu?: number } {
  if (text === undefined) throw new UsageError('missing PID[:GPU]', command);
  const m = /^([1-9]\d*)(?::(\d+))?$/.exec(text);
  if (m === null || Number(m[1]) > 0x7fffffff) throw new UsageError(`bad PID[:GPU] '${text}'`, command);
  return m[2] === undefined ? { pid: Number(m[1]) } : { pid: Number(m[1]), gpu: Number(m[2]) };
}

export function selectGpu(p: GvmProcess, index: number | undefined): GvmGpu {
  if (index !== undefined) return p.gpuByIndex(index);
  const first = p.gpus[0];
  if (first === undefined) throw new GvmError(`process ${p.pid} has no GPU yet (agent state: ${p.agentState})`, 'EGVM_NOT_FOUND');
  return first;
}

function policyStat(g: GvmGpu): Record<string, number> {
  const p = g.policy;
  return {
    bursts: p.bursts,
    holds: p.holds,
    held: p.held ? 1 : 0,
    held_ms: Math.round(p.heldMs),
    chain_last_us: Math.round(p.chain.lastUs),
    chain_max_us: Math.round(p.chain.maxUs),
    chain_p50_us: p.chain.p50Us ?? 0,
    chain_p99_us: p.chain.p99Us ?? 0,
    memory_lent: p.memoryLent,
    memory_waits: p.memoryWaits,
    // the chain in parts (zero from an agent older than control block minor 4)
    chain_wake_p50_us: p.chainParts.wake.p50Us ?? 0,
    chain_wake_p99_us: p.chainParts.wake.p99Us ?? 0,
    chain_lock_mean_us: Math.round(p.chainParts.lock.meanUs ?? 0),
    chain_lock_max_us: Math.round(p.chainParts.lock.maxUs),
    chain_rm_p50_us: p.chainParts.rm.p50Us ?? 0,
    chain_rm_p99_us: p.chainParts.rm.p99Us ?? 0,
    chain_rm_max_us: Math.round(p.chainParts.rm.maxUs),
  };
}

/** A hold-chain histogram's non-empty 100-us buckets, by lower edge in us (the top one is open). */
function buckets(hist: readonly number[]): Record<string, number> {
  const out: Record<string, number> = {};
  hist.forEach((n, i) => {
    if (n > 0) out[String(i * 100)] = n;
  });
  return out;
}

function policyEvents(g: GvmGpu): string {
  const now = process.hrtime.bigint(); // CLOCK_MONOTONIC, as the agent stamps them
  return g.policy.events.map((e) => `${(Number(now - e.ns) / 1e6).toFixed(1)} ${e.kind} ${e.pid} ${e.value}`).join('\n');
}

function getValue(g: GvmGpu, key: GetKey): number | string | Record<string, number> {
  if (key === 'policy.class') return g.policy.class;
  if (key === 'policy.stat') return policyStat(g);
  if (key === 'policy.events') return policyEvents(g);
  if (key === 'policy.chain') return buckets(g.policy.chainHistogram);
  if (key === 'policy.chain.wake') return buckets(g.policy.chainParts.wakeHistogram);
  if (key === 'policy.chain.rm') return buckets(g.policy.chainParts.rmHistogram);
  const s = g.snapshot();
  switch (key) {
    case 'memory.current':
      return s.memory.current;
    case 'memory.limit':
      return s.memory.limit;
    case 'memory.swap.current':
      return s.memory.swapCurrent;
    case 'memory.peak':
      return s.memory.peak;
    case 'memory.mode':
      return s.memory.mode;
    case 'compute.priority':
      return s.compute.priority;
    case 'compute.freeze':
      return s.compute.frozen ? 1 : 0;
    case 'kernels.submitted':
      return s.kernels.submitted;
    case 'kernels.ended':
      return s.kernels.ended;
    case 'kernels.pending':
      return s.kernels.pending;
    case 'gcgroup.stat':
      return {
        nr_submitted_kernels: s.kernels.submitted,
        nr_ended_kernels: s.kernels.ended,
        nr_pending_kernels: s.kernels.pending,
        memory_current: s.memory.current,
        memory_limit: s.memory.limit,
        memory_swap_current: s.memory.swapCurrent,
        memory_peak: s.memory.peak,
        memory_managed: s.memory.managed,
        memory_host: s.memory.host,
        nr_allocs: s.allocations.count,
        nr_frees: s.allocations.frees,
        nr_alloc_failures: s.allocations.failures,
        nr_contexts: s.contexts,
        priority: s.compute.priority,
        frozen: s.compute.frozen ? 1 : 0,
      };
  }
}

export async function cmdGet(args: string[]): Promise<number> {
  let json = false;
  const positional: string[] = [];
  for (const arg of args) {
    if (arg === '--json') json = true;
    else if (isHelp(arg)) {
      out(USAGE.get!);
      return 0;
    } else if (arg.startsWith('-')) throw new UsageError(`unknown option ${arg}`, 'get');
    else positional.push(arg);
  }
  if (positional.length !== 2) throw new UsageError('expected PID[:GPU] and KEY', 'get');
  const target = parseTarget(positional[0], 'get');
  const key = positional[1]!;
  if (!(GET_KEYS as readonly string[]).includes(key)) throw new UsageError(`unknown key '${key}'`, 'get');
  using p = await Gvm.process(target.pid);
  const g = selectGpu(p, target.gpu);
  const value = getValue(g, key as GetKey);
  if (json) out(JSON.stringify(value));
  else if (typeof value === 'object') out(Object.entries(value).map(([k, v]) => `${k} ${v}`).join('\n'));
  else out(String(value));
  return 0;
}
