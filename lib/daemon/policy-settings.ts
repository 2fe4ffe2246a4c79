/**
 * What a policy rule's `apply` means on one GPU: the settings it can give (each read, sent through the
 * library's command path and named as `gvm set` names it), and a share of memory worked out in bytes.
 */
import { GvmCommandOptions, GvmCommandResult, GvmGpu, GvmKey, MemoryMode, PolicyClass } from '../index';
import { formatBytes } from '../units';
import { PolicyApply } from './policy-file';

/** The settings a rule can give, by their `gvm set` names. */
export type SettingKey = 'class' | 'priority' | 'memory.mode' | 'memory.limit';
export type SettingValue = PolicyClass | number | MemoryMode | bigint;

/** How gvmd reads, sends and names one setting. */
export interface Setting {
  key: SettingKey;
  read(g: GvmGpu): SettingValue;
  send(g: GvmGpu, v: SettingValue, o: GvmCommandOptions): Promise<GvmCommandResult>;
  show(v: SettingValue): string;
  /** memory.limit in swap mode answers once the moves are done: the agent allows them 30 s */
  minTimeoutMs: number;
}

/** In the order they are applied (and logged). */
export const SETTINGS: readonly Setting[] = [
  {
    key: 'class',
    read: (g) => g.policy.class,
    send: (g, v, o) => g.setPolicyClass(v as PolicyClass, o),
    show: (v) => `class ${String(v)}`,
    minTimeoutMs: 0,
  },
  {
    key: 'priority',
    read: (g) => g.compute.priority,
    send: (g, v, o) => g.setPriority(v as number, o),
    show: (v) => `priority ${String(v)}`,
    minTimeoutMs: 0,
  },
  {
    key: 'memory.mode',
    read: (g) => g.memory.mode,
    send: (g, v, o) => g.command(GvmKey.MEMORY_MODE, v === 'swap' ? 1 : 0, o),
    show: (v) => `memory.mode ${String(v)}`,
    minTimeoutMs: 0,
  },
  {
    key: 'memory.limit',
    read: (g) => BigInt(g.memory.limit),
    send: (g, v, o) => g.setMemoryLimit(v as bigint, o),
    show: (v) => `memory.limit ${formatBytes(v as bigint)}`,
    minTimeoutMs: 35000,
  },
];

/** A rule's apply worked out for one GPU. */
export interface ResolvedApply {
  values: Map<SettingKey, SettingValue>;
  /** how a value came about, for the log ("40% of 80 GiB") */
  notes: Map<SettingKey, string>;
  /** settings the rule gives that cannot be resolved on this GPU */
  errors: string[];
}

/** The values a rule's apply gives on a GPU of totalBytes (0: unknown): a share of memory in bytes. */
export function resolveApply(apply: PolicyApply, totalBytes: number): ResolvedApply {
  const w: ResolvedApply = { values: new Map(), notes: new Map(), errors: [] };
  if (apply.class !== undefined) w.values.set('class', apply.class);
  if (apply.priority !== undefined) w.values.set('priority', apply.priority);
  if (apply.memoryMode !== undefined) w.values.set('memory.mode', apply.memoryMode);
  const limit = apply.memoryLimit;
  if (limit !== undefined) {
    const total = BigInt(Math.max(0, Math.floor(totalBytes)));
    if (limit.kind === 'percent') {
      if (total === 0n) {
        w.errors.push(`memory.limit ${limit.percent}%: the GPU's size is unknown`);
      } else {
        // in millionths of a percent, so the arithmetic stays in exact integers
        const bytes = (total * BigInt(Math.round(limit.percent * 1e6))) / 100_000_000n;
        w.values.set('memory.limit', bytes > 0n ? bytes : 1n);
        w.notes.set('memory.limit', `${limit.percent}% of ${formatBytes(total)}`);
      }
    } else if (total > 0n && limit.bytes > total) {
      w.values.set('memory.limit', total);
      w.notes.set('memory.limit', `the GPU's size; the rule asks for ${formatBytes(limit.bytes)}`);
    } else {
      w.values.set('memory.limit', limit.bytes);
    }
  }
  return w;
}
