/** gvm set, freeze and thaw: settings applied by the process's agent, on one GPU or on every one. */
import { GvmError } from '../errors';
import { Gvm, GvmGpu, GvmKey, GvmProcess, POLICY_CLASSES, PolicyClass } from '../index';
import { parseBytes } from '../units';
import { isHelp, out, USAGE, UsageError } from './common';
import { parseTarget } from './get';

const SET_KEYS = ['compute.priority', 'compute.freeze', 'memory.limit', 'memory.mode', 'policy.class'] as const;

function targets(p: GvmProcess, index: number | undefined): GvmGpu[] {
  if (index !== undefined) return [p.gpuByIndex(index)];
  if (p.gpus.length === 0) throw new GvmError(`process ${p.pid} has no GPU yet (agent state: ${p.agentState})`, 'EGVM_NOT_FOUND');
  return p.gpus;
}

/** Parses VALUE for KEY before anything is sent, so a bad value changes nothing. */
function settingApplier(key: string, value: string, command: string): (g: GvmGpu) => Promise<{ message: string }> {
  switch (key) {
    case 'compute.priority': {
      if (!/^\d+$/.test(value) || Number(value) > 15) throw new UsageError(`compute.priority must be an integer 0..15, not '${value}'`, command);
      return (g) => g.setPriority(Number(value));
    }
    case 'compute.freeze':
      if (value !== '0' && value !== '1') throw new UsageError(`compute.freeze must be 0 or 1, not '${value}'`, command);
      return (g) => (value === '1' ? g.freeze() : g.thaw());
    case 'memory.limit': {
      let bytes: bigint;
      try {
        bytes = parseBytes(value);
      } catch (e) {
        throw new UsageError(`memory.limit: ${(e as Error).message}`, command);
      }
      return (g) => g.setMemoryLimit(bytes);
    }
    case 'memory.mode':
      if (value !== 'oom' && value !== 'swap') throw new UsageError(`memory.mode must be oom or swap, not '${value}'`, command);
      return (g) => g.command(GvmKey.MEMORY_MODE, value === 'swap' ? 1 : 0);
    case 'policy.class':
      if (!(POLICY_CLASSES as readonly string[]).includes(value)) {
        throw new UsageError(`policy.class must be latency, best-effort or none, not '${value}'`, command);
      }
      return (g) => g.setPolicyClass(value as PolicyClass);
    default:
      throw new UsageError(`unknown or read-only key '${key}'`, command);
  }
}

async function applyTo(targetText: string | undefined, apply: (g: GvmGpu) => Promise<{ message: string }>, command: string): Promise<number> {
  const target = parseTarget(targetText, command);
  using p = await Gvm.process(target.pid);
  for (const g of targets(p, target.gpu)) {
    const r = await apply(g);
    out(`${p.pid}:${g.index} ${r.message}`);
  }
  return 0;
}

export async function cmdSet(args: string[]): Promise<number> {
  if (args.some(isHelp)) {
    out(USAGE.set!);
    return 0;
  }
  if (args.length !== 3) throw new UsageError('expected PID[:GPU] KEY VALUE', 'set');
  const [targetText, key, value] = args as [string, string, string];
  if (!(SET_KEYS as readonly string[]).includes(key)) throw new UsageError(`unknown or read-only key '${key}'`, 'set');
  const apply = settingApplier(key, value, 'set');
  return applyTo(targetText, apply, 'set');
}

export async function cmdFreeze(args: string[], freeze: boolean): Promise<number> {
  const command = freeze ? 'freeze' : 'thaw';
  if (args.some(isHelp)) {
    out(USAGE[command]!);
    return 0;
  }
  if (args.length !== 1) throw new UsageError('expected PID[:GPU]', command);
  return applyTo(args[0], (g) => (freeze ? g.freeze() : g.thaw()), command);
}
