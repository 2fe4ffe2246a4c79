// A program of the fake driver (build/fake/bin) under the real agent, driven line by line over stdin.
import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';

import { RELEASE, ROOT } from './helpers';

export const FAKE = path.join(ROOT, 'build', 'fake');
export const AGENT = path.join(RELEASE, 'libgvm.so');
export const FAKE_RM = path.join(FAKE, 'libgvmfakerm.so');

interface GpuCounts {
  deviceBytes: number;
  managedBytes: number;
  hostBytes: number;
  kernels: number;
}
export interface Report {
  pid: number;
  role?: string;
  gpus: Record<string, GpuCounts>;
}

interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
  comment(...args: unknown[]): void;
}

export class Prog {
  readonly lines: string[] = [];
  stderr = '';
  #waiters: Array<() => void> = [];
  readonly exited: Promise<number | null>;
  constructor(readonly child: ChildProcessWithoutNullStreams) {
    readline.createInterface({ input: child.stdout }).on('line', (l) => {
      this.lines.push(l);
      this.#waiters.splice(0).forEach((w) => w());
    });
    this.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    child.on('exit', () => this.#waiters.splice(0).forEach((w) => w()));
  }
  /** The next line (after index `from`) starting with prefix; rejects after 20 s or at exit. */
  async line(prefix: string, from = 0): Promise<string> {
    const deadline = Date.now() + 20000;
    for (;;) {
      const found = this.lines.slice(from).find((l) => l.startsWith(prefix));
      if (found !== undefined) return found;
      if (this.child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`no '${prefix}' line; got: ${this.lines.join(' | ')} ${this.stderr}`);
      }
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 200);
      });
    }
  }
  async report(prefix: string, from = 0): Promise<Report> {
    const l = await this.line(prefix, from);
    return JSON.parse(l.slice(prefix.length + 1)) as Report;
  }
  send(cmd: string): number {
    const mark = this.lines.length;
    this.child.stdin.write(`${cmd}\n`);
    return mark;
  }
  /** Sends a command and waits for its answer line. */
  async ask(cmd: string, prefix: string): Promise<string> {
    return this.line(prefix, this.send(cmd));
  }
}

/** The environment of a fake-driver program: the fake libcuda and RM, the agent unless agent=false. */
export function fakeEnv(shm: string, extra: NodeJS.ProcessEnv = {}, agent = true): NodeJS.ProcessEnv {
  return {
    ...process.env,
    LD_PRELOAD: agent ? `${AGENT}:${FAKE_RM}` : FAKE_RM,
    LD_LIBRARY_PATH: FAKE,
    GVM_SHM_DIR: shm,
    GVM_EVENT_INTERVAL_MS: '1',
    GVM_LOG: 'warn',
    ...extra,
  };
}

/** Starts build/fake/bin/NAME; it is killed when the test ends (its stderr shown if it said FAIL). */
export function spawnFake(t: Teardown, name: string, args: string[], env: NodeJS.ProcessEnv): Prog {
  const child = spawn(path.join(FAKE, 'bin', name), args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
  const prog = new Prog(child);
  child.stderr.on('data', (d: Buffer) => (prog.stderr += d.toString()));
  t.teardown(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await prog.exited;
    if (prog.stderr.includes('FAIL')) t.comment(`stderr of ${name} ${args.join(' ')}: ${prog.stderr}`);
  });
  return prog;
}

export function start(t: Teardown, shm: string, binder: string, scenario: string, env: NodeJS.ProcessEnv = {}): Prog {
  return spawnFake(t, `gvm-prog-${binder}`, scenario.split(' '), fakeEnv(shm, env));
}

/** Polls until fn() is true (the event thread publishes every few ms); false after 5 s. */
export async function until(fn: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (fn()) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return fn();
}

/** How often the fake driver was called, by exported name, from a FAKE_CUDA_TRACE file (empty before it exists). */
export function traceCalls(trace: string): Map<string, number> {
  const m = new Map<string, number>();
  if (!fs.existsSync(trace)) return m;
  for (const name of fs.readFileSync(trace, 'utf8').split('\n')) if (name) m.set(name, (m.get(name) ?? 0) + 1);
  return m;
}
