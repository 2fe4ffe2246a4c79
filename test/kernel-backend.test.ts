// The kernel backend (lib/backend/kernel.ts) against a fake nvidia-uvm tree in a temporary
// directory: detection, every file read, writes and their text, refusals that write nothing,
// vanished processes, permissions, the UUID -> machine index mapping, and the CLI on top.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

import { Gvm, GvmKey } from '../lib/index';
import { CLI, deadPid, gvm, liveBlock, tmpShm } from './helpers';

const UUID0 = 'GPU-fa4eca1d-0000-0000-0000-000000000000';
const UUID1 = 'GPU-fa4eca1d-0000-0000-0000-000000000001';
const UUID2 = 'GPU-fa4eca1d-0000-0000-0000-000000000002';

type GpuFiles = Partial<Record<'uuid' | 'memory.limit' | 'memory.current' | 'memory.swap.current' | 'compute.priority' | 'compute.freeze' | 'gcgroup.stat', string>>;

/** A fake module tree: <root>/processes/ (mode 0755 so another user may look in). */
function fakeTree(t: Tap.Test): string {
  const root = tmpShm(t);
  fs.mkdirSync(path.join(root, 'processes'), { mode: 0o755 });
  return root;
}

function stat(s: Record<string, number>): string {
  return Object.entries(s).map(([k, v]) => `${k} ${v}\n`).join('');
}

/** Adds processes/<pid>/<uvm>/ with the module's files (typical values unless given). */
function addGpu(root: string, pid: number, uvm: number, files: GpuFiles = {}): string {
  const dir = path.join(root, 'processes', String(pid), String(uvm));
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const all: Required<GpuFiles> = {
    uuid: `${UUID0}\n`,
    'memory.limit': '8589934592\n',
    'memory.current': '1073741824\n',
    'memory.swap.current': '2097152\n',
    'compute.priority': '8\n',
    'compute.freeze': '0\n',
    'gcgroup.stat': stat({
      nr_submitted_kernels: 500, nr_ended_kernels: 480, nr_pending_kernels: 20, memory_current: 1073741824,
      memory_limit: 8589934592, memory_swap_current: 2097152, priority: 8, frozen: 0,
    }),
    ...files,
  };
  for (const [name, text] of Object.entries(all)) fs.writeFileSync(path.join(dir, name), text, { mode: 0o644 });
  return dir;
}

const read = (dir: string, file: string) => fs.readFileSync(path.join(dir, file), 'utf8');

/** Everything a GPU directory holds, to prove a refused write changed nothing. */
const contents = (dir: string) => Object.fromEntries(fs.readdirSync(dir).sort().map((f) => [f, read(dir, f)]));

/** Sets environment variables for one test and puts them back after it. */
function withEnv(t: Tap.Test, vars: Record<string, string | undefined>): void {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) delete process.env[k];
      else process.env[k] = x;
    }
  };
  set(vars);
  t.teardown(() => set(before));
}

/** A child that lives until the test ends (a second live pid). */
function sleeper(t: Tap.Test): number {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => void child.kill('SIGKILL'));
  return child.pid!;
}

t.beforeEach((t) => {
  // no GPU list of this machine, and no stray settings from the environment
  withEnv(t, { GVM_NVIDIA_PROC_DIR: '/nonexistent', GVM_BACKEND: undefined, GVM_DEBUGFS_ROOT: undefined });
});

t.test('detection: the tree present and writable means kernel; options and GVM_BACKEND override', async (t) => {
  const root = fakeTree(t);
  const shm = tmpShm(t);
  t.equal(await Gvm.detectBackend({ debugfsRoot: root }), 'kernel');
  t.equal(await Gvm.detectBackend({ debugfsRoot: path.join(root, 'missing') }), 'agent');
  const flat = tmpShm(t);
  fs.writeFileSync(path.join(flat, 'processes'), '');
  t.equal(await Gvm.detectBackend({ debugfsRoot: flat }), 'agent', 'processes must be a directory');
  t.equal(await Gvm.detectBackend({ debugfsRoot: root, backend: 'agent' }), 'agent');
  t.equal(await Gvm.detectBackend({ debugfsRoot: flat, backend: 'kernel' }), 'kernel');
  await t.rejects(Gvm.detectBackend({ backend: 'cgroup' as 'auto' }), { code: 'EGVM_INVALID' });

  withEnv(t, { GVM_DEBUGFS_ROOT: root });
  t.equal(Gvm.backend, 'kernel', 'Gvm.backend follows GVM_DEBUGFS_ROOT');
  process.env.GVM_BACKEND = 'agent';
  t.equal(Gvm.backend, 'agent', 'GVM_BACKEND=agent wins');
  addGpu(root, process.pid, 0);
  t.same((await Gvm.processes({ shmDir: shm })).map((p) => p.backend), [], 'agent backend: no blocks, nothing listed');
  process.env.GVM_BACKEND = 'auto';
  const procs = await Gvm.processes({ shmDir: shm });
  t.teardown(() => procs.forEach((p) => p.close()));
  t.same(procs.map((p) => [p.pid, p.backend]), [[process.pid, 'kernel']]);
});

