#!/usr/bin/env node
/**
 * gvmd: mounts GVM's file tree (processes/<pid>/<gpu>/memory.limit, ...) over FUSE and serves
 * Prometheus metrics. Settings live in the processes' control blocks, so gvmd can be restarted at any
 * time: nothing is lost and running processes do not notice. See docs/gvmd.md.
 */
import { GvmError, isGvmError } from '../errors';
import { shmDir } from '../paths';
import { prepareMountPoint } from './mountpoint';
import { MetricsServer, serveMetrics } from './server';
import { mountTree } from './tree';

export const USAGE = `Usage: gvmd [--mount DIR] [--shm-dir DIR] [--metrics-host HOST] [--metrics-port N | --no-metrics]

Mounts the gvm file tree at DIR (default /run/gvm) and serves Prometheus metrics on
http://HOST:N/metrics (default 127.0.0.1:9400). Runs as root so every user's processes appear; each
process's files belong to its user, and only that user and root may write them.
`;

export interface DaemonOptions {
  mount: string;
  shmDir: string;
  metricsHost: string;
  metricsPort: number | null;
}

export function parseArgs(args: string[]): DaemonOptions {
  const o: DaemonOptions = { mount: '/run/gvm', shmDir: shmDir(), metricsHost: '127.0.0.1', metricsPort: 9400 };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = (): string => {
      const v = args[++i];
      if (v === undefined) throw new GvmError(`${a} needs a value`, 'EGVM_INVALID');
      return v;
    };
    if (a === '--mount') o.mount = value();
    else if (a === '--shm-dir') o.shmDir = value();
    else if (a === '--metrics-host') o.metricsHost = value();
    else if (a === '--metrics-port') {
      const v = value();
      if (!/^\d+$/.test(v) || Number(v) > 65535) throw new GvmError(`--metrics-port must be 0..65535, not '${v}'`, 'EGVM_INVALID');
      o.metricsPort = Number(v);
    } else if (a === '--no-metrics') o.metricsPort = null;
    else throw new GvmError(`unknown option ${a}`, 'EGVM_INVALID');
  }
  return o;
}

/** A running daemon; stop() closes the metrics server and unmounts the tree. */
export interface Daemon {
  metricsPort: number | null;
  stop(): Promise<void>;
}

/** Log lines go to standard error (the journal under systemd). */
export function log(line: string): void {
  process.stderr.write(`gvmd: ${line}\n`);
}

export async function runDaemon(options: DaemonOptions): Promise<Daemon> {
  prepareMountPoint(options.mount, log);
  const tree = mountTree(options.mount, options.shmDir, log);
  log(`file tree mounted at ${options.mount} (control blocks in ${options.shmDir})`);
  let metrics: MetricsServer | null = null;
  if (options.metricsPort !== null) {
    try {
      metrics = await serveMetrics(options.metricsHost, options.metricsPort, options.shmDir);
    } catch (e) {
      tree.unmount();
      throw e;
    }
    log(`metrics on http://${options.metricsHost}:${metrics.port}/metrics`);
  }
  return {
    metricsPort: metrics?.port ?? null,
    async stop(): Promise<void> {
      await metrics?.close();
      tree.unmount();
      log(`unmounted ${options.mount}`);
    },
  };
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
  // listen before mounting, so a signal at any time ends in a clean unmount
  let requestStop: () => void = () => undefined;
  const stopRequested = new Promise<void>((resolve) => (requestStop = resolve));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => requestStop());
  try {
    const daemon = await runDaemon(options);
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
