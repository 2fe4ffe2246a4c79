/** Facts about the machine: user names and the GPUs' machine-wide order. */
import * as fs from 'node:fs';

import { nvidiaGpusDir } from './paths';

let passwd: Map<number, string> | undefined;

/** The user name for a uid from /etc/passwd, or the uid as a string when it has none. */
export function userName(uid: number): string {
  if (passwd === undefined) {
    passwd = new Map();
    try {
      for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
        const fields = line.split(':');
        if (fields.length < 3) continue;
        const id = Number(fields[2]);
        if (Number.isInteger(id) && !passwd.has(id)) passwd.set(id, fields[0]!);
      }
    } catch {
      // no /etc/passwd: every user shows as a number
    }
  }
  return passwd.get(uid) ?? String(uid);
}

/** "0000:41:00.0", "00000000:41:00.0", "0000:4A:00.0" -> "0000:41:00.0"-style lowercase key. */
export function normalizePciBusId(id: string): string {
  const m = /^(?:([0-9a-f]+):)?([0-9a-f]+):([0-9a-f]+)\.([0-9a-f]+)$/i.exec(id.trim());
  if (m === null) return id.trim().toLowerCase();
  const hex = (s: string | undefined, width: number) => parseInt(s ?? '0', 16).toString(16).padStart(width, '0');
  return `${hex(m[1], 4)}:${hex(m[2], 2)}:${hex(m[3], 2)}.${hex(m[4], 1)}`;
}

/**
 * The machine's GPUs in nvidia-smi order: the PCI bus ids under /proc/driver/nvidia/gpus/, sorted.
 * Empty when the driver's directory is missing (no GPU, or not NVIDIA's driver).
 */
export function machineGpuOrder(): string[] {
  let entries: string[];
  try {
    entries = fs.readdirSync(nvidiaGpusDir());
  } catch {
    return [];
  }
  return entries
    .filter((e) => /^[0-9a-f]+:[0-9a-f]+:[0-9a-f]+\.[0-9a-f]+$/i.test(e))
    .map(normalizePciBusId)
    .sort();
}

/** The machine index of a GPU by PCI bus id, or undefined when the driver does not list it. */
export function machineGpuIndex(order: readonly string[], pciBusId: string): number | undefined {
  if (pciBusId === '') return undefined;
  const i = order.indexOf(normalizePciBusId(pciBusId));
  return i < 0 ? undefined : i;
}
