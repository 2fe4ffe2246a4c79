// The agent's kernel mode (cuda-intercept/src/kernel_mode.c) on the fake driver: with the
// nvidia-uvm tree present, cuMemAlloc and cuMemAllocPitch become managed allocations advised to
// prefer the device, accounting stays exact, and the settings the module owns are refused.
import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import t from 'tap';

import { Gvm, GvmKey, GvmProcess } from '../lib/index';
import { traceCalls } from './fake-prog';
import { RELEASE, ROOT, tmpShm } from './helpers';

const FAKE = path.join(ROOT, 'build', 'fake');
const AGENT = path.join(RELEASE, 'libgvm.so');
const FAKE_RM = path.join(FAKE, 'libgvmfakerm.so');

interface Counts {
  deviceBytes: number;
  managedBytes: number;
}
interface Run {
  pid: number;
  shm: string;
  ready: Counts;
  child: ChildProcessWithoutNullStreams;
  stderr: () => string;
  /** Sends a line and resolves with the counts of the next line starting with `prefix`. */
  ask: (line: string, prefix: string) => Promise<Counts>;
  /** How often the fake driver was called, by exported name. */
  calls: () => Map<string, number>;
}

/** Runs gvm-prog-direct basic under the agent; `tree`: whether <root>/processes exists. */
async function run(t: Tap.Test, tree: boolean, env: NodeJS.ProcessEnv = {}): Promise<Run> {
  const root = tmpShm(t);
  if (tree) fs.mkdirSync(path.join(root, 'processes'));
  const shm = tmpShm(t);
  const trace = path.join(tmpShm(t), 'trace');
  const child = spawn(path.join(FAKE, 'bin', 'gvm-prog-direct'), ['basic'], {
    env: {
      ...process.env,
      LD_PRELOAD: `${AGENT}:${FAKE_RM}`,
      LD_LIBRARY_PATH: FAKE,
      GVM_SHM_DIR: shm,
      GVM_DEBUGFS_ROOT: root,
      GVM_BACKEND: undefined,
      GVM_RM_ANY_DRIVER: '1',
      GVM_EVENT_INTERVAL_MS: '1',
      GVM_LOG: 'warn',
      FAKE_CUDA_TRACE: trace,
      ...env,
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  t.teardown(() => void child.kill('SIGKILL'));
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    lines.push(l);
    waiters.splice(0).forEach((w) => w());
  });
  const next = async (prefix: string, from: number): Promise<Counts> => {
    const deadline = Date.now() + 20000;
    for (;;) {
      const l = lines.slice(from).find((x) => x.startsWith(`${prefix} `));
      if (l !== undefined) return (JSON.parse(l.slice(prefix.length + 1)) as { gpus: Record<string, Counts> }).gpus['0']!;
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`no ${prefix}: ${lines.join(' | ')} ${stderr}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 200);
      });
    }
  };
  const ready = await next('READY', 0);
  return {
    pid: child.pid!,
    shm,
    ready,
    child,
    stderr: () => stderr,
    ask: (line, prefix) => {
      const mark = lines.length;
      child.stdin.write(`${line}\n`);
      return next(prefix, mark);
    },
    calls: () => traceCalls(trace),
  };
}

/** Polls until fn() holds (the agent publishes within milliseconds); false after 5 s. */
async function until(fn: () => boolean): Promise<boolean> {
  const end = Date.now() + 5000;
  while (!fn() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return fn();
}

t.before(() => {
  for (const f of [AGENT, FAKE_RM, path.join(FAKE, 'libcuda.so.1')]) {
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: run npm install (cmake-js builds it)`);
  }
});

/** The process's block, read through the agent backend (what a non-root user sees). */
async function block(t: Tap.Test, r: Run): Promise<GvmProcess> {
  const p = await Gvm.process(r.pid, { shmDir: r.shm, backend: 'agent' });
  t.teardown(() => p.close());
  return p;
}