t.test('every file is read; values stay until refresh()', async (t) => {
  const root = fakeTree(t);
  const shm = tmpShm(t);
  const dir0 = addGpu(root, process.pid, 0, { 'compute.priority': '3\n', 'compute.freeze': '1\n' });
  addGpu(root, process.pid, 1, {
    uuid: `${UUID1}\n`,
    'memory.limit': '4294967296\n',
    'memory.current': '0\n',
    'memory.swap.current': '0\n',
    'gcgroup.stat': stat({ nr_submitted_kernels: 7, nr_ended_kernels: 7, nr_pending_kernels: 0 }),
  });
  fs.mkdirSync(path.join(root, 'processes', 'not-a-pid'));
  const procs = await Gvm.processes({ shmDir: shm, debugfsRoot: root });
  t.teardown(() => procs.forEach((p) => p.close()));
  t.equal(procs.length, 1);
  const p = procs[0]!;
  t.equal(p.backend, 'kernel');
  t.equal(p.pid, process.pid);
  t.equal(p.uid, os.userInfo().uid, 'uid from /proc');
  t.equal(p.user, os.userInfo().username);
  t.equal(p.command, fs.readFileSync('/proc/self/cmdline', 'utf8').split('\0').filter(Boolean).join(' ').slice(0, 511));
  t.equal(p.agentState, 'ready');
  t.equal(p.gpuCount, 2);
  t.equal(p.gpus.length, 2);
  const g = p.gpu(0);
  t.equal(g.uuid, UUID0);
  t.equal(g.ordinal, 0, 'the ordinal is the module index');
  t.equal(g.index, 0, 'no agent block or driver list knows the UUID: the module index');
  t.same(g.memory, { current: 1073741824, limit: 8589934592, swapCurrent: 2097152, peak: 1073741824, managed: 0, host: 0, mode: 'swap' });
  t.same(g.compute, { priority: 3, frozen: true, mode: 'kernel' });
  t.same(g.kernels, { submitted: 500, ended: 480, pending: 20 });
  t.same(p.gpu(1).memory.limit, 4294967296);
  t.same(p.gpu(1).kernels, { submitted: 7, ended: 7, pending: 0 });
  t.same(g.rm(), { fd: -1, client: 0, device: 0, subdevice: 0, tsgs: [], channels: [] }, 'no agent: no RM view');

  fs.writeFileSync(path.join(dir0, 'memory.current'), '2147483648\n');
  t.equal(g.memory.current, 1073741824, 'a getter returns the last reading');
  await p.refresh();
  t.equal(g.memory.current, 2147483648, 'refresh() reads the files again');

  fs.writeFileSync(path.join(dir0, 'memory.limit'), 'lots\n');
  await t.rejects(p.refresh(), { code: 'EGVM_IO' }, 'a file that is not a number is an I/O error');
});

t.test('writes land in the files with the right text', async (t) => {
  const root = fakeTree(t);
  const dir = addGpu(root, process.pid, 0);
  using p = await Gvm.process(process.pid, { shmDir: tmpShm(t), debugfsRoot: root });
  const g = p.gpu(0);
  const r = await g.setMemoryLimit(4n << 30n);
  t.equal(read(dir, 'memory.limit'), '4294967296\n');
  t.match(r.message, /limit set/);
  t.equal(g.memory.limit, 4294967296, 'the GPU is read again after a write');
  await g.setPriority(15);
  t.equal(read(dir, 'compute.priority'), '15\n');
  t.equal(g.compute.priority, 15);
  await g.setPriority(0);
  t.equal(read(dir, 'compute.priority'), '0\n');
  t.match((await g.freeze()).message, /^frozen in [\d.]+ ms/);
  t.equal(read(dir, 'compute.freeze'), '1\n');
  t.equal(g.compute.frozen, true);
  await g.thaw();
  t.equal(read(dir, 'compute.freeze'), '0\n');
  const before = contents(dir);
  t.match((await g.command(GvmKey.MEMORY_MODE, 1)).message, /always swaps/, 'memory.mode swap: nothing to do');
  await t.rejects(g.command(GvmKey.MEMORY_MODE, 0), { code: 'EGVM_UNSUPPORTED' }, 'memory.mode oom: unsupported');
  t.ok((await g.ping()) >= 0);
  t.same(contents(dir), before, 'neither memory.mode nor ping wrote anything');
});

