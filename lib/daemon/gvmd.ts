#!/usr/bin/env node
/**
 * gvmd: mounts GVM's file tree (processes/<pid>/<gpu>/memory.limit, ...) over FUSE, serves
 * Prometheus metrics and, with --policy, applies a policy file's rules to every new process. Settings
 * live in the processes' control blocks, so gvmd can be restarted at any time: nothing is lost and
 * running processes do not notice. See docs/gvmd.md.
 */
import { GvmError, isGvmError } from '../errors';
import { shmDir } from '../paths';
import { prepareMountPoint } from './mountpoint';
import { PolicyEngine } from './policy-apply';
import { formatPolicy, loadPolicy, permissionWarning, Policy } from './policy-file';
import { UserDb } from './policy-match';
import { MetricsServer, serveMetrics } from './server';
import { mountTree, MountedTree } from './tree';

export const USAGE = `Usage: gvmd [--mount DIR | --no-mount] [--shm-dir DIR] [--metrics-host HOST] [--metrics-port N | --no-metrics]
            [--policy FILE]
       gvmd --check-policy FILE

Mounts the gvm file tree at DIR (default /run/gvm) and serves Prometheus metrics on
http://HOST:N/metrics (default 127.0.0.1:9400). Runs as root so every user's processes appear; each
process's files belong to its user, and only that user and root may write them.

--policy FILE        apply FILE's rules (class, priority, memory limit) to every process under the
                     agent as it appears; SIGHUP reads FILE again (an invalid file keeps the old rules)
--check-policy FILE  check FILE and print its rules; exit 0 when valid, 2 when not (no mount, no root)
--no-mount           no file tree (metrics and the policy only; no FUSE needed)
SIGINT and SIGTERM unmount and exit.
`;

export interface DaemonOptions {
  /** null: --no-mount */
  mount: string | null;
  shmDir: string;
  metricsHost: string;
  metricsPort: number | null;
  /** --policy FILE */
  policy: string | null;
  /** --check-policy FILE: check, print and exit */
  checkPolicy: string | null;
}

export function parseArgs(args: string[]): DaemonOptions {
  const o: DaemonOptions = {
    mount: '/run/gvm',
    shmDir: shmDir(),
    metricsHost: '127.0.0.1',
    metricsPort: 9400,
    policy: null,
    checkPolicy: null,
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = (): string => {
      const v = args[++i];
      if (v === undefined) throw new GvmError(`${a} needs a value`, 'EGVM_INVALID');
      return v;
    };
    if (a === '--mount') o.mount = value();
    else if (a === '--no-mount') o.mount = null;
    else if (a === '--shm-dir') o.shmDir = value();
    else if (a === '--metrics-host') o.metricsHost = value();
    else if (a === '--metrics-port') {
      const v = value();
      if (!/^\d+$/.test(v) || Number(v) > 65535) throw new GvmError(`--metrics-port must be 0..65535, not '${v}'`, 'EGVM_INVALID');
      o.metricsPort = Number(v);
    } else if (a === '--no-metrics') o.metricsPort = null;
    else if (a === '--policy') o.policy = value();
    else if (a === '--check-policy') o.checkPolicy = value();
    else throw new GvmError(`unknown option ${a}`, 'EGVM_INVALID');
  }
  return o;
}

/** A running daemon; stop() ends the policy engine, closes the metrics server and unmounts the tree. */
export interface Daemon {
  metricsPort: number | null;
  /** SIGHUP: reads the policy file again (false when there is none, or it is invalid) */
  reload(): boolean;
  stop(): Promise<void>;
}

/** Log lines go to standard error (the journal under systemd). */
export function log(line: string): void {
  process.stderr.write(`gvmd: ${line}\n`);
}

/** `policy` is the file named by options.policy, already read and checked (see main). */
export async function runDaemon(options: DaemonOptions, policy?: Policy): Promise<Daemon> {
  let tree: MountedTree | null = null;
  if (options.mount !== null) {
    prepareMountPoint(options.mount, log);
    tree = mountTree(options.mount, options.shmDir, log);
    log(`file tree mounted at ${options.mount} (control blocks in ${options.shmDir})`);
  }
  let engine: PolicyEngine | null = null;
  let metrics: MetricsServer | null = null;
  try {
    if (options.policy !== null) {
      engine = PolicyEngine.start({ file: options.policy, policy, shmDir: options.shmDir, log });
    }
    if (options.metricsPort !== null) {
      metrics = await serveMetrics(options.metricsHost, options.metricsPort, options.shmDir, engine?.stats);
      log(`metrics on http://${options.metricsHost}:${metrics.port}/metrics`);
    }
  } catch (e) {
    engine?.stop();
    tree?.unmount();
    throw e;
  }
  return {
    metricsPort: metrics?.port ?? null,
    reload(): boolean {
      if (engine === null) {
        log('SIGHUP: no --policy file to read again; nothing changes');
        return false;
      }
      return engine.reload();
    },
    async stop(): Promise<void> {
      engine?.stop();
      await metrics?.close();
      if (tree !== null) {
        tree.unmount();
        log(`unmounted ${options.mount}`);
      } else {
        log('stopped');
      }
    },
  };
}

/** An error on standard error, each of its lines prefixed (a policy file's problems are one a line). */
function printError(e: unknown): void {
  const text = e instanceof Error ? e.message : String(e);
  process.stderr.write(text.split('\n').map((l) => `gvmd: ${l}\n`).join(''));
}

/** gvmd --check-policy FILE: 0 and the rules on stdout when valid, else 2 and why on stderr. */
export function checkPolicy(file: string): number {
  try {
    const users = new UserDb();
    const policy = loadPolicy(file);
    const writable = permissionWarning(file);
    process.stdout.write(formatPolicy(policy, (name) => users.uid(name), writable === undefined ? [] : [writable]));
    return 0;
  } catch (e) {
    printError(e);
    return 2;
  }
}

export async function main(args: string[]): Promise<number> {
  if (args.includes('-h') || args.includes('--help')) {
    process.stdout.write(USAGE);
    return 0;
  }
  let options: DaemonOptions;
  try {
    options = parseArgs(args);
  } catch (e) {
    process.stderr.write(`gvmd: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (options.checkPolicy !== null) return checkPolicy(options.checkPolicy);
  // an invalid policy file is refused like any other bad option, before anything is mounted
  let policy: Policy | undefined;
  if (options.policy !== null) {
    try {
      policy = loadPolicy(options.policy);
    } catch (e) {
      printError(e);
      return 2;
    }
  }
  // listen before mounting, so a signal at any time ends in a clean unmount (or a reload, once running)
  let requestStop: () => void = () => undefined;
  const stopRequested = new Promise<void>((resolve) => (requestStop = resolve));
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => requestStop());
  let daemon: Daemon | undefined;
  let hangup = false;
  process.on('SIGHUP', () => {
    if (daemon !== undefined) daemon.reload();
    else hangup = true; // still starting: reload once running
  });
  try {
    daemon = await runDaemon(options, policy);
    if (hangup) daemon.reload();
    // FUSE serves from native threads, which do not keep Node's loop alive: a timer does
    const alive = setInterval(() => undefined, 1 << 30);
    await stopRequested;
    clearInterval(alive);
    await daemon.stop();
    return 0;
  } catch (e) {
    log(isGvmError(e) ? `${e.message} (${e.code})` : String(e));
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => process.exit(code));
}
