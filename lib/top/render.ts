/** gvm top's screen as plain text: per GPU a header with its totals, per process a row. */
import { formatBytes } from '../units';
import { Row, SortKey } from './rows';

/**
 * A bar of `width` cells over `of`: '#' for device memory in use, '~' for bytes swapped to the host,
 * '.' for the rest.
 */
export function bar(used: number, swap: number, of: number, width: number): string {
  const cells = (v: number): number => (of > 0 ? Math.min(width, Math.round((v / of) * width)) : 0);
  const u = cells(used);
  const s = Math.min(width - u, cells(swap));
  return `[${'#'.repeat(u)}${'~'.repeat(s)}${'.'.repeat(width - u - s)}]`;
}

export const KEYS_HELP = 's sort  j/k or arrows select  f freeze  t thaw  q quit';

/** The whole screen; `selected` indexes the sorted rows (-1: none), `clock` is shown in the title. */
export function renderFrame(rows: readonly Row[], sort: SortKey, selected: number, width = 120, clock = new Date()): string {
  const lines: string[] = [];
  const gpus = [...new Set(rows.map((r) => r.gpu))].sort((a, b) => a - b);
  lines.push(`gvm top  ${clock.toISOString().slice(11, 19)}  ${rows.length} process-GPU row(s)  sort: ${sort}  keys: ${KEYS_HELP}`);
  if (rows.length === 0) lines.push('', 'no process is running under gvm (start one with: gvm run -- CMD)');
  let index = 0;
  for (const gpu of gpus) {
    const mine = rows.filter((r) => r.gpu === gpu);
    const used = mine.reduce((a, r) => a + r.current, 0);
    const swap = mine.reduce((a, r) => a + r.swap, 0);
    const pending = mine.reduce((a, r) => a + r.pending, 0);
    const rate = mine.reduce((a, r) => a + r.rate, 0);
    const total = mine[0]!.total;
    lines.push('');
    lines.push(
      `GPU ${gpu}  ${mine[0]!.gpuName}  ${bar(used, 0, total, 30)} ${formatBytes(used)} / ${formatBytes(total)}  swap ${formatBytes(swap)}  ` +
        `${mine.length} process(es)  ${rate.toFixed(0)} kernels/s  ${pending} pending`,
    );
    lines.push('    PID  USER      PRIO  STATE    MEMORY (current, swap ~, of limit)      SWAP        KERNELS/S   PENDING  COMMAND');
    for (const r of mine) {
      const mark = index === selected ? '>' : ' ';
      const mem = `${bar(r.current, r.swap, r.limit, 16)} ${formatBytes(r.current)} / ${formatBytes(r.limit)}`;
      const fixed =
        `${mark}${String(r.pid).padStart(6)}  ${r.user.slice(0, 8).padEnd(8)}  ${String(r.priority).padStart(4)}  ` +
        `${(r.frozen ? 'frozen' : r.policy.held ? 'held' : 'running').padEnd(7)}  ${mem.padEnd(40)} ${formatBytes(r.swap).padEnd(10)}  ` +
        `${r.rate.toFixed(0).padStart(9)}  ${String(r.pending).padStart(8)}  `;
      lines.push(fixed + r.command.slice(0, Math.max(10, width - fixed.length)));
      index++;
    }
    const classed = mine.filter((r) => r.policy.class !== 'none');
    if (classed.length > 0) lines.push(`    policy: ${classed.map(policySummary).join('  |  ')}`);
  }
  return lines.map((l) => l.slice(0, Math.max(width, 40))).join('\n') + '\n';
}

/** One process's part of a GPU's policy line: its class, what the policy did, and its last decision. */
export function policySummary(r: Row): string {
  const p = r.policy;
  const parts = [`${r.pid} ${p.class}`];
  if (p.class === 'latency') parts.push(`${p.bursts} bursts`);
  if (p.class === 'best-effort') {
    parts.push(`${p.holds} holds${p.held ? ' (held now)' : ''}`);
    if (p.chain.p99Us !== null) {
      const { wake, rm } = p.chainParts;
      const split = wake.p99Us !== null && rm.p99Us !== null ? ` (wake ${wake.p99Us}, RM ${rm.p99Us})` : '';
      parts.push(`chain p99 ${p.chain.p99Us} us${split}`);
    }
    if (p.memoryLent > 0) parts.push(`lent ${formatBytes(p.memoryLent)}`);
  }
  const last = p.events[p.events.length - 1];
  if (last) parts.push(`last: ${last.kind}`);
  return parts.join(', ');
}
