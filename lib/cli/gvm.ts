#!/usr/bin/env node
/**
 * gvm: the command-line controller. See docs/cli.md.
 *   exit 0: done; 1: a GvmError (printed as "gvm: <message> (<code>)"); 2: bad arguments (usage).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { GvmError, isGvmError } from '../errors';
import { Gvm, GvmGpu, GvmKey, GvmProcess, POLICY_CLASSES, PolicyClass } from '../index';
import { native } from '../native';
import { agentPath, packageRoot, shmDir, shmProblem } from '../paths';
import { isSortKey, runTop, SortKey } from '../top/top';
import { formatBytes, parseBytes } from '../units';

class UsageError extends Error {
  constructor(
    message: string,
    readonly command: string | undefined,
  ) {
    super(message);
  }
}

const USAGE: Record<string, string> = {
  main: `Usage: gvm <command> [options]

Commands:
  run [options] -- CMD [ARGS...]   run CMD with the gvm agent preloaded
  ps [--json]                      list the processes under gvm, one row per GPU
  get PID[:GPU] KEY [--json]       print one value of a process (see "gvm help get")
  set PID[:GPU] KEY VALUE          change a setting; waits until the agent applied it
  freeze PID[:GPU]                 stop the process's GPU work (every GPU when none is given)
  thaw PID[:GPU]                   let a frozen process run again
  debug rm PID[:GPU]               show the RM client, TSGs and channels the agent recorded
  top [--once] [--sort KEY]        a live view of every GPU and process (KEY: memory, rate, pid, priority)
  daemon [options]                 run gvmd: the GVM file tree over FUSE, Prometheus metrics and
                                   the policy file (--policy FILE, --check-policy FILE)
  help [COMMAND]                   show help for gvm or a command

Options:
  -h, --help      show this help
  -V, --version   print gvm's version
`,
  run: `Usage: gvm run [options] [--] CMD [ARGS...]

Runs CMD with the gvm agent (libgvm.so) prepended to LD_PRELOAD. Standard input and output are
shared; SIGINT, SIGTERM and SIGHUP are passed on to CMD; gvm exits with CMD's exit status (or
128 + the signal number that ended it).

Options:
  --memory-limit SIZE     device memory limit per GPU: bytes, or K/M/G/T (1K = 1024), KiB..TiB
  --memory-mode oom|swap  over the limit: fail the allocation (oom) or place it in host memory (swap)
  --swap-prewarm SIZE     swap mode: pin this much host memory ahead of need, so the first moves
                          out run at link speed (host memory creation is ~20x slower than a move)
  --priority N            compute priority 0..15, lower is more important (8: driver default;
                          15 for --class best-effort)
  --class CLASS           automatic policy: latency (publishes its bursts), best-effort (holds its
                          own work while a latency process on its GPU is busy), or none
  --idle-ms N             best-effort: resume once latency work has been idle N ms (default 3)
  --policy-action ACTION  best-effort: freeze (default) or throttle (shortest timeslice) while held
  --log LEVEL             agent log level: error, warn, info or debug

Environment: GVM_AGENT_PATH overrides the agent library to preload.
`,
  ps: `Usage: gvm ps [--json]

Lists the processes running under gvm, one row per process per GPU:
PID, USER, GPU (machine index), MEMORY (current / limit), SWAP, KERNELS (submitted), PENDING,
PRIO, STATE (starting, ready, frozen, disabled, exited) and COMMAND.

Options:
  --json   print a JSON array, one object per process per GPU, with full numbers
`,
  get: `Usage: gvm get PID[:GPU] KEY [--json]

Prints one value of process PID on GPU (a machine-wide index as in "gvm ps"; default: the
process's first GPU). Numbers are printed raw, for scripts.

Keys:
  memory.current        device bytes in use
  memory.limit          the limit in force (the GPU's size when unlimited)
  memory.swap.current   bytes of device allocations living in host memory
  memory.peak           the most device bytes ever in use
  memory.mode           oom or swap
  compute.priority      0..15
  compute.freeze        1 when frozen, else 0
  policy.class          none, latency or best-effort
  policy.stat           the policy's counters: bursts, holds, held_ms, chain_last_us, chain_max_us,
                        chain_p50_us, chain_p99_us, memory_lent, memory_waits, held
  policy.events         the last 16 policy decisions, oldest first ("ms_ago kind pid value")
  kernels.submitted     kernels launched
  kernels.ended         kernels known to have finished
  kernels.pending       submitted - ended
  gcgroup.stat          nr_submitted_kernels, nr_ended_kernels, nr_pending_kernels, then gvm's
                        own counters, one "name value" per line

Options:
  --json   print the value as JSON
`,
  set: `Usage: gvm set PID[:GPU] KEY VALUE

Changes a setting of process PID on GPU (default: every GPU of the process) and waits until the
agent inside the process applied it; the agent's answer is printed.

Keys:
  compute.priority N    0..15, lower is more important (8: the driver's default timeslice)
  compute.freeze 0|1    same as gvm thaw / gvm freeze
  memory.limit SIZE     bytes, or K/M/G/T (1K = 1024); at most the GPU's size
  memory.mode oom|swap  what happens past the limit
  policy.class CLASS    none, latency or best-effort (see gvm run --class)
`,
  top: `Usage: gvm top [--once] [--sort memory|rate|pid|priority]

A live view, refreshed every second, of every GPU and every process under gvm: memory (current
against the limit, swap beside), priority, frozen, kernels per second and pending.
A GPU with processes under the automatic policy gets a line naming each one's class, what the
policy did (bursts, holds, the hold chain's p99, memory lent) and its last decision; a best-effort
process the policy holds shows the state "held".
Keys: s cycles the sort, j/k or the arrows select a row, f freezes and t thaws the selected
process on that GPU, q quits. --once prints one frame and exits (for scripts).
`,
  freeze: `Usage: gvm freeze PID[:GPU]

Stops the process's GPU work on GPU (every GPU of the process when none is given). Returns once the
GPU has stopped running its kernels. CPU threads waiting on the GPU simply wait; nothing is lost.
`,
  thaw: `Usage: gvm thaw PID[:GPU]

Lets a frozen process run again.
`,
  debug: `Usage: gvm debug rm PID[:GPU]

Shows the NVIDIA RM objects the agent recorded for the process on GPU (default: its first GPU):
the RM client, device and subdevice handles, the channel groups (TSGs) with their engine
(compute/GR or copy/CE) and time slice, and the GPFIFO channels.
`,
  help: `Usage: gvm help [COMMAND]

Shows help for gvm, or for one of: run, ps, get, set, freeze, thaw, debug.
`,
};

const GET_KEYS = [
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
  'gcgroup.stat',
  'kernels.submitted',
  'kernels.ended',
  'kernels.pending',
] as const;
type GetKey = (typeof GET_KEYS)[number];

function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

function version(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Splits "--name=value" and takes "--name value" from the list; throws when the value is missing. */
function optionValue(args: string[], i: number, name: string, command: string): [string, number] {
  const arg = args[i]!;
  const eq = arg.indexOf('=');
  if (eq >= 0) return [arg.slice(eq + 1), i];
  if (i + 1 >= args.length) throw new UsageError(`${name} needs a value`, command);
  return [args[i + 1]!, i + 1];
}

