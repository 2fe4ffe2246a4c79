/**
 * gvm top: a live view of every GPU and every process under gvm: memory bars (current against the
 * limit, swap beside), priority, frozen, kernel rate and pending. Keys: s sort, j/k or arrows select,
 * f freeze, t thaw, q quit. `--once` prints one frame for scripts.
 */
import { Gvm, GvmProcess } from '../index';
import { formatBytes } from '../units';

export type SortKey = 'memory' | 'rate' | 'pid' | 'priority';
const SORTS: readonly SortKey[] = ['memory', 'rate', 'pid', 'priority'];

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
  rate: number; // kernels per second since the last frame
  command: string;
}

/** One reading of every block; rates come from the previous reading. */
export async function readRows(previous: Map<string, { submitted: number; at: number }>, shmDir?: string): Promise<Row[]> {
  const now = Date.now();
  const procs: GvmProcess[] = await Gvm.processes({ shmDir });
  const rows: Row[] = [];
  for (const p of procs) {
    for (const g of p.gpus) {
      const s = g.snapshot();
      const key = `${p.pid}:${g.index}`;
      const before = previous.get(key);
      const rate = before && now > before.at ? ((s.kernels.submitted - before.submitted) * 1000) / (now - before.at) : 0;
      previous.set(key, { submitted: s.kernels.submitted, at: now });
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
      });
    }
    p.close();
  }
  return rows;
}

export function sortRows(rows: Row[], key: SortKey): Row[] {
  const by: Record<SortKey, (a: Row, b: Row) => number> = {
    memory: (a, b) => b.current - a.current || a.pid - b.pid,
    rate: (a, b) => b.rate - a.rate || a.pid - b.pid,
    pid: (a, b) => a.pid - b.pid,
    priority: (a, b) => a.priority - b.priority || a.pid - b.pid,
  };
  return [...rows].sort((a, b) => a.gpu - b.gpu || by[key](a, b));
}

function bar(used: number, of: number, width: number): string {
  const n = of > 0 ? Math.min(width, Math.round((used / of) * width)) : 0;
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}]`;
}

/** The whole screen as text; `selected` indexes the sorted rows. */
export function renderFrame(rows: Row[], sort: SortKey, selected: number, width = 120): string {
  const lines: string[] = [];
  const gpus = [...new Set(rows.map((r) => r.gpu))].sort((a, b) => a - b);
  lines.push(`gvm top  ${new Date().toISOString().slice(11, 19)}  ${rows.length} process-GPU row(s)  sort: ${sort}  keys: s sort  j/k select  f freeze  t thaw  q quit`);
  if (rows.length === 0) lines.push('', 'no process is running under gvm (start one with: gvm run -- CMD)');
  let index = 0;
  for (const gpu of gpus) {
    const mine = rows.filter((r) => r.gpu === gpu);
    const used = mine.reduce((a, r) => a + r.current, 0);
    const swap = mine.reduce((a, r) => a + r.swap, 0);
    const total = mine[0]!.total;
    lines.push('');
    lines.push(`GPU ${gpu}  ${mine[0]!.gpuName}  ${bar(used, total, 30)} ${formatBytes(used)} / ${formatBytes(total)}  swap ${formatBytes(swap)}  ${mine.length} process(es)`);
    lines.push('    PID  USER      PRIO  STATE    MEMORY (current of limit)               SWAP        KERNELS/S   PENDING  COMMAND');
    for (const r of mine) {
      const mark = index === selected ? '>' : ' ';
      const mem = `${bar(r.current, r.limit, 16)} ${formatBytes(r.current)} / ${formatBytes(r.limit)}`;
      const fixed = `${mark}${String(r.pid).padStart(6)}  ${r.user.slice(0, 8).padEnd(8)}  ${String(r.priority).padStart(4)}  ${(r.frozen ? 'frozen' : 'running').padEnd(7)}  ${mem.padEnd(40)} ${formatBytes(r.swap).padEnd(10)}  ${r.rate.toFixed(0).padStart(9)}  ${String(r.pending).padStart(8)}  `;
      lines.push(fixed + r.command.slice(0, Math.max(10, width - fixed.length)));
      index++;
    }
  }
  return lines.join('\n') + '\n';
}

export interface TopOptions {
  once: boolean;
  sort: SortKey;
  shmDir?: string;
  intervalMs?: number;
}

export async function runTop(options: TopOptions): Promise<number> {
  const previous = new Map<string, { submitted: number; at: number }>();
  if (options.once) {
    await readRows(previous, options.shmDir);
    await new Promise((r) => setTimeout(r, 200)); // a short second reading gives kernel rates
    const rows = sortRows(await readRows(previous, options.shmDir), options.sort);
    process.stdout.write(renderFrame(rows, options.sort, -1, process.stdout.columns ?? 200));
    return 0;
  }
  let sort = options.sort;
  let selected = 0;
  let rows: Row[] = [];
  let message = '';
  const draw = (): void => {
    selected = Math.max(0, Math.min(selected, rows.length - 1));
    process.stdout.write(`\x1b[H\x1b[2J${renderFrame(rows, sort, selected, process.stdout.columns ?? 120)}${message ? `\n${message}\n` : ''}`);
  };
  const refresh = async (): Promise<void> => {
    rows = sortRows(await readRows(previous, options.shmDir), sort);
    draw();
  };
  await refresh();
  const timer = setInterval(() => void refresh(), options.intervalMs ?? 1000);
  return new Promise<number>((resolve) => {
    const stdin = process.stdin;
    if (stdin.isTTY) stdin.setRawMode(true);
    stdin.resume();
    const quit = (): void => {
      clearInterval(timer);
      if (stdin.isTTY) stdin.setRawMode(false);
      stdin.pause();
      process.stdout.write('\n');
      resolve(0);
    };
    stdin.on('data', (data: Buffer) => {
      const key = data.toString();
      if (key === 'q' || key === '\u0003') return quit();
      if (key === 's') sort = SORTS[(SORTS.indexOf(sort) + 1) % SORTS.length]!;
      else if (key === 'j' || key === '\x1b[B') selected++;
      else if (key === 'k' || key === '\x1b[A') selected--;
      else if (key === 'f' || key === 't') {
        const row = rows[selected];
        if (row) {
          const freeze = key === 'f';
          void (async () => {
            try {
              using p = await Gvm.process(row.pid, { shmDir: options.shmDir });
              const g = p.gpuByIndex(row.gpu);
              const r = freeze ? await g.freeze() : await g.thaw();
              message = `${row.pid}:${row.gpu} ${r.message}`;
            } catch (e) {
              message = `${row.pid}:${row.gpu} ${(e as Error).message}`;
            }
            await refresh();
          })();
        }
      }
      rows = sortRows(rows, sort);
      draw();
    });
  });
}
