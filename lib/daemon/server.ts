/** The Prometheus endpoint: GET /metrics on HOST:PORT, everything else 404. */
import * as http from 'node:http';

import { GvmError } from '../errors';
import { createMetrics } from './metrics';
import type { PolicyStats } from './policy-apply';

export interface MetricsServer {
  /** The port it listens on (the one picked when 0 was asked for). */
  readonly port: number;
  close(): Promise<void>;
}

export async function serveMetrics(host: string, port: number, shmDir: string, policy?: PolicyStats): Promise<MetricsServer> {
  const { registry, refresh } = createMetrics({ shmDir, policy });
  let scrape = Promise.resolve();
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' || url !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('gvmd serves /metrics\n');
      return;
    }
    // one scrape at a time: refresh() replaces the snapshot the collectors read
    scrape = scrape.then(() =>
      refresh()
        .then(() => registry.metrics())
        .then(
          (text) => void res.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
          (e: unknown) => void res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${String(e)}\n`),
        ),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(new GvmError(`cannot serve metrics on ${host}:${port}: ${e.code ?? e.message}`, 'EGVM_IO', { cause: e })),
    );
    server.listen(port, host, resolve);
  });
  const addr = server.address();
  return {
    port: typeof addr === 'object' && addr !== null ? addr.port : port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
