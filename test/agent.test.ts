// The real agent (build/Release/libgvm.so) inside programs running on the fake driver
// (build/fake), observed and driven through the TypeScript API: every way of reaching the driver,
// threads, fork, exit and cleanup, the RM observer, and compute control through the fake RM.
import { ChildProcessWithoutNullStreams, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

import { Gvm, GvmKey, GvmProcess } from '../lib/index';
import { AGENT, FAKE, FAKE_RM, fakeEnv, Prog, Report, start, until } from './fake-prog';
import { blockFile, gvm, RELEASE, rmLogParams, ROOT, tmpShm } from './helpers';

const BINDERS = ['direct', 'dlsym', 'procaddr'] as const;

/** Control blocks in a shm dir (named by pid; the policy boards live in boards/). */
const blocks = (shm: string) => fs.readdirSync(shm).filter((f) => /^\d+(@\d+)?$/.test(f));

function expectCounts(t: Tap.Test, p: GvmProcess, report: Report, what: string): Promise<void> {
  return (async () => {
    for (const [ordinal, want] of Object.entries(report.gpus)) {
      const g = p.gpu(Number(ordinal));
      await until(() => g.kernels.submitted === want.kernels && g.kernels.pending === 0);
      t.equal(g.memory.current, want.deviceBytes, `${what}: GPU ${ordinal} memory.current exact`);
      t.equal(g.memory.managed, want.managedBytes, `${what}: GPU ${ordinal} managed bytes`);
      t.equal(g.memory.host, want.hostBytes, `${what}: GPU ${ordinal} host bytes`);
      t.equal(g.kernels.submitted, want.kernels, `${what}: GPU ${ordinal} kernels submitted`);
      t.equal(g.kernels.ended, want.kernels, `${what}: GPU ${ordinal} every kernel seen ended`);
    }
  })();
}

t.before(() => {
  for (const f of [AGENT, FAKE_RM, path.join(FAKE, 'libcuda.so.1')]) {
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: run npm install (cmake-js builds it)`);
  }
});

for (const binder of BINDERS) {
  t.test(`${binder}: counts, frees and exit seen through the TypeScript API`, async (t) => {
    const shm = tmpShm(t);
    const prog = start(t, shm, binder, 'basic');
    const ready = await prog.report('READY');
    const p = await Gvm.process(ready.pid, { shmDir: shm });
    t.teardown(() => p.close());
    t.equal(p.agentState, 'ready');
    t.equal(p.gpuCount, 2, 'both fake GPUs visible');
    t.match(p.command, /gvm-prog-/);
    await expectCounts(t, p, ready, 'after work');
    t.ok(p.gpu(0).contexts >= 1, 'a live context on GPU 0');
    t.equal(p.gpu(1).kernels.submitted, 0, 'nothing on GPU 1');
    const mark = prog.send('free');
    const freed = await prog.report('FREED', mark);
    await until(() => p.gpu(0).memory.current === freed.gpus['0']!.deviceBytes);
    await expectCounts(t, p, freed, 'after free');
    t.ok(p.gpu(0).memory.peak >= ready.gpus['0']!.deviceBytes, 'peak kept the high-water mark');
    prog.send('exit');
    t.equal(await prog.exited, 0, 'program exits cleanly under the agent');
    t.notOk(fs.existsSync(blockFile(shm, ready.pid)), 'block removed at exit');
  });
}

t.test('threads: 8 threads allocating, freeing and launching at once', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'procaddr', 'threads');
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  await expectCounts(t, p, ready, 'threads');
  t.equal(p.gpu(0).allocations.count - p.gpu(0).allocations.frees, 8 * (50 / 5), 'live allocations: every 5th of 50 per thread');
});

t.test('pending kernels while the GPU is held, exact once it drains', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'hold');
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  const want = ready.gpus['0']!.kernels;
  t.ok(await until(() => g.kernels.submitted === want), 'submitted counted at launch');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(g.kernels.ended, 0, 'nothing ended while the GPU is held');
  t.equal(g.kernels.pending, want, 'all pending');
  const mark = prog.send('release');
  await prog.line('RELEASED', mark);
  t.ok(await until(() => g.kernels.pending === 0), 'pending drops to 0 once the GPU ran them');
  t.equal(g.kernels.ended, want);
});

t.test('multigpu: per-GPU accounting', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'multigpu');
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  await expectCounts(t, p, ready, 'multigpu');
  t.not(p.gpu(0).rm().client, 0);
  t.not(p.gpu(0).rm().subdevice, p.gpu(1).rm().subdevice, 'each GPU has its own subdevice');
});

t.test('fork before cuInit: parent and child each get their own block', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'fork-before');
  await prog.line('READY');
  await until(() => prog.lines.filter((l) => l.startsWith('READY')).length === 2);
  const reports = prog.lines.filter((l) => l.startsWith('READY')).map((l) => JSON.parse(l.slice(6)) as Report);
  t.equal(reports.length, 2);
  t.not(reports[0]!.pid, reports[1]!.pid);
  for (const r of reports) {
    using p = await Gvm.process(r.pid, { shmDir: shm });
    await expectCounts(t, p, r, `${r.role ?? 'process'} ${r.pid}`);
  }
});

t.test("fork after cuInit: the child's exit leaves the parent's block alone", async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'fork-after');
  const ready = await prog.report('READY');
  t.ok(fs.existsSync(blockFile(shm, ready.pid)), 'parent block still there after the child exited');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  await expectCounts(t, p, ready, 'parent after child exit');
  t.same(blocks(shm), [path.basename(blockFile(shm, ready.pid))], 'the child made no block');
});

t.test('exit without freeing, and kill -9: no block left behind', async (t) => {
  const shm = tmpShm(t);
  const early = start(t, shm, 'dlsym', 'exit-early');
  t.equal(await early.exited, 0);
  t.same(blocks(shm), [], 'block removed by the exiting process');

  const killed = start(t, shm, 'direct', 'basic');
  const ready = await killed.report('READY');
  killed.child.kill('SIGKILL');
  await killed.exited;
  t.ok(fs.existsSync(blockFile(shm, ready.pid)), 'kill -9 leaves the block');
  const procs = await Gvm.processes({ shmDir: shm });
  t.equal(procs.length, 0, 'a dead process is not listed');
  t.notOk(fs.existsSync(blockFile(shm, ready.pid)), 'and whoever found it removed it');
});

t.test('no block for a process that never uses CUDA, nor with GVM_DISABLE=1', async (t) => {
  const shm = tmpShm(t);
  const nocuda = start(t, shm, 'direct', 'nocuda');
  await nocuda.line('READY');
  nocuda.send('exit');
  t.equal(await nocuda.exited, 0);
  const disabled = start(t, shm, 'procaddr', 'basic', { GVM_DISABLE: '1' });
  const ready = await disabled.report('READY');
  t.equal(ready.gpus['0']!.kernels, 125, 'the program works unchanged');
  t.same(fs.readdirSync(shm), [], 'GVM_DISABLE=1: pure pass-through, no block');
});

t.test('the RM observer: client, subdevice, TSGs and channels, shown by gvm debug rm', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'basic');
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const rm = p.gpu(0).rm();
  t.ok(rm.fd >= 0 && rm.client !== 0 && rm.subdevice !== 0, 'owning client, fd and subdevice');
  const compute = rm.tsgs.filter((x) => x.engine === 'compute');
  t.equal(compute.length, 1, 'one compute TSG');
  t.equal(compute[0]!.channelCount, 8, 'with its 8 channels');
  t.equal(rm.tsgs.filter((x) => x.engine === 'copy').length, 3, 'three copy TSGs');
  t.ok(rm.channels.every((c) => (c.classId & 0xff) === 0x6f), 'only GPFIFO channels, never the context share');
  const r = gvm(['debug', 'rm', String(ready.pid)], { GVM_SHM_DIR: shm });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /compute \(GR\)/);
  t.match(r.stdout, /channels: 11/);
});

t.test('the RM observer replays traffic recorded on an H100', async (t) => {
  const r = spawnSync(path.join(RELEASE, 'gvm-test-rm-replay'), [path.join(ROOT, 'test', 'data', 'rm-trace-h100-torch.txt')], {
    encoding: 'utf8',
  });
  t.equal(r.status, 0, r.stdout + r.stderr);
  t.match(r.stdout, /1\.\.12/);
  t.notMatch(r.stdout, /not ok/);
});

t.test('commands: ping, bad values refused, unsupported reported', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'basic');
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  t.ok((await g.ping()) >= 0, 'ping answered by the agent thread');
  await t.rejects(g.setPriority(16), { code: 'EGVM_INVALID' });
  await t.rejects(g.setPriority(2.5), { code: 'EGVM_INVALID' });
  await t.rejects(g.command(GvmKey.COMPUTE_FREEZE, 2), { code: 'EGVM_INVALID' }, 'the agent validates too');
  await t.rejects(g.setMemoryLimit(g.totalBytes + 1), { code: 'EGVM_INVALID' });
  await t.rejects(g.command(GvmKey.MEMORY_MODE, 7), { code: 'EGVM_INVALID' }, 'an unknown memory mode');
  t.equal(g.compute.priority, 8, 'nothing changed');
  const r = gvm(['set', `${ready.pid}:0`, 'compute.priority', 'high'], { GVM_SHM_DIR: shm });
  t.equal(r.status, 2, 'a non-integer priority is a usage error');
});

t.test('memory limit in oom mode: an allocation past it fails cleanly; the start-up limit applies per GPU', async (t) => {
  const shm = tmpShm(t);
  // 10 MiB limit: basic allocates about 15 MiB of device memory, so it must fail cleanly
  const prog = start(t, shm, 'direct', 'basic', { GVM_MEMORY_LIMIT: String(10 << 20) });
  const code = await prog.exited;
  t.equal(code, 1, 'the program saw an allocation fail and stopped');
  t.match(prog.stderr, /FAIL \w*[Aa]lloc\w* 2\b/, 'with CUDA_ERROR_OUT_OF_MEMORY (2), not a crash');
  t.same(blocks(shm), [], 'and exited cleanly: block removed');

  // within the limit, cuMemGetInfo reports the limit as the total
  const fits = start(t, shm, 'direct', 'basic', { GVM_MEMORY_LIMIT: String(64 << 20) });
  const ready = await fits.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  t.equal(p.gpu(0).memory.limit, 64 << 20);
  t.equal(p.gpu(1).memory.limit, 64 << 20, 'the start-up limit applies to every GPU');
  const used = p.gpu(0).memory.current;
  let mark = fits.send('meminfo');
  const [, status, free, total] = (await fits.line('MEMINFO', mark)).split(' ').map(Number);
  t.equal(status, 0);
  t.equal(total, 64 << 20, 'cuMemGetInfo reports the limit as the total');
  t.equal(free, (64 << 20) - used, 'and what is left under it as free');

  // lowering the limit below what the process holds: new allocations fail until usage drops
  await p.gpu(0).setMemoryLimit(used - 1);
  mark = fits.send('meminfo');
  t.equal(Number((await fits.line('MEMINFO', mark)).split(' ')[2]), 0, 'no free memory while over the limit');
  mark = fits.send('free');
  await fits.line('FREED', mark);
  t.ok(await until(() => p.gpu(0).memory.current === 0), 'usage dropped after the frees');
});

t.test('swap mode: allocations past the limit live on the host at the same address, no byte lost', async (t) => {
  const shm = tmpShm(t);
  const MiB = 1 << 20;
  const prog = start(t, shm, 'direct', 'buffers', { GVM_MEMORY_LIMIT: String(10 * MiB), GVM_MEMORY_MODE: 'swap' });
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  t.equal(g.memory.mode, 'swap');
  t.equal(g.memory.current, 8 * MiB, 'two 4 MiB buffers fit under the 10 MiB limit');
  t.equal(g.memory.swapCurrent, 16 * MiB, 'the other four live on the host');
  t.equal(g.allocations.failures, 0, 'nothing failed');
  let mark = prog.send('verify');
  t.equal(await prog.line('VERIFIED', mark), 'VERIFIED ok 6', 'every byte of every buffer reads back');
  mark = prog.send('meminfo');
  t.equal(Number((await prog.line('MEMINFO', mark)).split(' ')[3]), 10 * MiB, 'the process sees the limit as its GPU');
  mark = prog.send('free');
  await prog.line('FREED', mark);
  t.equal(g.memory.current, 0);
  t.equal(g.memory.swapCurrent, 0, 'host-backed ranges freed too');
});

t.test('swap mode: a raised limit brings data back, a lowered one moves the oldest out, no byte lost', async (t) => {
  const shm = tmpShm(t);
  const MiB = 1 << 20;
  const log = path.join(shm, 'rm.log');
  const prog = start(t, shm, 'direct', 'buffers', {
    GVM_MEMORY_LIMIT: String(10 * MiB),
    GVM_MEMORY_MODE: 'swap',
    GVM_RM_ANY_DRIVER: '1',
    FAKE_RM_LOG: log,
  });
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  t.same([g.memory.current, g.memory.swapCurrent], [8 * MiB, 16 * MiB], 'start: 2 buffers on the GPU, 4 on the host');

  const up = await g.setMemoryLimit(100 * MiB);
  t.match(up.message, /limit set in \d+ ms/, 'the write returned after the mover ran');
  t.same([g.memory.current, g.memory.swapCurrent], [24 * MiB, 0], 'raised: everything back on the GPU');
  let mark = prog.send('verify');
  t.equal(await prog.line('VERIFIED', mark), 'VERIFIED ok 6', 'every byte survived the moves in');

  await g.setMemoryLimit(4 * MiB);
  t.same([g.memory.current, g.memory.swapCurrent], [4 * MiB, 20 * MiB], 'lowered: all but one moved out');
  t.ok(g.memory.current <= g.memory.limit, 'under the limit');
  mark = prog.send('verify');
  t.equal(await prog.line('VERIFIED', mark), 'VERIFIED ok 6', 'every byte survived the moves out');
  const rm = fs.readFileSync(log, 'utf8');
  t.ok((rm.match(/cmd=0x2080110b/gi) ?? []).length >= 4, 'each move ran in a quiet window: channels stopped, then resumed');
  t.equal(g.compute.frozen, false, 'and the process is not left frozen');
  t.equal(g.rm().tsgs.length, 4, "the mover's own context is not listed among the process's channel groups");
  const lines = rm.split('\n');
  const disables = lines.filter((l) => /cmd=0x2080110b/i.test(l) && /params=01/i.test(l));
  t.ok(disables.length >= 2, 'moves stopped channels');
  t.ok(
    disables.every((l) => Buffer.from(/params=([0-9a-f]+)/i.exec(l)![1]!, 'hex').readUInt32LE(4) === 11),
    "each stop listed exactly the process's 11 channels (compute and copy), none of the mover's",
  );

  mark = prog.send('free');
  await prog.line('FREED', mark);
  t.same([g.memory.current, g.memory.swapCurrent], [0, 0]);
});

t.test('swap mode switched on at run time applies to later allocations', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'basic');
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const r = await p.gpu(0).command(GvmKey.MEMORY_MODE, 1);
  t.match(r.message, /mode swap/);
  t.equal(p.gpu(0).memory.mode, 'swap');
  const cli = gvm(['set', `${ready.pid}:0`, 'memory.mode', 'oom'], { GVM_SHM_DIR: shm });
  t.equal(cli.status, 0, cli.stderr);
  t.equal(p.gpu(0).memory.mode, 'oom');
});

t.test('compute control through the fake RM: priority, freeze and thaw with the exact RM bytes', async (t) => {
  const shm = tmpShm(t);
  const log = path.join(shm, 'rm.log');
  const prog = start(t, shm, 'direct', 'basic', { GVM_RM_ANY_DRIVER: '1', FAKE_RM_LOG: log });
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  const set = await g.setPriority(15);
  t.match(set.message, /timeslice 16 us on 4 TSGs/);
  t.ok(g.rm().tsgs.every((x) => x.timesliceUs === 16), 'every TSG reads back 16 us from the RM');
  t.equal(g.compute.priority, 15);
  t.equal(g.compute.mode, 'rm');

  const frozen = await g.freeze();
  t.match(frozen.message, /11 channels of 4 TSGs disabled and preempted in one RM control/);
  t.equal(g.compute.frozen, true);
  const rm = g.rm();
  const lines = fs.readFileSync(log, 'utf8').split('\n');
  const disable = lines.find((l) => /2080110b/i.test(l) && l.includes('control'));
  t.ok(disable, 'a disable-channels control was issued');
  t.equal(lines.filter((l) => /a06c0105/i.test(l)).length, 0, 'no TSG preempt: the RM preempts them itself');
  // the params bytes: bDisable=1, numChannels=11, bOnlyDisableScheduling=0, then client and channel lists
  const bytes = rmLogParams(disable);
  t.equal(bytes.length, 536, 'params are the 536-byte NV2080_CTRL_FIFO_DISABLE_CHANNELS_PARAMS');
  if (bytes.length === 536) {
    t.equal(bytes[0], 1, 'bDisable');
    t.equal(bytes.readUInt32LE(4), 11, 'numChannels');
    t.equal(bytes[8], 0, 'bOnlyDisableScheduling=0: none of them may still run in hardware when it answers');
    t.equal(bytes.readBigUInt64LE(16), 0n, 'no preempt event from user space');
    t.equal(bytes.readUInt32LE(24), rm.client, 'hClientList[0] is the owning client');
    const listed = Array.from({ length: 11 }, (_, i) => bytes.readUInt32LE(280 + 4 * i)).sort();
    t.same(listed, rm.channels.map((c) => c.handle).sort(), 'exactly the channels, never the context share');
  }
  const thawed = await g.thaw();
  t.match(thawed.message, /^thawed: 11 channels enabled in \d+\.\d\d ms$/);
  t.equal(g.compute.frozen, false);
  const after = fs.readFileSync(log, 'utf8').split('\n').filter((l) => /2080110b/i.test(l));
  t.equal(after.length, 2, 'thaw re-enabled the channels');
  const enable = rmLogParams(after[1]);
  t.same([enable[0], enable.readUInt32LE(4), enable[8]], [0, 11, 1], 'enable: bDisable=0, 11 channels, bOnlyDisableScheduling=1');

  const cli = gvm(['freeze', String(ready.pid)], { GVM_SHM_DIR: shm });
  t.equal(cli.status, 0, cli.stderr);
  t.match(cli.stdout, new RegExp(`^${ready.pid}:0 frozen`, 'm'));
  t.equal(gvm(['get', `${ready.pid}:0`, 'compute.freeze'], { GVM_SHM_DIR: shm }).stdout.trim(), '1');
  t.equal(gvm(['thaw', String(ready.pid)], { GVM_SHM_DIR: shm }).status, 0);
});

t.test('GVM_RM_THAW=full: the thaw enables with bOnlyDisableScheduling=0 (the A/B of bench/freeze)', async (t) => {
  const shm = tmpShm(t);
  const log = path.join(shm, 'rm.log');
  const prog = start(t, shm, 'direct', 'basic', { GVM_RM_ANY_DRIVER: '1', FAKE_RM_LOG: log, GVM_RM_THAW: 'full' });
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  await g.freeze();
  const thawed = await g.thaw();
  t.match(thawed.message, /^thawed: 11 channels enabled in/);
  const enables = fs.readFileSync(log, 'utf8').split('\n').filter((l) => /2080110b/i.test(l)).map(rmLogParams).filter((b) => b[0] === 0);
  t.equal(enables.length, 1, 'one enable');
  t.equal(enables[0]?.[8], 0, 'bOnlyDisableScheduling=0');
  await prog.line('SYNCED', prog.send('sync'));
  t.pass('the program runs on after the thaw');
});

for (const [what, extra] of [
  ['GVM_RM_STOP=preempt', { GVM_RM_STOP: 'preempt' }],
  ['a driver that refuses to preempt in DISABLE_CHANNELS', { FAKE_RM_SCHEDULING_ONLY: '1' }],
] as const) {
  t.test(`freeze in two steps (${what}): scheduling disabled, then each TSG preempted`, async (t) => {
    const shm = tmpShm(t);
    const log = path.join(shm, 'rm.log');
    const prog = start(t, shm, 'direct', 'basic', { GVM_RM_ANY_DRIVER: '1', FAKE_RM_LOG: log, ...extra });
    const ready = await prog.report('READY');
    using p = await Gvm.process(ready.pid, { shmDir: shm });
    const g = p.gpu(0);
    const frozen = await g.freeze();
    t.match(frozen.message, /11 channels of 4 TSGs disabled, their TSGs preempted/);
    t.equal(g.compute.mode, 'rm', 'still the RM path, not the software freeze');
    const lines = fs.readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('control'));
    const disables = lines.filter((l) => /2080110b/i.test(l)).map((l) => ({ bytes: rmLogParams(l), ok: /status=0x0\b/.test(l) }));
    const stop = disables.filter((d) => d.ok && d.bytes[0] === 1);
    t.equal(stop.length, 1, 'one successful disable');
    t.equal(stop[0]?.bytes[8], 1, 'with bOnlyDisableScheduling=1');
    if ('FAKE_RM_SCHEDULING_ONLY' in extra) {
      t.ok(disables.some((d) => !d.ok && d.bytes[8] === 0), 'the one-control stop was tried first and refused');
    } else {
      t.ok(disables.every((d) => d.bytes[8] === 1), 'never the one-control stop');
    }
    const preempts = lines.filter((l) => /cmd=0xa06c0105/i.test(l));
    t.equal(preempts.length, 4, 'one preempt per TSG');
    t.ok(preempts.some((l) => /params=01/i.test(l)), 'the compute TSG preempted with bWait=1');
    await g.thaw();
    t.equal(g.compute.frozen, false);
    const mark = prog.send('sync');
    await prog.line('SYNCED', mark);
  });
}

t.test('gvm run --priority: channel groups created after start-up inherit the timeslice', async (t) => {
  const shm = tmpShm(t);
  const log = path.join(shm, 'rm.log');
  const prog = start(t, shm, 'procaddr', 'multigpu', { GVM_RM_ANY_DRIVER: '1', GVM_PRIORITY: '15', FAKE_RM_LOG: log });
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  for (const ordinal of [0, 1]) {
    const tsgs = p.gpu(ordinal).rm().tsgs;
    t.equal(tsgs.length, 4, `GPU ${ordinal}: four TSGs`);
    t.ok(tsgs.every((x) => x.timesliceUs === 16), `GPU ${ordinal}: every TSG read back 16 us from the RM`);
    t.equal(p.gpu(ordinal).compute.priority, 15);
  }
  const sets = fs.readFileSync(log, 'utf8').split('\n').filter((l) => /cmd=0xa06c0103/i.test(l));
  t.equal(sets.length, 8, 'one set-timeslice control per TSG as it was created');
  t.ok(sets.every((l) => /params=1000000000000000/i.test(l)), 'each carrying u64 16');
});

t.test('compute control falls back to a software freeze when the RM refuses', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'basic', { GVM_RM_ANY_DRIVER: '1', FAKE_RM_FAIL_CMD: '0x2080110b' });
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  const r = await g.freeze();
  t.match(r.message, /software freeze/);
  t.equal(g.compute.mode, 'software');
  t.equal(g.compute.frozen, true);
  await g.thaw();
  t.equal(g.compute.frozen, false);
  const mark = prog.send('sync');
  await prog.line('SYNCED', mark);
});

t.test('without the RM path (unverified driver) priority is refused, freeze is software', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'basic');
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  await t.rejects(p.gpu(0).setPriority(12), { code: 'EGVM_UNSUPPORTED' });
  const r = await p.gpu(0).freeze();
  t.match(r.message, /software freeze/);
  await p.gpu(0).thaw();
});

/** An MPS control pipe directory (CUDA_MPS_PIPE_DIRECTORY) with its `control` entry, removed after the test. */
function mpsPipe(t: Tap.Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gvm-mps-'));
  fs.writeFileSync(path.join(dir, 'control'), '');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('channels libcuda schedules while frozen are disabled again; a thaw racing that disable does not leave them disabled', async (t) => {
  const shm = tmpShm(t);
  const r = spawnSync(path.join(FAKE, 'bin', 'gvm-channel-race'), ['thaw'], {
    encoding: 'utf8',
    env: fakeEnv(shm, { GVM_RM_ANY_DRIVER: '1' }),
    timeout: 30000,
  });
  t.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  t.match(r.stdout, /^freeze 0 frozen before the first channel/m, 'frozen before its first context');
  // the fake RM's hook thawed the process right before the agent's re-disable of the scheduled TSG took effect
  t.match(r.stdout, /^thaw 0 thawed: \d+ channels enabled/m, 'the thaw ran between the decision and the control');
  t.match(r.stdout, /^channels 11 disabled 0 frozen 0$/m, 'every channel enabled in the thawed process');
});

t.test("a context created while the mover moves memory starts with its channels disabled; they run after the move", async (t) => {
  const shm = tmpShm(t);
  const r = spawnSync(path.join(FAKE, 'bin', 'gvm-channel-race'), ['move'], {
    encoding: 'utf8',
    env: fakeEnv(shm, { GVM_RM_ANY_DRIVER: '1', GVM_MEMORY_MODE: 'swap' }),
    timeout: 30000,
  });
  t.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  t.match(r.stdout, /^limit 0 limit set .* 8388608 on the host$/m, 'two 4 MiB buffers moved to the host');
  // the fake RM's hook made the second context inside the mover's quiet window
  t.match(r.stdout, /^during-move new 11 disabled 11$/m, "the new context's channels could not run during the move");
  t.match(r.stdout, /^intact 4 of 4$/m, 'every buffer kept its pattern');
  t.match(r.stdout, /^channels 22 disabled 0 frozen 0$/m, 'after the move every channel runs');
});

for (const [name, args, env] of [
  ['work left on the legacy stream (a mark there depends on the capturing stream)', ['30'], {}],
  ['the driver\'s begin returning late (a mark on the capturing stream itself)', ['30', 'capturing-only'], { FAKE_CUDA_BEGIN_CAPTURE_DELAY_US: '3000' }],
] as const) {
  t.test(`graph captures stay valid beside the event thread's marks: ${name}`, async (t) => {
    const r = spawnSync(path.join(FAKE, 'bin', 'gvm-capture-race'), [...args], {
      encoding: 'utf8',
      env: fakeEnv(tmpShm(t), { GVM_RM_ANY_DRIVER: '1', FAKE_CUDA_KERNEL_US: '2000', ...env }),
      timeout: 30000,
    });
    t.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    // without the agent's capture handshake 28 of 30 were invalidated in each case
    t.match(r.stdout, /^captures 30 ok 30 invalidated 0$/m, 'no capture invalidated');
    t.match(r.stdout, /^graph-kernels 90$/m, 'every captured graph replayed its kernels');
  });
}

t.test('a capture whose stream is destroyed without ending it does not keep later kernels pending', async (t) => {
  const shm = tmpShm(t);
  const child = spawn(path.join(FAKE, 'bin', 'gvm-capture-race'), ['abandon'], {
    env: fakeEnv(shm, { GVM_RM_ANY_DRIVER: '1' }),
  });
  t.teardown(() => child.kill('SIGKILL'));
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  t.ok(await until(() => output.includes('abandoned'), 10000), `the program ran (${output.trim()})`);
  using p = await Gvm.process(child.pid!, { shmDir: shm });
  const g = p.gpu(0);
  // without the destroy hook's bookkeeping the agent kept believing a capture ran and never marked
  // the legacy stream again: 5 kernels stayed pending
  // the counts are published by the event thread: wait for the legacy kernels to show as submitted too
  const settled = () => g.snapshot().kernels.submitted >= 5 && g.snapshot().kernels.pending === 0;
  t.ok(await until(settled, 5000), `the 5 legacy-stream kernels counted, none pending (${JSON.stringify(g.snapshot().kernels)})`);
  child.stdin.end();
});

t.test("an MPS client (its work runs on the MPS server's channels): freeze holds launches, priority is refused", async (t) => {
  const shm = tmpShm(t);
  const env = { GVM_RM_ANY_DRIVER: '1', FAKE_CUDA_MPS_CLIENT: '1', CUDA_MPS_PIPE_DIRECTORY: mpsPipe(t) };
  const prog = start(t, shm, 'direct', 'basic', env);
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  t.same(g.rm().tsgs, [], "no channel group in the process's own RM client");
  await t.rejects(g.setPriority(15), { code: 'EGVM_UNSUPPORTED', message: /MPS client/ }, 'not "recorded for later"');
  t.equal(g.compute.priority, 8, 'nothing changed');

  const r = await g.freeze();
  t.match(r.message, /^software freeze \(an MPS client/, 'not "frozen before the first channel"');
  t.equal(g.compute.mode, 'software');
  t.equal(g.compute.frozen, true);
  const mark = prog.send('launch 3');
  await new Promise((res) => setTimeout(res, 300));
  t.notOk(prog.lines.slice(mark).some((l) => l.startsWith('LAUNCHED')), 'a launch waits at the hook while frozen');
  await g.thaw();
  t.equal(await prog.line('LAUNCHED', mark), 'LAUNCHED 3', 'and goes through at the thaw');
  t.equal(g.compute.frozen, false);
});

t.test('no channel of its own and no MPS pipe: freeze is still software, priority is kept for later channels', async (t) => {
  const shm = tmpShm(t);
  const prog = start(t, shm, 'direct', 'basic', { GVM_RM_ANY_DRIVER: '1', FAKE_CUDA_MPS_CLIENT: '1', CUDA_MPS_PIPE_DIRECTORY: path.join(shm, 'none') });
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  t.match((await g.setPriority(12)).message, /recorded; applied when the process creates its channels/);
  t.match((await g.freeze()).message, /^software freeze \(no channel of its own on this GPU\)/);
  await g.thaw();
});

t.test('an MPS client in swap mode: no move is made while kernels may run elsewhere, no byte lost', async (t) => {
  const shm = tmpShm(t);
  const MiB = 1 << 20;
  const prog = start(t, shm, 'direct', 'buffers', {
    GVM_MEMORY_LIMIT: String(10 * MiB),
    GVM_MEMORY_MODE: 'swap',
    GVM_RM_ANY_DRIVER: '1',
    FAKE_CUDA_MPS_CLIENT: '1',
    CUDA_MPS_PIPE_DIRECTORY: mpsPipe(t),
  });
  const ready = await prog.report('READY');
  using p = await Gvm.process(ready.pid, { shmDir: shm });
  const g = p.gpu(0);
  t.same([g.memory.current, g.memory.swapCurrent], [8 * MiB, 16 * MiB], 'new allocations past the limit still go to the host');
  await g.setMemoryLimit(100 * MiB);
  await g.setMemoryLimit(4 * MiB);
  t.same([g.memory.current, g.memory.swapCurrent], [8 * MiB, 16 * MiB], 'nothing was remapped under running kernels');
  const mark = prog.send('verify');
  t.equal(await prog.line('VERIFIED', mark), 'VERIFIED ok 6', 'every byte where it was');
});

t.test('the real CUDA runtime over the fake driver: documented as unsupported', async (t) => {
  const r = spawnSync(path.join(FAKE, 'bin', 'gvm-prog-cudart'), ['basic'], {
    encoding: 'utf8',
    env: { ...process.env, LD_PRELOAD: `${AGENT}:${FAKE_RM}`, LD_LIBRARY_PATH: FAKE, GVM_SHM_DIR: tmpShm(t) },
    timeout: 30000,
  });
  // libcudart asks cuGetExportTable for private tables no fake can provide (test/fake-cuda/README.md)
  t.equal(r.status, 3, r.stdout + r.stderr);
  t.match(r.stdout, /UNSUPPORTED/);
});
