// Shared by the test files: paths of the built artefacts, temporary block directories, the
// gvm-make-block tool (test/tools/make-block.c) and the built CLI.
import { ChildProcess, spawn, spawnSync, SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';

export const ROOT = path.resolve(__dirname, '..');
export const RELEASE = path.join(ROOT, 'build', 'Release');
export const MAKE_BLOCK = path.join(RELEASE, 'gvm-make-block');
export const NOOP_PRELOAD = path.join(RELEASE, 'libgvm-test-noop.so');
export const CLI = path.join(ROOT, 'dist', 'cli', 'gvm.js');
export const DIST = path.join(ROOT, 'dist', 'index.js');
export const GVMD = path.join(ROOT, 'dist', 'daemon', 'gvmd.js');

interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

/**
 * The block file of `pid`, a process of this test's own PID namespace: "<pid>", or "<pid>@<pid
 * namespace inode>" when the tests run inside a container (include/gvm/control_block.h).
 */
const OWN_PID_NS = fs.statSync('/proc/self/ns/pid').ino;
export function blockFile(dir: string, pid: number): string {
  return path.join(dir, OWN_PID_NS === 0xeffffffc ? String(pid) : `${pid}@${OWN_PID_NS}`);
}

/** A fresh block directory (mode 0755, so other users may look in), removed after the test. */
export function tmpShm(t: Teardown): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gvm-test-'));
  fs.chmodSync(dir, 0o755);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The params bytes of one line of the fake RM's log (FAKE_RM_LOG), e.g. a disable-channels control's. */
export function rmLogParams(line: string | undefined): Buffer {
  return Buffer.from(/params=([0-9a-f]+)/i.exec(line ?? '')?.[1] ?? '', 'hex');
}

/** /proc/<pid>/stat field 22, as the agent records it. */
export function startTime(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
}

/** A pid that existed a moment ago and has exited (reaped). */
export function deadPid(): number {
  const r = spawnSync('true');
  if (r.pid === undefined) throw new Error('cannot spawn true');
  return r.pid;
}

/** Runs gvm-make-block; fields like "gpu0.present=1". Throws on failure. */
export function makeBlock(file: string, fields: Record<string, string | number> = {}): void {
  const args = [file, ...Object.entries(fields).map(([k, v]) => `${k}=${v}`)];
  const r = spawnSync(MAKE_BLOCK, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`gvm-make-block ${args.join(' ')} failed: ${r.stderr}${r.error ?? ''}`);
}

/** A block for a live process (ours by default) with one present GPU and typical values. */
export function liveBlock(dir: string, pid = process.pid, extra: Record<string, string | number> = {}): string {
  const file = blockFile(dir, pid);
  makeBlock(file, {
    pid,
    start_time: startTime(pid),
    gpu_count: 1,
    cmdline: 'python train.py --epochs 3',
    'gpu0.present': 1,
    'gpu0.name': 'NVIDIA H100 80GB HBM3',
    'gpu0.pci': '0000:41:00.0',
    'gpu0.uuid': '6b5e1a7c2f3d4e8f9a0b1c2d3e4f5a6b',
    'gpu0.total': 85899345920,
    'gpu0.limit': 8589934592,
    'gpu0.current': 1073741824,
    'gpu0.submitted': 1000,
    'gpu0.ended': 990,
    'gpu0.priority': 8,
    ...extra,
  });
  return file;
}

/** Starts gvm-make-block --serve (a stand-in agent); resolves once it waits for commands. */
export async function serveBlock(t: Teardown, file: string, fields: Record<string, string | number>): Promise<ChildProcess> {
  const args = [file, ...Object.entries(fields).map(([k, v]) => `${k}=${v}`), '--serve'];
  const child = spawn(MAKE_BLOCK, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGTERM');
  });
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('ready\n')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`gvm-make-block --serve exited with ${code}`)));
    child.on('error', reject);
  });
  return child;
}

export interface Daemon {
  child: ChildProcess;
  port: number;
  log: string[];
}

/**
 * Starts gvmd (or `gvm daemon` with viaCli) mounting the file tree at mount over the blocks in shm, on
 * a free metrics port; resolves once it serves. Stopped and unmounted when the test ends.
 */
export async function startDaemon(t: Teardown, mount: string, shm: string, viaCli = false): Promise<Daemon> {
  const args = ['--mount', mount, '--shm-dir', shm, '--metrics-port', '0'];
  const child = spawn(process.execPath, viaCli ? [CLI, 'daemon', ...args] : [GVMD, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const log: string[] = [];
  const port = await new Promise<number>((resolve, reject) => {
    readline.createInterface({ input: child.stderr! }).on('line', (l) => {
      log.push(l);
      const m = /metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(l);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', (code) => reject(new Error(`gvmd exited ${code}: ${log.join(' | ')}`)));
    setTimeout(() => reject(new Error(`gvmd did not start: ${log.join(' | ')}`)), 15000);
  });
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.on('exit', r));
    }
    spawnSync('fusermount3', ['-uz', mount]);
  });
  return { child, port, log };
}

/** Runs the built CLI synchronously. */
export function gvm(args: string[], env: NodeJS.ProcessEnv = {}, input?: string): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    input,
    timeout: 30000,
  });
}

/** Runs a small CommonJS script in a fresh node (for GC, worker and other-user checks). */
export function nodeScript(code: string, options: { args?: string[]; env?: NodeJS.ProcessEnv } = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [...(options.args ?? []), '-e', code], {
    encoding: 'utf8',
    env: { ...process.env, ...options.env },
    timeout: 60000,
  });
}

/**
 * Starts a program of the fake driver (build/fake) under the real agent, scenario "basic"; resolves
 * with its pid and device bytes once it printed READY. It waits on stdin ("exit" ends it).
 */
export function startFakeAgent(
  t: Teardown,
  shm: string,
  env: NodeJS.ProcessEnv = { GVM_RM_ANY_DRIVER: '1' },
): Promise<{ pid: number; child: ChildProcess; deviceBytes: number }> {
  const fake = path.join(ROOT, 'build', 'fake');
  const child = spawn(path.join(fake, 'bin', 'gvm-prog-direct'), ['basic'], {
    env: {
      ...process.env,
      LD_PRELOAD: `${path.join(RELEASE, 'libgvm.so')}:${path.join(fake, 'libgvmfakerm.so')}`,
      LD_LIBRARY_PATH: fake,
      GVM_SHM_DIR: shm,
      ...env,
    },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const line = buf.split('\n').find((l) => l.startsWith('READY '));
      if (!line) return;
      const r = JSON.parse(line.slice(6)) as { pid: number; gpus: Record<string, { deviceBytes: number }> };
      resolve({ pid: r.pid, child, deviceBytes: r.gpus['0']?.deviceBytes ?? 0 });
    });
    child.on('exit', (c) => reject(new Error(`fake agent program exited ${c}`)));
  });
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A strict parser of the Prometheus text exposition format (0.0.4): throws on any malformed line. */
export function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      if (m[1] === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(m[3]!)) throw new Error(`bad TYPE: ${line}`);
        types.set(m[2]!, m[3]!);
      }
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+]+|NaN|[+-]Inf)$/.exec(line);
    if (!m) throw new Error(`malformed sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/g;
      let consumed = 0;
      for (let l = re.exec(m[3]); l; l = re.exec(m[3])) {
        labels[l[1]!] = l[2]!;
        consumed += l[0].length;
      }
      if (consumed !== m[3].length) throw new Error(`malformed labels: ${line}`);
    }
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return { samples, types };
}
