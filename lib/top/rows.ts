/** gvm top's data: one row per process and GPU, read from the control blocks, and their orders. */
import { Gvm, GvmPolicy, GvmProcess } from '../index';

export type SortKey = 'memory' | 'rate' | 'pid' | 'priority';
export const SORT_KEYS: readonly SortKey[] = ['memory', 'rate', 'pid', 'priority'];

export function isSortKey(v: string | undefined): v is SortKey {
  return SORT_KEYS.includes(v as SortKey);
}

export interface Row {
  pid: number;
  user: string;
  gpu: number;
  gpuName: string;
  total: number;
  current: number;
  limit: number;
  swap: number;
  priority: number;
  frozen: boolean;
  submitted: number;
  pending: number;
  /** kernels per second since the previous reading (0 on the first) */
  rate: number;
  command: string;
  policy: GvmPolicy;
}

/** The previous reading of each process and GPU, for kernel rates. */
export type RateMemory = Map<string, { submitted: number; at: number }>;

/** One reading of every block; rates come from the previous reading in `previous`. */
export async function readRows(previous: RateMemory, shmDir?: string): Promise<Row[]> {
  const now = Date.now();
  const procs: GvmProcess[] = await Gvm.processes({ shmDir });
  const rows: Row[] = [];
  const seen = new Set<string>();
  for (const p of procs) {
    try {
      for (const g of p.gpus) {
        const s = g.snapshot();
        const key = `${p.pid}:${g.index}`;
        const before = previous.get(key);
        const rate = before && now > before.at ? Math.max(0, ((s.kernels.submitted - before.submitted) * 1000) / (now - before.at)) : 0;
        previous.set(key, { submitted: s.kernels.submitted, at: now });
        seen.add(key);
        rows.push({
          pid: p.pid,
          user: p.user,
          gpu: g.index,
          gpuName: g.name,
          total: g.totalBytes,
          current: s.memory.current,
          limit: s.memory.limit,
          swap: s.memory.swapCurrent,
          priority: s.compute.priority,
          frozen: s.compute.frozen,
          submitted: s.kernels.submitted,
          pending: s.kernels.pending,
          rate,
          command: p.command,
          policy: g.policy,
        });
      }
    } finally {
      p.close();
    }
  }
  for (const key of previous.keys()) if (!seen.has(key)) previous.delete(key);
  return rows;
}

/** Rows grouped by GPU, each group in the order of `key` (ties by pid). */
export function sortRows(rows: readonly Row[], key: SortKey): Row[] {
  const by: Record<SortKey, (a: Row, b: Row) => number> = {
    memory: (a, b) => b.current - a.current,
    rate: (a, b) => b.rate - a.rate,
    pid: () => 0,
    priority: (a, b) => a.priority - b.priority,
  };
  return [...rows].sort((a, b) => a.gpu - b.gpu || by[key](a, b) || a.pid - b.pid);
}
