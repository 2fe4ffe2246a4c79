/** gvm run: a command under the agent, its settings passed as the agent's environment. */
import { spawn } from 'node:child_process';
import * as os from 'node:os';

import { GvmError } from '../errors';
import { POLICY_CLASSES } from '../index';
import { controlBlockBytes } from '../native';
import { agentPath, shmDir, shmProblem } from '../paths';
import { parseBytes } from '../units';
import { isHelp, optionValue, out, USAGE, UsageError } from './common';

/** A size option's bytes; a usage error naming the option when the size is bad. */
function sizeOption(name: string, value: string): bigint {
  try {
    return parseBytes(value);
  } catch (e) {
    throw new UsageError(`${name}: ${(e as Error).message}`, 'run');
  }
}

export async function cmdRun(args: string[]): Promise<number> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  let i = 0;
  for (; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') {
      i++;
      break;
    }
    if (!arg.startsWith('-')) break;
    if (isHelp(arg)) {
      out(USAGE.run!);
      return 0;
    }
    const name = arg.split('=')[0]!;
    let value: string;
    switch (name) {
      case '--memory-limit':
        [value, i] = optionValue(args, i, name, 'run');
        env.GVM_MEMORY_LIMIT = sizeOption(name, value).toString();
        break;
      case '--memory-mode':
        [value, i] = optionValue(args, i, name, 'run');
        if (value !== 'oom' && value !== 'swap') throw new UsageError(`--memory-mode must be oom or swap, not '${value}'`, 'run');
        env.GVM_MEMORY_MODE = value;
        break;
      case '--swap-prewarm':
        [value, i] = optionValue(args, i, name, 'run');
        env.GVM_SWAP_PREWARM_MIB = ((sizeOption(name, value) + (1n << 20n) - 1n) >> 20n).toString(); /* whole MiB, rounded up */
        break;
      case '--priority':
        [value, i] = optionValue(args, i, name, 'run');
        if (!/^\d+$/.test(value) || Number(value) > 15) throw new UsageError(`--priority must be an integer 0..15, not '${value}'`, 'run');
        env.GVM_PRIORITY = String(Number(value));
        break;
      case '--class':
        [value, i] = optionValue(args, i, name, 'run');
        if (!(POLICY_CLASSES as readonly string[]).includes(value)) {
          throw new UsageError(`--class must be latency, best-effort or none, not '${value}'`, 'run');
        }
        env.GVM_CLASS = value;
        break;
      case '--idle-ms':
        [value, i] = optionValue(args, i, name, 'run');
        if (!/^\d+$/.test(value) || Number(value) > 10000) throw new UsageError(`--idle-ms must be an integer 0..10000, not '${value}'`, 'run');
        env.GVM_POLICY_IDLE_MS = String(Number(value));
        break;
      case '--policy-action':
        [value, i] = optionValue(args, i, name, 'run');
        if (value !== 'freeze' && value !== 'throttle') throw new UsageError(`--policy-action must be freeze or throttle, not '${value}'`, 'run');
        env.GVM_POLICY_ACTION = value;
        break;
      case '--log':
        [value, i] = optionValue(args, i, name, 'run');
        if (!['error', 'warn', 'info', 'debug'].includes(value)) {
          throw new UsageError(`--log must be error, warn, info or debug, not '${value}'`, 'run');
        }
        env.GVM_LOG = value;
        break;
      default:
        throw new UsageError(`unknown option ${name}`, 'run');
    }
  }
  const command = args.slice(i);
  if (command.length === 0) throw new UsageError('no command to run', 'run');
  /* best-effort work yields the GPU fastest with the shortest timeslice, unless told otherwise */
  if (env.GVM_CLASS === 'best-effort' && !args.slice(0, i).some((a) => a.split('=')[0] === '--priority')) env.GVM_PRIORITY = '15';

  const agent = agentPath();
  /* refused here rather than run uncontrolled: the user asked for control, and nothing has started yet */
  const problem = shmProblem(shmDir(), controlBlockBytes());
  if (problem !== undefined) {
    throw new GvmError(
      `cannot run ${command[0]} under gvm: its control block cannot be created (${problem}); ` +
        'free space there or point GVM_SHM_DIR at a writable tmpfs directory',
      'EGVM_IO',
    );
  }
  const preload = (env.LD_PRELOAD ?? '').split(/[: ]/).filter((p) => p !== '' && p !== agent);
  env.LD_PRELOAD = [agent, ...preload].join(':');

  return new Promise<number>((resolve) => {
    const child = spawn(command[0]!, command.slice(1), { stdio: 'inherit', env });
    const forward = (signal: NodeJS.Signals) => () => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    };
    const handlers: [NodeJS.Signals, () => void][] = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((s) => [s, forward(s)]);
    for (const [s, h] of handlers) process.on(s, h);
    const done = (status: number) => {
      for (const [s, h] of handlers) process.off(s, h);
      resolve(status);
    };
    child.on('error', (e: NodeJS.ErrnoException) => {
      process.stderr.write(`gvm: cannot run ${command[0]}: ${e.message}\n`);
      done(e.code === 'ENOENT' ? 127 : 126);
    });
    child.on('exit', (code, signal) => {
      if (signal !== null) done(128 + (os.constants.signals[signal] ?? 0));
      else done(code ?? 0);
    });
  });
}