t.test('with the tree: device allocations become managed and advised, accounting stays exact', async (t) => {
  const r = await run(t, true);
  const p = await block(t, r);
  t.equal(p.backend, 'kernel', 'the block records kernel mode');
  const g = p.gpu(0);
  t.ok(await until(() => g.memory.current === r.ready.deviceBytes), `memory.current ${g.memory.current} = ${r.ready.deviceBytes}`);
  t.equal(g.memory.managed, r.ready.managedBytes, "the program's own managed memory, counted apart");
  t.equal(g.memory.limit, g.totalBytes, 'the agent sets no limit of its own');
  t.equal(g.memory.mode, 'oom', 'the agent moves nothing itself');
  const calls = r.calls();
  t.equal(calls.get('cuMemAlloc_v2') ?? 0, 0, 'no plain cuMemAlloc reached the driver');
  t.equal(calls.get('cuMemAllocPitch_v2') ?? 0, 0, 'nor a plain pitch allocation');
  // basic: 3 x cuMemAlloc + 1 pitch become managed, beside the program's own managed allocation
  t.equal(calls.get('cuMemAllocManaged'), 5);
  t.equal(calls.get('cuMemAdvise_v2'), 4, 'each stand-in advised once');
  t.notMatch(r.stderr(), /cuMemAdvise|FAIL/, 'the fake accepted every advice (managed range, real device)');

  const freed = await r.ask('free', 'FREED');
  t.ok(await until(() => g.memory.current === freed.deviceBytes), 'exact after frees');
  t.equal(g.memory.current, 0);
  t.equal(r.calls().get('cuMemFree_v2'), 5, 'managed stand-ins are freed by cuMemFree');
  t.equal(g.allocations.failures, 0);
});

t.test('with the tree: settings the module owns are refused, naming its file', async (t) => {
  const r = await run(t, true);
  const p = await block(t, r);
  const g = p.gpu(0);
  const cases: [string, () => Promise<unknown>, RegExp][] = [
    ['memory.limit', () => g.setMemoryLimit(1 << 30), /processes\/\d+\/<gpu>\/memory\.limit$/],
    ['memory.mode', () => g.command(GvmKey.MEMORY_MODE, 1), /memory\.limit \(the module always swaps\)$/],
    ['compute.priority', () => g.setPriority(3), /compute\.priority$/],
    ['compute.freeze', () => g.freeze(), /compute\.freeze$/],
  ];
  for (const [what, send, file] of cases) {
    await t.rejects(send(), { code: 'EGVM_UNSUPPORTED', agentMessage: file }, what);
  }
  t.equal(g.compute.priority, 8, 'nothing applied');
  t.equal(g.compute.frozen, false);
  t.equal(g.memory.limit, g.totalBytes);
  t.ok((await g.ping()) >= 0, 'ping still answers');
});

t.test('without the tree, or with GVM_BACKEND=agent: nothing changes', async (t) => {
  for (const [tree, env] of [[false, {}], [true, { GVM_BACKEND: 'agent' }]] as const) {
    const r = await run(t, tree, env);
    const p = await block(t, r);
    t.equal(p.backend, 'agent');
    const g = p.gpu(0);
    t.ok(await until(() => g.memory.current === r.ready.deviceBytes));
    const calls = r.calls();
    t.equal(calls.get('cuMemAlloc_v2'), 3, 'plain allocations stay plain');
    t.equal(calls.get('cuMemAllocManaged'), 1, "only the program's own managed allocation");
    t.equal(calls.get('cuMemAdvise_v2') ?? 0, 0);
    await g.setMemoryLimit(1 << 30);
    t.equal(g.memory.limit, 1 << 30, 'the agent applies a limit itself');
  }
});

t.test('GVM_BACKEND=kernel without the tree: kernel mode, with a warning', async (t) => {
  const r = await run(t, false, { GVM_BACKEND: 'kernel' });
  const p = await block(t, r);
  t.equal(p.backend, 'kernel');
  t.match(r.stderr(), /GVM_BACKEND=kernel but .*processes is missing/);
  t.equal(r.calls().get('cuMemAllocManaged'), 5);
});