function isHelp(arg: string): boolean {
  return arg === '-h' || arg === '--help';
}

// --- run -------------------------------------------------------------------------------------------

async function cmdRun(args: string[]): Promise<number> {
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
      case '--memory-limit': {
        [value, i] = optionValue(args, i, name, 'run');
        try {
          env.GVM_MEMORY_LIMIT = parseBytes(value).toString();
        } catch (e) {
          throw new UsageError(`--memory-limit: ${(e as Error).message}`, 'run');
        }
        break;
      }
      case '--memory-mode':
        [value, i] = optionValue(args, i, name, 'run');
        if (value !== 'oom' && value !== 'swap') throw new UsageError(`--memory-mode must be oom or swap, not '${value}'`, 'run');
        env.GVM_MEMORY_MODE = value;
        break;
      case '--swap-prewarm': {
        [value, i] = optionValue(args, i, name, 'run');
        let bytes: bigint;
        try {
          bytes = parseBytes(value);
        } catch (e) {
          throw new UsageError(`--swap-prewarm: ${(e as Error).message}`, 'run');
        }
        env.GVM_SWAP_PREWARM_MIB = ((bytes + (1n << 20n) - 1n) >> 20n).toString(); /* whole MiB, rounded up */
        break;
      }
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

/** A control block's size; a page when the addon cannot say (gvm run needs only the agent). */
function controlBlockBytes(): number {
  try {
    return native().layout().controlBlock?.sizeof ?? 4096;
  } catch {
    return 4096;
  }
}

// --- ps --------------------------------------------------------------------------------------------

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
    gpu: g === undefined ? null : g.snapshot(),
  };
}

function terminalWidth(): number | undefined {
  if (process.stdout.isTTY && process.stdout.columns > 0) return process.stdout.columns;
  const cols = Number(process.env.COLUMNS);
  return Number.isInteger(cols) && cols > 0 ? cols : undefined;
}

async function cmdPs(args: string[]): Promise<number> {
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

// --- get / debug -------------------------------------------------------------------------------------

function parseTarget(text: string | undefined, command: string): { pid: number; gpu?: number } {
  if (text === undefined) throw new UsageError('missing PID[:GPU]', command);
  const m = /^([1-9]\d*)(?::(\d+))?$/.exec(text);
  if (m === null || Number(m[1]) > 0x7fffffff) throw new UsageError(`bad PID[:GPU] '${text}'`, command);
  return m[2] === undefined ? { pid: Number(m[1]) } : { pid: Number(m[1]), gpu: Number(m[2]) };
}

function selectGpu(p: GvmProcess, index: number | undefined): GvmGpu {
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
  };
}

function policyEvents(g: GvmGpu): string {
  const now = process.hrtime.bigint(); // CLOCK_MONOTONIC, as the agent stamps them
  return g.policy.events.map((e) => `${(Number(now - e.ns) / 1e6).toFixed(1)} ${e.kind} ${e.pid} ${e.value}`).join('\n');
}

