/** What every gvm command shares: usage texts, the usage error, option parsing, output. */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { packageRoot } from '../paths';

export class UsageError extends Error {
  constructor(
    message: string,
    readonly command: string | undefined,
  ) {
    super(message);
  }
}

export const USAGE: Record<string, string> = {
  main: `Usage: gvm <command> [options]

Commands:
  run [options] -- CMD [ARGS...]   run CMD with the gvm agent preloaded
  ps [--json]                      list the processes under gvm, one row per GPU
  get PID[:GPU] KEY [--json]       print one value of a process (see "gvm help get")
  set PID[:GPU] KEY VALUE          change a setting; waits until the agent applied it
  freeze PID[:GPU]                 stop the process's GPU work (every GPU when none is given)
  thaw PID[:GPU]                   let a frozen process run again
  debug rm PID[:GPU]               show the RM client, TSGs and channels the agent recorded
  doctor [--json]                  check what gvm can do on this machine (driver, MPS, containers...)
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
                        chain_p50_us, chain_p99_us, memory_lent, memory_waits, held, and the
                        chain's parts: chain_wake_*, chain_lock_*, chain_rm_* (see policy.chain.*)
  policy.events         the last 16 policy decisions, oldest first ("ms_ago kind pid value")
  policy.chain          best-effort: the hold chains (a burst's first launch to this process held)
                        by 100-us bucket, "from_us count" per non-empty bucket; the last is open
  policy.chain.wake     the same for the wake part (the burst's first launch until this process's
                        policy thread acted)
  policy.chain.rm       the same for the RM part (this process's disable + preempt controls)
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
  doctor: `Usage: gvm doctor [--json]

Checks what gvm can do on this machine and says what to do about what it cannot: the agent and the
addon, the NVIDIA driver (priority and the hardware freeze need a driver whose RM controls gvm
verified, 525..580; else freeze holds launches in software), the GPUs and libcuda, the control block
directory, a container's PID namespace, an MPS daemon (its clients get the software freeze only),
gvmd's FUSE needs, the backend and whose processes are visible. One line per finding: ok, info,
warn or fail, with a fix under each warn and fail. Exit status 1 when a check failed (processes
would run without gvm's control), else 0.
`,
  help: `Usage: gvm help [COMMAND]

Shows help for gvm, or for one of: run, ps, get, set, freeze, thaw, debug, doctor.
`,
};

export function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

export function version(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Splits "--name=value" and takes "--name value" from the list; throws when the value is missing. */
export function optionValue(args: string[], i: number, name: string, command: string): [string, number] {
  const arg = args[i]!;
  const eq = arg.indexOf('=');
  if (eq >= 0) return [arg.slice(eq + 1), i];
  if (i + 1 >= args.length) throw new UsageError(`${name} needs a value`, command);
  return [args[i + 1]!, i + 1];
}

export function isHelp(arg: string): boolean {
  return arg === '-h' || arg === '--help';
}
