#!/usr/bin/env node
/**
 * gvmd: mounts GVM's file tree (processes/<pid>/<gpu>/memory.limit, ...) over FUSE and serves
 * Prometheus metrics. Settings live in the processes' control blocks, so gvmd can be restarted at any
 * time: nothing is lost and running processes do not notice. See docs/gvmd.md.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';

import { GvmError, isGvmError } from '../errors';
import { nativeFuse } from '../native';
import { shmDir } from '../paths';
import { createMetrics } from './metrics';

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

/** A mount left by a killed daemon answers ENOTCONN: detach it before mounting again. */
function clearStaleMount(dir: string): void {
  try {
    fs.statSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTCONN') {
      process.stderr.write(`gvmd: ${dir} is a stale mount from an earlier gvmd; detaching it\n`);
      spawnSync('fusermount3', ['-uz', dir]);
      spawnSync('umount', ['-l', dir]);
    }
  }
  fs.mkdirSync(dir, { recursive: true });
}

export async function runDaemon(options: DaemonOptions): Promise<() => Promise<void>> {
  clearStaleMount(options.mount);
  const mount = nativeFuse().mountTree(options.mount, options.shmDir, true);
  process.stderr.write(`gvmd: file tree mounted at ${options.mount} (control blocks in ${options.shmDir})\n`);
  let server: http.Server | null = null;
  if (options.metricsPort !== null) {
    const { registry, refresh } = createMetrics({ shmDir: options.shmDir });
    server = http.createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end('see /metrics\n');
        return;
      }
      refresh().then(() => registry.metrics()).then(
        (text) => res.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
        (e: unknown) => res.writeHead(500).end(`${String(e)}\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(options.metricsPort!, options.metricsHost, resolve);
    });
    const addr = server.address();
    const port = typeof addr === 'object' && addr ? addr.port : options.metricsPort;
    process.stderr.write(`gvmd: metrics on http://${options.metricsHost}:${port}/metrics\n`);
  }
  return async () => {
    if (server) await new Promise<void>((r) => server!.close(() => r()));
    nativeFuse().unmountTree(mount);
    process.stderr.write('gvmd: unmounted\n');
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
  try {
    const stop = await runDaemon(options);
    // FUSE serves from native threads, which do not keep Node's loop alive: a timer does
    const alive = setInterval(() => undefined, 1 << 30);
    await new Promise<void>((resolve) => {
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => resolve());
    });
    clearInterval(alive);
    await stop();
    return 0;
  } catch (e) {
    process.stderr.write(`gvmd: ${isGvmError(e) ? `${e.message} (${e.code})` : String(e)}\n`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => process.exit(code));
}