t.test('bad values are refused before anything is written', async (t) => {
  const root = fakeTree(t);
  const shm = tmpShm(t);
  const dir = addGpu(root, process.pid, 0);
  const other = addGpu(root, process.pid, 1, { uuid: `${UUID1}\n` });
  // an agent block of this process knows GPU 0's size (80 GiB); nobody knows GPU 1's
  liveBlock(shm, process.pid, { 'gpu0.uuid': 'fa4eca1d000000000000000000000000' });
  using p = await Gvm.process(process.pid, { shmDir: shm, debugfsRoot: root });
  const g = p.gpu(0);
  t.equal(g.totalBytes, 85899345920, 'size from the agent block with the same UUID');
  const before = contents(dir);
  for (const v of [16, -1, 1.5, Number.NaN]) await t.rejects(g.setPriority(v), { code: 'EGVM_INVALID' }, `priority ${v}`);
  for (const v of [0, -1, 0.5, 85899345921, 1n << 64n]) await t.rejects(g.setMemoryLimit(v), { code: 'EGVM_INVALID' }, `limit ${v}`);
  await t.rejects(g.command(GvmKey.COMPUTE_FREEZE, 2), { code: 'EGVM_INVALID' });
  await t.rejects(g.command(GvmKey.COMPUTE_PRIORITY, 16), { code: 'EGVM_INVALID' });
  await t.rejects(g.command(GvmKey.MEMORY_LIMIT, 85899345921), { code: 'EGVM_INVALID' }, 'the block checks too');
  await t.rejects(g.command(99, 1), { code: 'EGVM_INVALID' });
  t.same(contents(dir), before, 'nothing written');
  const g1 = p.gpu(1);
  t.equal(g1.totalBytes, 0, 'unknown size');
  const before1 = contents(other);
  await t.rejects(g1.setMemoryLimit(1n << 63n), { code: 'EGVM_INVALID' }, 'unknown size: at most 2^63-1');
  t.same(contents(other), before1);
  await g1.setMemoryLimit((1n << 63n) - 1n);
  t.equal(read(other, 'memory.limit'), '9223372036854775807\n', 'the module judges the rest');
});

t.test('a vanished process is EGVM_NOT_FOUND; dead pids are not listed', async (t) => {
  const root = fakeTree(t);
  const shm = tmpShm(t);
  const pid = sleeper(t);
  addGpu(root, pid, 0);
  const dead = deadPid();
  addGpu(root, dead, 0);
  const procs = await Gvm.processes({ shmDir: shm, debugfsRoot: root });
  t.teardown(() => procs.forEach((p) => p.close()));
  t.same(procs.map((p) => p.pid), [pid], 'a directory whose pid has no /proc entry is skipped');
  await t.rejects(Gvm.process(dead, { shmDir: shm, debugfsRoot: root }), { code: 'EGVM_NOT_FOUND' });
  await t.rejects(Gvm.process(deadPid(), { shmDir: shm, debugfsRoot: root }), { code: 'EGVM_NOT_FOUND' }, 'no directory, no block');
  const p = procs[0]!;
  fs.rmSync(path.join(root, 'processes', String(pid)), { recursive: true });
  await t.rejects(p.gpu(0).setPriority(1), { code: 'EGVM_NOT_FOUND' }, 'a write after the process left');
  t.notOk(fs.existsSync(path.join(root, 'processes', String(pid))), 'the write created nothing');
  await t.rejects(p.refresh(), { code: 'EGVM_NOT_FOUND' });
  p.close();
  t.throws(() => p.gpu(0), { code: 'EGVM_CLOSED' });
});