function getValue(g: GvmGpu, key: GetKey): number | string | Record<string, number> {
  if (key === 'policy.class') return g.policy.class;
  if (key === 'policy.stat') return policyStat(g);
  if (key === 'policy.events') return policyEvents(g);
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

async function cmdGet(args: string[]): Promise<number> {
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

// --- set / freeze / thaw -------------------------------------------------------------------------

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

async function cmdSet(args: string[]): Promise<number> {
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

async function cmdFreeze(args: string[], freeze: boolean): Promise<number> {
  const command = freeze ? 'freeze' : 'thaw';
  if (args.some(isHelp)) {
    out(USAGE[command]!);
    return 0;
  }
  if (args.length !== 1) throw new UsageError('expected PID[:GPU]', command);
  return applyTo(args[0], (g) => (freeze ? g.freeze() : g.thaw()), command);
}

const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

async function cmdDebug(args: string[]): Promise<number> {
  if (args.length === 0) throw new UsageError('missing a debug view (rm)', 'debug');
  if (isHelp(args[0]!)) {
    out(USAGE.debug!);
    return 0;
  }
  if (args[0] !== 'rm') throw new UsageError(`unknown debug view '${args[0]}'`, 'debug');
  if (args.length !== 2) throw new UsageError('expected: debug rm PID[:GPU]', 'debug');
  const target = parseTarget(args[1], 'debug');
  using p = await Gvm.process(target.pid);
  const g = selectGpu(p, target.gpu);
  const rm = g.rm();
  const lines = [
    `process ${p.pid} GPU ${g.index} (ordinal ${g.ordinal}, ${g.pciBusId || 'no PCI bus id'}, ${g.name || 'unnamed'})`,
    `RM fd ${rm.fd}  client ${hex(rm.client)}  device ${hex(rm.device)}  subdevice ${hex(rm.subdevice)}`,
    `TSGs: ${rm.tsgs.length}`,
  ];
  if (rm.tsgs.length > 0) {
    lines.push('  HANDLE      ENGINE              CHANNELS  PARENT      TIMESLICE');
    for (const t of rm.tsgs) {
      const engine = t.engineType === 1 ? 'compute (GR)' : `copy (CE, type ${t.engineType})`;
      const slice = t.timesliceUs === 0 ? 'unknown' : `${t.timesliceUs} us`;
      lines.push(`  ${hex(t.handle)}  ${engine.padEnd(18)}  ${String(t.channelCount).padStart(8)}  ${hex(t.parent)}  ${slice}`);
    }
  }
  lines.push(`channels: ${rm.channels.length}`);
  if (rm.channels.length > 0) {
    lines.push('  HANDLE      TSG         CLASS');
    for (const c of rm.channels) lines.push(`  ${hex(c.handle)}  ${hex(c.tsg)}  0x${c.classId.toString(16)}`);
  }
  out(lines.join('\n'));
  return 0;
}

// --- main --------------------------------------------------------------------------------------------

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case undefined:
        throw new UsageError('missing a command', undefined);
      case '-h':
      case '--help':
        out(USAGE.main!);
        return 0;
      case '-V':
      case '--version':
        out(version());
        return 0;
      case 'help': {
        const topic = rest[0];
        if (topic === undefined) out(USAGE.main!);
        else if (USAGE[topic] !== undefined && topic !== 'main') out(USAGE[topic]!);
        else throw new UsageError(`no help for '${topic}'`, undefined);
        return 0;
      }
      case 'run':
        return await cmdRun(rest);
      case 'ps':
        return await cmdPs(rest);
      case 'get':
        return await cmdGet(rest);
      case 'set':
        return await cmdSet(rest);
      case 'freeze':
        return await cmdFreeze(rest, true);
      case 'thaw':
        return await cmdFreeze(rest, false);
      case 'debug':
        return await cmdDebug(rest);
      case 'daemon':
        // loaded only here: gvmd pulls in prom-client and the FUSE module, which no other command needs
        return await (require('../daemon/gvmd') as typeof import('../daemon/gvmd.js')).main(rest);
      case 'top': {
        let once = false;
        let sort: SortKey = 'memory';
        for (let i = 0; i < rest.length; i++) {
          const a = rest[i]!;
          if (a === '--once') once = true;
          else if (a === '--sort') {
            const v = rest[++i];
            if (!isSortKey(v)) throw new UsageError(`--sort must be memory, rate, pid or priority, not '${v}'`, 'top');
            sort = v;
          } else if (isHelp(a)) {
            out(USAGE.top!);
            return 0;
          } else throw new UsageError(`unexpected argument '${a}'`, 'top');
        }
        return await runTop({ once, sort });
      }
      default:
        throw new UsageError(`unknown command '${command}'`, undefined);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`gvm: ${e.message}\n\n${USAGE[e.command ?? 'main']}`);
      return 2;
    }
    if (isGvmError(e)) {
      process.stderr.write(`gvm: ${e.message} (${e.code})\n`);
      return 1;
    }
    process.stderr.write(`gvm: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (status) => {
      process.exitCode = status;
    },
    (e: unknown) => {
      process.stderr.write(`gvm: ${String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
