// The TypeScript library over blocks written by test/tools/make-block.c.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

import { Gvm, GvmError, GvmKey, GvmProcess } from '../lib/index';
import { blockFile, deadPid, liveBlock, makeBlock, serveBlock, startTime, tmpShm } from './helpers';

t.test('processes() lists live blocks and reads live values', async (t) => {
  const dir = tmpShm(t);
  const file = liveBlock(dir, process.pid, {
    'gpu1.present': 1,
    'gpu1.ordinal': 1,
    'gpu1.pci': '0000:01:00.0',
    'gpu1.ended': 5,
    'gpu1.submitted': 3,
  });
  fs.writeFileSync(path.join(dir, 'not-a-pid'), 'ignored');
  fs.writeFileSync(path.join(dir, `${process.pid}.tmp99`), 'ignored');
  const procs = await Gvm.processes({ shmDir: dir });
  t.teardown(() => procs.forEach((p) => p.close()));
  t.equal(procs.length, 1);
  const p = procs[0]!;
  t.type(p, GvmProcess);
  t.equal(p.pid, process.pid);
  t.equal(p.uid, os.userInfo().uid);
  t.equal(p.user, os.userInfo().username);
  t.equal(p.command, 'python train.py --epochs 3');
  t.equal(p.startTime, startTime(process.pid));
  t.equal(p.agentState, 'ready');
  t.equal(p.driverVersion, 13000);
  t.equal(p.agentVersion, 'make-block');
  t.type(p.heartbeatNs, 'bigint');
  t.type(p.createdAt, Date);
  t.equal(p.gpus.length, 2, 'present GPUs only');
  const g = p.gpu(0);
  t.equal(p.gpus[0], g, 'the same GPU object each time');
  t.equal(g.ordinal, 0);
  t.equal(g.index, 0, 'no NVIDIA driver here: the index falls back to the ordinal');
  t.equal(g.uuid, 'GPU-6b5e1a7c-2f3d-4e8f-9a0b-1c2d3e4f5a6b');
  t.equal(g.name, 'NVIDIA H100 80GB HBM3');
  t.equal(g.pciBusId, '0000:41:00.0');
  t.equal(g.totalBytes, 85899345920);
  t.same(g.memory, { current: 1073741824, limit: 8589934592, swapCurrent: 0, peak: 0, managed: 0, host: 0, mode: 'oom' });
  t.same(g.kernels, { submitted: 1000, ended: 990, pending: 10 });
  t.same(g.compute, { priority: 8, frozen: false, mode: 'none' });
  t.equal(g.contexts, 0);
  t.same(p.gpu(1).kernels, { submitted: 3, ended: 5, pending: 0 }, 'pending is never negative');
  t.throws(() => p.gpu(2), { code: 'EGVM_NOT_FOUND' });
  t.throws(() => p.gpu(-1), { code: 'EGVM_INVALID' });

  // Live: rewrite the block in place through a second mapping and read again (no caching).
  const writer = (await Gvm.process(process.pid, { shmDir: dir }))._handle();
  t.teardown(() => writer.close());
  makeBlockInPlace(file, 136, 2n * 1073741824n); // gpu[0] is at 4096; memory_current at +136
  t.equal(g.memory.current, 2 * 1073741824, 'getters read the mapping each time');
});

/** Writes one uint64 of a block file in place (the agent's side of a live update). */
function makeBlockInPlace(file: string, gpuOffset: number, value: bigint): void {
  const fd = fs.openSync(file, 'r+');
  const buf = Buffer.alloc(8);
  buf.writeBigUInt64LE(value);
  fs.writeSync(fd, buf, 0, 8, 4096 + gpuOffset);
  fs.closeSync(fd);
}

t.test('stale blocks are removed and skipped', async (t) => {
  const dir = tmpShm(t);
  const dead = deadPid();
  makeBlock(blockFile(dir, dead), { pid: dead, start_time: 12345 });
  // pid reuse: our own, live pid, but the block's start time is another process's.
  makeBlock(blockFile(dir, process.pid), { pid: process.pid, start_time: startTime(process.pid) + 1 });
  // a block whose pid field does not match its file name
  makeBlock(path.join(dir, '1'), { pid: process.pid, start_time: startTime(process.pid) });
  const procs = await Gvm.processes({ shmDir: dir });
  t.same(procs, []);
  t.same(fs.readdirSync(dir).sort(), [], 'all three were removed');

  makeBlock(blockFile(dir, dead), { pid: dead, start_time: 12345 });
  await t.rejects(Gvm.process(dead, { shmDir: dir }), { code: 'EGVM_NOT_FOUND', message: /stale/ });
  t.notOk(fs.existsSync(blockFile(dir, dead)), 'process() removes it too');
});

t.test('bad blocks are skipped by processes() and reported by process()', async (t) => {
  const dir = tmpShm(t);
  liveBlock(dir);
  const other = process.ppid;
  makeBlock(blockFile(dir, other), { pid: other, start_time: startTime(other), magic: 0 });
  const procs = await Gvm.processes({ shmDir: dir });
  t.equal(procs.length, 1);
  procs.forEach((p) => p.close());
  await t.rejects(Gvm.process(other, { shmDir: dir }), { code: 'EGVM_VERSION' });
  t.ok(fs.existsSync(blockFile(dir, other)), 'a bad block is not deleted');
});