t.test('a file we may not write is EGVM_PERMISSION, and stays unchanged', async (t) => {
  const root = fakeTree(t);
  const dir = addGpu(root, process.pid, 0);
  if (process.getuid?.() !== 0) {
    // an ordinary user: a read-only file refuses its owner too
    fs.chmodSync(path.join(dir, 'compute.priority'), 0o444);
    using p = await Gvm.process(process.pid, { shmDir: tmpShm(t), debugfsRoot: root });
    await t.rejects(p.gpu(0).setPriority(1), { code: 'EGVM_PERMISSION' });
    t.equal(read(dir, 'compute.priority'), '8\n');
    return;
  }
  // root writes any file regardless of its mode: ask as nobody instead (the files are root's 0644,
  // as the module's are), through the CLI with the backend forced (nobody cannot write the root)
  // env -i: tap adds its process-info hook to children's environment, which nobody cannot write
  const vars = [`PATH=${process.env.PATH}`, 'GVM_BACKEND=kernel', `GVM_DEBUGFS_ROOT=${root}`, `GVM_SHM_DIR=${tmpShm(t)}`, 'GVM_NVIDIA_PROC_DIR=/nonexistent'];
  const asNobody = ['setpriv', '--reuid', '65534', '--regid', '65534', '--clear-groups', process.execPath, CLI];
  const r = spawnSync('env', ['-i', ...vars, ...asNobody, 'set', `${process.pid}:0`, 'compute.priority', '1'], { encoding: 'utf8', timeout: 30000 });
  if (r.stderr.includes('Cannot find module') || r.error !== undefined) {
    t.skip(`nobody cannot run the CLI here: ${r.stderr || String(r.error)}`);
    return;
  }
  t.equal(r.status, 1, 'exit 1: a gvm error');
  t.match(r.stderr, /permission denied.*\(EGVM_PERMISSION\)/);
  t.equal(read(dir, 'compute.priority'), '8\n');
});

t.test('UUID -> machine index: agent blocks, then the driver list, else the module index', async (t) => {
  const root = fakeTree(t);
  const shm = tmpShm(t);
  const nv = tmpShm(t);
  for (const [bus, uuid, model] of [['0000:41:00.0', UUID1, 'NVIDIA H100'], ['0000:c1:00.0', UUID0, 'NVIDIA H200']] as const) {
    fs.mkdirSync(path.join(nv, bus));
    fs.writeFileSync(path.join(nv, bus, 'information'), `Model: \t\t ${model}\nIRQ:   \t\t 42\nGPU UUID: \t ${uuid}\nBus Location: \t ${bus}\n`);
  }
  withEnv(t, { GVM_NVIDIA_PROC_DIR: nv });
  addGpu(root, process.pid, 0, { uuid: `${UUID0}\n` });
  addGpu(root, process.pid, 1, { uuid: `${UUID1}\n` });
  addGpu(root, process.pid, 2, { uuid: `${UUID2}\n` });
  // another process's agent block names UUID0's bus and size (and disagrees on the name: blocks win)
  const other = sleeper(t);
  liveBlock(shm, other, { 'gpu0.uuid': 'fa4eca1d000000000000000000000000', 'gpu0.pci': '0000:C1:00.0' });
  using p = await Gvm.process(process.pid, { shmDir: shm, debugfsRoot: root });
  const [a, b, c] = [p.gpu(0), p.gpu(1), p.gpu(2)];
  t.same([a.index, a.pciBusId, a.name, a.totalBytes], [1, '0000:C1:00.0', 'NVIDIA H100 80GB HBM3', 85899345920], 'from an agent block');
  t.same([b.index, b.pciBusId, b.name, b.totalBytes], [0, '0000:41:00.0', 'NVIDIA H100', 0], 'from the driver list');
  t.same([c.index, c.pciBusId], [2, ''], 'unknown UUID: the module index');
  t.equal(p.gpuByIndex(1), a);
});

