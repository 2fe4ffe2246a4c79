/** gvm ps: every process under gvm, a row per GPU. */
import { Gvm, GvmGpu, GvmProcess } from '../index';
import { formatBytes } from '../units';
import { isHelp, out, USAGE, UsageError } from './common';

function stateOf(p: GvmProcess, g: GvmGpu | undefined): string {
  if (g !== undefined && g.compute.frozen) return 'frozen';
  return p.agentState;
}

function psJson(p: GvmProcess, g: GvmGpu | undefined): object {
  return {
    pid: p.pid,
    uid: p.uid,
    user: p.user,
    command: p.command,
    startTime: p.startTime,
    agentState: p.agentState,
    agentVersion: p.agentVersion,
    driverVersion: p.driverVersion,
    state: stateOf(p, g),
    backend: p.backend,
    container: p.container ?? null,
    gpu: g === undefined ? null : g.snapshot(),
  };
}

function terminalWidth(): number | undefined {
  if (process.stdout.isTTY && process.stdout.columns > 0) return process.stdout.columns;
  const cols = Number(process.env.COLUMNS);
  return Number.isInteger(cols) && cols > 0 ? cols : undefined;
}

export async function cmdPs(args: string[]): Promise<number> {
  let json = false;
  for (const arg of args) {
    if (arg === '--json') json = true;
    else if (isHelp(arg)) {
      out(USAGE.ps!);
      return 0;
    } else throw new UsageError(`unexpected argument '${arg}'`, 'ps');
  }
  const procs = await Gvm.processes();
  try {
    const rows: [GvmProcess, GvmGpu | undefined][] = [];
    for (const p of procs) {
      const gpus = p.gpus;
      if (gpus.length === 0) rows.push([p, undefined]);
      for (const g of gpus) rows.push([p, g]);
    }
    if (json) {
      out(JSON.stringify(rows.map(([p, g]) => psJson(p, g)), null, 2));
      return 0;
    }
    const header = ['PID', 'USER', 'GPU', 'MEMORY', 'SWAP', 'KERNELS', 'PENDING', 'PRIO', 'STATE', 'COMMAND'];
    const table = rows.map(([p, g]) => {
      const s = g?.snapshot();
      return [
        String(p.pid),
        p.user,
        s ? String(s.index) : '-',
        s ? `${formatBytes(s.memory.current)} / ${formatBytes(s.memory.limit)}` : '-',
        s ? formatBytes(s.memory.swapCurrent) : '-',
        s ? String(s.kernels.submitted) : '-',
        s ? String(s.kernels.pending) : '-',
        s ? String(s.compute.priority) : '-',
        stateOf(p, g),
        p.command,
      ];
    });
    const widths = header.map((h, c) => Math.max(h.length, ...table.map((r) => r[c]!.length)));
    const right = new Set([0, 2, 5, 6, 7]);
    const width = terminalWidth();
    for (const row of [header, ...table]) {
      let line = row
        .map((cell, c) => (c === row.length - 1 ? cell : right.has(c) ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!)))
        .join('  ');
      if (width !== undefined && line.length > width) line = line.slice(0, Math.max(width - 1, 0)) + (width > 0 ? '…' : '');
      out(line.trimEnd());
    }
    return 0;
  } finally {
    for (const p of procs) p.close();
  }
}