t.test('process() errors', async (t) => {
  const dir = tmpShm(t);
  await t.rejects(Gvm.process(12345678, { shmDir: dir }), { code: 'EGVM_NOT_FOUND' });
  await t.rejects(Gvm.process(0, { shmDir: dir }), { code: 'EGVM_INVALID' });
  await t.rejects(Gvm.process(1.5, { shmDir: dir }), { code: 'EGVM_INVALID' });
  t.same(await Gvm.processes({ shmDir: path.join(dir, 'missing') }), [], 'no directory: no processes');
});

t.test('GVM_SHM_DIR is the default directory', async (t) => {
  const dir = tmpShm(t);
  liveBlock(dir);
  const saved = process.env.GVM_SHM_DIR;
  process.env.GVM_SHM_DIR = dir;
  t.teardown(() => {
    if (saved === undefined) delete process.env.GVM_SHM_DIR;
    else process.env.GVM_SHM_DIR = saved;
  });
  using p = await Gvm.process(process.pid);
  t.equal(p.pid, process.pid);
});

t.test('machine-wide GPU index from the driver\'s PCI list', async (t) => {
  const dir = tmpShm(t);
  const proc = fs.mkdtempSync(path.join(os.tmpdir(), 'gvm-nv-'));
  t.teardown(() => fs.rmSync(proc, { recursive: true, force: true }));
  for (const id of ['0000:c1:00.0', '0000:01:00.0', '0000:41:00.0', '0000:81:00.0']) fs.mkdirSync(path.join(proc, id));
  const saved = process.env.GVM_NVIDIA_PROC_DIR;
  process.env.GVM_NVIDIA_PROC_DIR = proc;
  t.teardown(() => {
    if (saved === undefined) delete process.env.GVM_NVIDIA_PROC_DIR;
    else process.env.GVM_NVIDIA_PROC_DIR = saved;
  });
  // CUDA_VISIBLE_DEVICES=3,1: ordinal 0 is the 4th GPU (0000:C1), ordinal 1 the 2nd (0000:41).
  liveBlock(dir, process.pid, { 'gpu0.pci': '0000:C1:00.0', 'gpu1.present': 1, 'gpu1.ordinal': 1, 'gpu1.pci': '00000000:41:00.0' });
  using p = await Gvm.process(process.pid, { shmDir: dir });
  t.same(p.gpus.map((g) => [g.ordinal, g.index]), [[0, 3], [1, 1]]);
  t.equal(p.gpuByIndex(3).ordinal, 0);
  t.throws(() => p.gpuByIndex(0), { code: 'EGVM_NOT_FOUND' });
});

t.test('commands map agent statuses to errors', async (t) => {
  const dir = tmpShm(t);
  const file = blockFile(dir, process.pid);
  await serveBlock(t, file, { pid: process.pid, start_time: startTime(process.pid), 'gpu0.present': 1 });
  const p = await Gvm.process(process.pid, { shmDir: dir });
  t.teardown(() => p.close());
  const g = p.gpu(0);
  t.type(await g.ping(), 'number');
  t.type(await p.ping(), 'number');
  t.match(await g.command(GvmKey.MEMORY_LIMIT, 1n << 30n), { status: 0 });
  t.equal(g.memory.limit, 2 ** 30);
  await t.rejects(g.command(GvmKey.COMPUTE_PRIORITY, 16), {
    code: 'EGVM_INVALID',
    status: 1,
    agentMessage: 'priority 16 out of range 0..15',
    message: /compute_priority 16: priority 16 out of range/,
  });
  await t.rejects(g.command(GvmKey.COMPUTE_FREEZE, 1), { code: 'EGVM_UNSUPPORTED', status: 2 });
  await t.rejects(p._command(GvmKey.MEMORY_LIMIT, 3, 1, {}), { code: 'EGVM_NOT_FOUND', status: 3 });
  await t.rejects(g.command(GvmKey.MEMORY_LIMIT, -1), { code: 'EGVM_INVALID' });
  await t.rejects(g.command(GvmKey.MEMORY_LIMIT, 1, { timeoutMs: -5 }), { code: 'EGVM_INVALID' });
  const err = await g.command(GvmKey.COMPUTE_FREEZE, 1).catch((e: unknown) => e);
  t.type(err, GvmError);
  t.match((err as Error).stack, /gvm\.test\.ts/, 'the stack reaches the caller');
});

t.test('EGVM_TIMEOUT when no agent answers', async (t) => {
  const dir = tmpShm(t);
  liveBlock(dir);
  using p = await Gvm.process(process.pid, { shmDir: dir });
  await t.rejects(p.gpu(0).ping({ timeoutMs: 100 }), { code: 'EGVM_TIMEOUT', status: 6 });
});

t.test('close and dispose', async (t) => {
  const dir = tmpShm(t);
  liveBlock(dir);
  let kept: GvmProcess;
  {
    using p = await Gvm.process(process.pid, { shmDir: dir });
    kept = p;
    t.equal(p.closed, false);
  }
  t.equal(kept.closed, true, 'using closes it');
  t.throws(() => kept.pid, { code: 'EGVM_CLOSED' });
  t.throws(() => kept.gpus, { code: 'EGVM_CLOSED' });
  kept.close();
});