t.test('an agent in kernel mode: its counters fill what the module reports as 0; agent-only processes stay', async (t) => {
  const root = fakeTree(t);
  const shm = tmpShm(t);
  addGpu(root, process.pid, 0, { 'gcgroup.stat': stat({ nr_submitted_kernels: 0, nr_ended_kernels: 0, nr_pending_kernels: 0 }) });
  addGpu(root, process.pid, 1, { uuid: `${UUID1}\n` });
  liveBlock(shm, process.pid, {
    backend: 1, 'gpu0.uuid': 'fa4eca1d000000000000000000000000', 'gpu0.peak': 5368709120, 'gpu0.contexts': 1,
    'gpu1.present': 1, 'gpu1.ordinal': 1, 'gpu1.uuid': 'fa4eca1d000000000000000000000001', 'gpu1.submitted': 3,
  });
  const agentOnly = sleeper(t);
  liveBlock(shm, agentOnly);
  const procs = await Gvm.processes({ shmDir: shm, debugfsRoot: root });
  t.teardown(() => procs.forEach((p) => p.close()));
  t.same(procs.map((p) => [p.pid, p.backend]).sort(), [[process.pid, 'kernel'], [agentOnly, 'agent']].sort());
  const p = procs.find((x) => x.pid === process.pid)!;
  t.equal(p.command, 'python train.py --epochs 3', 'identity from the agent block');
  t.equal(p.agentVersion, 'make-block');
  t.same(p.gpu(0).kernels, { submitted: 1000, ended: 990, pending: 10 }, 'the agent counted kernels the module did not');
  t.same(p.gpu(1).kernels, { submitted: 500, ended: 480, pending: 20 }, 'the module counted: its numbers');
  t.equal(p.gpu(0).memory.peak, 5368709120);
  t.equal(p.gpu(0).memory.current, 1073741824, 'memory from the module');
  t.equal(p.gpu(0).contexts, 1);
  t.equal(p.gpu(0).rm().fd, 0, "the RM view is the agent's");
  p.close();
  t.throws(() => p.gpu(0), { code: 'EGVM_CLOSED' });
  // an agent block that says kernel mode, read through the agent backend, still says so
  using viaAgent = await Gvm.process(process.pid, { shmDir: shm, backend: 'agent' });
  t.equal(viaAgent.backend, 'kernel');
});

t.test('the CLI on the kernel backend: ps, get, set, freeze, thaw', async (t) => {
  const root = fakeTree(t);
  const dir = addGpu(root, process.pid, 0);
  const env = { GVM_DEBUGFS_ROOT: root, GVM_SHM_DIR: tmpShm(t), GVM_NVIDIA_PROC_DIR: '/nonexistent', COLUMNS: '200' };
  const pid = String(process.pid);

  const ps = gvm(['ps'], env);
  t.equal(ps.status, 0, ps.stderr);
  t.match(ps.stdout, new RegExp(`^\\s*${pid}\\s+\\S+\\s+0\\s+1 GiB / 8 GiB\\s+2 MiB\\s+500\\s+20\\s+8\\s+ready\\s`, 'm'));
  const rows = JSON.parse(gvm(['ps', '--json'], env).stdout) as Array<Record<string, unknown>>;
  t.match(rows, [{ pid: process.pid, backend: 'kernel', gpu: { uuid: UUID0, memory: { mode: 'swap' }, compute: { mode: 'kernel' } } }]);

  const get = (key: string, ...more: string[]) => gvm(['get', pid, key, ...more], env);
  t.equal(get('memory.limit').stdout, '8589934592\n');
  t.equal(get('memory.swap.current').stdout, '2097152\n');
  t.equal(get('memory.mode').stdout, 'swap\n');
  t.equal(get('compute.freeze').stdout, '0\n');
  t.match(get('gcgroup.stat').stdout, /^nr_submitted_kernels 500\nnr_ended_kernels 480\nnr_pending_kernels 20\nmemory_current 1073741824\n/);

  const set = gvm(['set', `${pid}:0`, 'memory.limit', '4G'], env);
  t.equal(set.status, 0, set.stderr);
  t.match(set.stdout, new RegExp(`^${pid}:0 limit set`));
  t.equal(read(dir, 'memory.limit'), '4294967296\n');
  t.equal(gvm(['set', pid, 'compute.priority', '12'], env).status, 0);
  t.equal(read(dir, 'compute.priority'), '12\n');
  const frozen = gvm(['freeze', pid], env);
  t.match(frozen.stdout, new RegExp(`^${pid}:0 frozen in`));
  t.equal(read(dir, 'compute.freeze'), '1\n');
  t.match(gvm(['ps'], env).stdout, /\sfrozen\s/);
  t.equal(gvm(['thaw', pid], env).status, 0);
  t.equal(read(dir, 'compute.freeze'), '0\n');

  const before = contents(dir);
  const bad = gvm(['set', pid, 'compute.priority', '16'], env);
  t.equal(bad.status, 2, 'a bad value is a usage error');
  const oom = gvm(['set', pid, 'memory.mode', 'oom'], env);
  t.equal(oom.status, 1);
  t.match(oom.stderr, /always swaps \(EGVM_UNSUPPORTED\)/);
  t.equal(gvm(['set', pid, 'memory.mode', 'swap'], env).status, 0);
  t.same(contents(dir), before, 'refused and no-op settings wrote nothing');
  const gone = gvm(['get', String(deadPid()), 'memory.current'], env);
  t.equal(gone.status, 1);
  t.match(gone.stderr, /EGVM_NOT_FOUND/);
});
