// One process on several GPUs, and processes on different GPUs, under the real agent on the fake
// driver (2 fake GPUs unless FAKE_CUDA_DEVICES says more; test/fake-cuda/README.md). Every GPU of
// the `gpus` scenario holds its own amount of memory and work (GPU g: 2(g+1) MiB, 10(g+1) kernels), so
// a number or a setting that lands on the wrong GPU shows. The fake RM logs every control with the
// object it was sent to, and answers `chan`/`timeslice` queries from its own state, so the tests
// see which GPU's channel groups and channels a setting reached, not only what the agent believes.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

import { Gvm, GvmKey, GvmProcess } from '../lib/index';
import { AGENT, FAKE, FAKE_RM, Prog, Report, fakeEnv, spawnFake, start, until } from './fake-prog';
import { gvm, ROOT, startDaemon, tmpShm } from './helpers';

const MiB = 1 << 20;
const TOTAL = 85899345920; // the fake's memory per GPU (FAKE_CUDA_MEM_BYTES default)
const CMD_SET_TIMESLICE = 0xa06c0103;
const CMD_DISABLE_CHANNELS = 0x2080110b;

/** The CLI, with the machine's GPU list pinned (none: GPU numbers are CUDA ordinals) unless given. */
function cli(shm: string, args: string[], env: NodeJS.ProcessEnv = {}) {
  return gvm(args, { GVM_SHM_DIR: shm, GVM_NVIDIA_PROC_DIR: '/nonexistent', ...env });
}

interface Control {
  pid: number;
  hObject: number;
  status: number;
  params: Buffer;
}

/** The RM controls with this cmd in a FAKE_RM_LOG file, in order. */
function controls(log: string, cmd: number): Control[] {
  if (!fs.existsSync(log)) return [];
  const want = `cmd=0x${cmd.toString(16).padStart(8, '0')}`;
  return fs
    .readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('control ') && l.includes(want))
    .map((l) => ({
      pid: Number(/pid=(\d+)/.exec(l)![1]),
      hObject: Number(/hObject=(0x[0-9a-f]+)/.exec(l)![1]),
      status: Number(/status=(0x[0-9a-f]+)/.exec(l)![1]),
      params: Buffer.from(/params=([0-9a-f]+)/.exec(l)?.[1] ?? '', 'hex'),
    }));
}

/** The channels a DISABLE_CHANNELS control listed (NV2080_CTRL_FIFO_DISABLE_CHANNELS_PARAMS). */
function listedChannels(c: Control): number[] {
  const n = c.params.readUInt32LE(4);
  return Array.from({ length: n }, (_, i) => c.params.readUInt32LE(280 + 4 * i)).sort((a, b) => a - b);
}

const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
const hex = (n: number) => `0x${n.toString(16)}`;

/** The fake RM's own state of objects, asked inside the program (chan: 1 disabled, timeslice: us). */
async function rmState(prog: Prog, what: 'chan' | 'timeslice', handles: number[]): Promise<number[]> {
  const out: number[] = [];
  for (const h of handles) {
    const line = await prog.ask(`${what} ${hex(h)}`, what === 'chan' ? 'CHAN' : 'TIMESLICE');
    out.push(Number(line.split(' ')[2]));
  }
  return out;
}

interface Started {
  prog: Prog;
  ready: Report;
  p: GvmProcess;
}

/** The `gpus` scenario under the agent (build/fake/bin/gvm-prog-BINDER gpus n=N). */
async function gpus(t: Tap.Test, shm: string, env: NodeJS.ProcessEnv = {}, scenario = 'gpus n=2', binder = 'direct'): Promise<Started> {
  const prog = start(t, shm, binder, scenario, env);
  const ready = await prog.report('READY');
  const p = await Gvm.process(ready.pid, { shmDir: shm });
  t.teardown(() => p.close());
  return { prog, ready, p };
}

/** Waits until every kernel the program launched on the GPU is counted as ended. */
async function settled(p: GvmProcess, ordinal: number, kernels: number): Promise<boolean> {
  const g = p.gpu(ordinal);
  return until(() => g.kernels.submitted === kernels && g.kernels.ended === kernels);
}

t.before(() => {
  const bins = ['gvm-prog-direct', 'gvm-memory-prog', 'gvm-multi-gpu-check', 'gvm-ipc-check'].map((b) => path.join(FAKE, 'bin', b));
  for (const f of [AGENT, FAKE_RM, path.join(FAKE, 'libcuda.so.1'), ...bins]) {
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: run npm install (cmake-js builds it)`);
  }
});

for (const binder of ['direct', 'dlsym', 'procaddr'] as const) {
  t.test(`${binder}: one process on two GPUs; each GPU's handle shows its own memory, kernels and RM objects`, async (t) => {
    const shm = tmpShm(t);
    const { prog, ready, p } = await gpus(t, shm, { GVM_RM_ANY_DRIVER: '1' }, 'gpus n=2', binder);
    t.equal(p.gpuCount, 2, 'both fake GPUs visible');
    t.same(p.gpus.map((g) => g.ordinal), [0, 1]);
    t.same(ready.gpus['0'], { deviceBytes: 2 * MiB, managedBytes: 0, hostBytes: 0, kernels: 10 }, 'the program counted GPU 0');
    t.same(ready.gpus['1'], { deviceBytes: 4 * MiB, managedBytes: 0, hostBytes: 0, kernels: 20 }, 'and GPU 1');
    for (const o of [0, 1]) {
      const g = p.gpu(o);
      t.ok(await settled(p, o, 10 * (o + 1)), `GPU ${o}: every kernel counted and ended (${g.kernels.submitted}/${g.kernels.ended})`);
      t.equal(g.memory.current, 2 * (o + 1) * MiB, `GPU ${o}: memory.current exact`);
      t.equal(g.allocations.count, 1, `GPU ${o}: one allocation`);
      t.equal(g.contexts, 1, `GPU ${o}: one context`);
      t.equal(g.name, `Fake GPU ${o}`, `GPU ${o}: its own name`);
      t.equal(g.totalBytes, TOTAL);
      t.equal(g.memory.limit, TOTAL, `GPU ${o}: no limit`);
    }
    t.not(p.gpu(0).pciBusId, p.gpu(1).pciBusId, 'each its own PCI bus id');
    t.not(p.gpu(0).uuid, p.gpu(1).uuid, 'and UUID');

    const [rm0, rm1] = [p.gpu(0).rm(), p.gpu(1).rm()];
    t.equal(rm0.client, rm1.client, "one RM client (libcuda's) for both GPUs");
    t.not(rm0.device, rm1.device, 'each GPU its own RM device');
    t.not(rm0.subdevice, rm1.subdevice, 'and subdevice');
    for (const [o, rm] of [[0, rm0], [1, rm1]] as const) {
      t.equal(rm.tsgs.length, 4, `GPU ${o}: 4 channel groups`);
      t.equal(rm.channels.length, 11, `GPU ${o}: 11 channels`);
      t.ok(rm.tsgs.every((x) => x.parent === rm.device), `GPU ${o}: every channel group under its own device`);
    }
    const shared = rm0.channels.filter((c) => rm1.channels.some((d) => d.handle === c.handle));
    t.same(shared, [], 'no channel listed under both GPUs');

    // work on GPU 1 moves only GPU 1's numbers, and the other way round
    await prog.ask('gpu 1', 'GPU 1');
    t.equal(await prog.ask('alloc 5', 'ALLOC'), 'ALLOC 0');
    await prog.ask('launch 7', 'LAUNCHED');
    t.equal(await prog.ask('gsync', 'GSYNCED'), 'GSYNCED 1');
    t.ok(await settled(p, 1, 27), 'GPU 1: 7 more kernels');
    await prog.ask('gpu 0', 'GPU 0');
    await prog.ask('launch 3', 'LAUNCHED');
    await prog.ask('gsync', 'GSYNCED');
    t.ok(await settled(p, 0, 13), 'GPU 0: 3 more kernels');
    t.same([p.gpu(0).memory.current, p.gpu(1).memory.current], [2 * MiB, 9 * MiB], 'the 5 MiB went to GPU 1 only');
    t.same([p.gpu(0).kernels.submitted, p.gpu(1).kernels.submitted], [13, 27], 'kernels each where they ran');
    t.same([p.gpu(0).allocations.count, p.gpu(1).allocations.count], [1, 2]);

    const freed = await prog.report('FREED', prog.send('free'));
    t.same([freed.gpus['0']!.deviceBytes, freed.gpus['1']!.deviceBytes], [0, 0]);
    t.ok(await until(() => p.gpu(0).memory.current === 0 && p.gpu(1).memory.current === 0), 'both back to 0 after the frees');
    t.same([p.gpu(0).memory.peak, p.gpu(1).memory.peak], [2 * MiB, 9 * MiB], 'each GPU keeps its own peak');
    prog.send('exit');
    t.equal(await prog.exited, 0);
  });
}

t.test('memory.limit on GPU 1 (API and CLI), oom mode: GPU 1 refuses past it, GPU 0 keeps its limit, room and cuMemGetInfo', async (t) => {
  const shm = tmpShm(t);
  const { prog, ready, p } = await gpus(t, shm);
  const [g0, g1] = [p.gpu(0), p.gpu(1)];
  const set = await g1.setMemoryLimit(12 * MiB);
  t.equal(set.message, 'limit set');
  t.same([g0.memory.limit, g1.memory.limit], [TOTAL, 12 * MiB], 'the limit is GPU 1\'s alone');

  await prog.ask('gpu 1', 'GPU 1');
  t.equal(await prog.ask('meminfo', 'MEMINFO'), `MEMINFO 0 ${8 * MiB} ${12 * MiB}`, 'GPU 1: cuMemGetInfo reports the limit as its size, 8 MiB free');
  t.equal(await prog.ask('alloc 9', 'ALLOC'), 'ALLOC 2', 'GPU 1: 9 MiB past the limit is out of memory');
  t.equal(await prog.ask('alloc 8', 'ALLOC'), 'ALLOC 0', 'GPU 1: exactly the room fits');
  t.equal(await prog.ask('alloc 1', 'ALLOC'), 'ALLOC 2', 'GPU 1: then not one MiB more');
  t.same([g1.memory.current, g1.allocations.failures], [12 * MiB, 2]);

  await prog.ask('gpu 0', 'GPU 0');
  t.equal(await prog.ask('meminfo', 'MEMINFO'), `MEMINFO 0 ${TOTAL - 2 * MiB} ${TOTAL}`, "GPU 0: cuMemGetInfo is the driver's own");
  t.equal(await prog.ask('alloc 64', 'ALLOC'), 'ALLOC 0', 'GPU 0: 64 MiB more is no problem');
  t.same([g0.memory.current, g0.allocations.failures, g0.memory.limit], [66 * MiB, 0, TOTAL], 'GPU 0 untouched by GPU 1\'s limit');

  // the CLI: PID:GPU picks one GPU
  let r = cli(shm, ['set', `${ready.pid}:1`, 'memory.limit', '100M']);
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stdout, `${ready.pid}:1 limit set\n`, 'one answer, from GPU 1');
  t.equal(cli(shm, ['get', `${ready.pid}:1`, 'memory.limit']).stdout, `${100 * MiB}\n`);
  t.equal(cli(shm, ['get', `${ready.pid}:0`, 'memory.limit']).stdout, `${TOTAL}\n`, 'GPU 0 still unlimited');
  t.equal(cli(shm, ['get', String(ready.pid), 'memory.current']).stdout, `${66 * MiB}\n`, 'without :GPU, get reads the first GPU');
  t.equal(cli(shm, ['get', `${ready.pid}:1`, 'memory.current']).stdout, `${12 * MiB}\n`);
  await prog.ask('gpu 1', 'GPU 1');
  t.equal(await prog.ask('meminfo', 'MEMINFO'), `MEMINFO 0 ${88 * MiB} ${100 * MiB}`, 'GPU 1 sees the new size');
  t.equal(await prog.ask('alloc 64', 'ALLOC'), 'ALLOC 0', 'and has room again');

  r = cli(shm, ['set', `${ready.pid}:0`, 'memory.limit', '70M']);
  t.equal(r.status, 0, r.stderr);
  t.same([g0.memory.limit, g1.memory.limit], [70 * MiB, 100 * MiB], 'GPU 0 limited, GPU 1 kept its own');
  await prog.ask('gpu 0', 'GPU 0');
  t.equal(await prog.ask('alloc 8', 'ALLOC'), 'ALLOC 2', 'GPU 0 now refuses past 70 MiB');

  r = cli(shm, ['set', `${ready.pid}:2`, 'memory.limit', '1G']);
  t.equal(r.status, 1, 'a GPU the process does not have');
  t.match(r.stderr, /EGVM_NOT_FOUND/);
  t.same([g0.memory.limit, g1.memory.limit], [70 * MiB, 100 * MiB], 'nothing changed');

  r = cli(shm, ['set', String(ready.pid), 'memory.limit', '200M']);
  t.equal(r.status, 0, r.stderr);
  t.same(r.stdout.trim().split('\n').map((l) => l.split(' ')[0]), [`${ready.pid}:0`, `${ready.pid}:1`], 'without :GPU, set answers for every GPU');
  t.same([g0.memory.limit, g1.memory.limit], [200 * MiB, 200 * MiB]);
});

t.test('GPU numbers in the CLI are machine-wide: a GPU the process cannot see shifts them from its ordinals', async (t) => {
  const shm = tmpShm(t);
  const { ready, p } = await gpus(t, shm);
  // the machine: a GPU at 0f (sorted first) the process does not see, then the fake's 10 and 11
  const proc = fs.mkdtempSync(path.join(shm, 'nvidia-gpus-'));
  for (const bus of ['0000:0f:00.0', p.gpu(0).pciBusId, p.gpu(1).pciBusId]) fs.mkdirSync(path.join(proc, bus));
  const env = { GVM_NVIDIA_PROC_DIR: proc };
  const ps = cli(shm, ['ps', '--json'], env);
  t.equal(ps.status, 0, ps.stderr);
  const rows = (JSON.parse(ps.stdout) as Array<{ pid: number; gpu: { index: number; ordinal: number; memory: { current: number } } }>).filter(
    (r) => r.pid === ready.pid,
  );
  t.same(rows.map((r) => [r.gpu.index, r.gpu.ordinal, r.gpu.memory.current]), [[1, 0, 2 * MiB], [2, 1, 4 * MiB]], 'ordinal 0 is GPU 1, ordinal 1 is GPU 2');
  const r = cli(shm, ['set', `${ready.pid}:2`, 'memory.limit', '50M'], env);
  t.equal(r.stdout, `${ready.pid}:2 limit set\n`, r.stderr);
  t.same([p.gpu(0).memory.limit, p.gpu(1).memory.limit], [TOTAL, 50 * MiB], 'GPU 2 is the process\'s ordinal 1');
  t.equal(cli(shm, ['get', `${ready.pid}:1`, 'memory.current'], env).stdout, `${2 * MiB}\n`, 'GPU 1 is its ordinal 0');
  const none = cli(shm, ['get', `${ready.pid}:0`, 'memory.current'], env);
  t.equal(none.status, 1, 'GPU 0 is not one of its GPUs');
  t.match(none.stderr, /EGVM_NOT_FOUND/);
});

t.test("compute.priority on GPU 1: timeslice controls reach GPU 1's channel groups only; GPU 0's keep the default", async (t) => {
  const shm = tmpShm(t);
  const log = path.join(shm, 'rm.log');
  const { prog, ready, p } = await gpus(t, shm, { GVM_RM_ANY_DRIVER: '1', FAKE_RM_LOG: log });
  const [g0, g1] = [p.gpu(0), p.gpu(1)];
  const tsgs = (o: number) => p.gpu(o).rm().tsgs.map((x) => x.handle);
  const [tsg0, tsg1] = [tsgs(0), tsgs(1)];
  t.same(controls(log, CMD_SET_TIMESLICE), [], 'no timeslice set before the command');

  const set = await g1.setPriority(15);
  t.match(set.message, /^priority 15: timeslice 16 us on 4 TSGs$/);
  const sets = controls(log, CMD_SET_TIMESLICE);
  t.same(sorted(sets.map((c) => c.hObject)), sorted(tsg1), "one set-timeslice control on each of GPU 1's channel groups, no other");
  t.ok(sets.every((c) => c.status === 0 && c.params.readBigUInt64LE(0) === 16n), 'each 16 us, accepted');
  t.same(await rmState(prog, 'timeslice', tsg1), [16, 16, 16, 16], "the RM's GPU 1 channel groups run 16 us slices");
  t.same(await rmState(prog, 'timeslice', tsg0), [2048, 2048, 2048, 2048], "GPU 0's keep the RM's default 2048 us");
  t.same([g0.compute.priority, g1.compute.priority], [8, 15]);
  t.same([g0.compute.mode, g1.compute.mode], ['none', 'rm'], 'only GPU 1 was steered');

  // channel groups created later inherit their own GPU's setting
  await prog.ask('gpu 0', 'GPU 0');
  t.equal(await prog.ask('newctx', 'NEWCTX'), 'NEWCTX 0 0');
  const newOn0 = tsgs(0).filter((h) => !tsg0.includes(h));
  t.equal(newOn0.length, 4, 'a new context on GPU 0: 4 more channel groups there');
  t.same(await rmState(prog, 'timeslice', newOn0), [2048, 2048, 2048, 2048], 'they keep the default');
  t.equal(controls(log, CMD_SET_TIMESLICE).length, 4, 'and got no timeslice control');
  await prog.ask('gpu 1', 'GPU 1');
  t.equal(await prog.ask('newctx', 'NEWCTX'), 'NEWCTX 0 1');
  const newOn1 = tsgs(1).filter((h) => !tsg1.includes(h));
  t.equal(newOn1.length, 4, 'a new context on GPU 1: 4 more channel groups there');
  t.same(await rmState(prog, 'timeslice', newOn1), [16, 16, 16, 16], "they take GPU 1's 16 us as they are created");
  t.same(tsgs(0).length, 8, 'GPU 0 lists its own 8, none of GPU 1\'s');

  // the CLI on GPU 0 leaves GPU 1's alone
  const r = cli(shm, ['set', `${ready.pid}:0`, 'compute.priority', '3']);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, new RegExp(`^${ready.pid}:0 priority 3: timeslice 65536 us on 8 TSGs\\n$`));
  t.same(await rmState(prog, 'timeslice', tsgs(0)), Array(8).fill(65536), "GPU 0's channel groups: 65536 us");
  t.same(await rmState(prog, 'timeslice', tsgs(1)), Array(8).fill(16), "GPU 1's still 16 us");
  t.equal(cli(shm, ['get', `${ready.pid}:1`, 'compute.priority']).stdout, '15\n');
  t.equal(cli(shm, ['get', `${ready.pid}:0`, 'compute.priority']).stdout, '3\n');
});

t.test('freeze of GPU 1 only: its channels disabled, GPU 0 keeps running; new channels follow their GPU; thaw restores', async (t) => {
  const shm = tmpShm(t);
  const log = path.join(shm, 'rm.log');
  const { prog, ready, p } = await gpus(t, shm, { GVM_RM_ANY_DRIVER: '1', FAKE_RM_LOG: log });
  const [g0, g1] = [p.gpu(0), p.gpu(1)];
  const chans = (o: number) => p.gpu(o).rm().channels.map((c) => c.handle);
  const [ch0, ch1] = [chans(0), chans(1)];
  t.ok((await settled(p, 0, 10)) && (await settled(p, 1, 20)));

  const frozen = await g1.freeze();
  t.match(frozen.message, /^frozen: 11 channels of 4 TSGs disabled and preempted in one RM control in \d+\.\d\d ms$/);
  const disables = controls(log, CMD_DISABLE_CHANNELS);
  t.equal(disables.length, 1, 'one disable-channels control');
  t.equal(disables[0]?.hObject, g1.rm().subdevice, "sent to GPU 1's subdevice");
  t.equal(disables[0]?.status, 0, 'and accepted (the fake RM refuses channels of another GPU)');
  t.same(disables[0] && listedChannels(disables[0]), sorted(ch1), "listing exactly GPU 1's 11 channels");
  t.same(await rmState(prog, 'chan', ch1), Array(11).fill(1), "the RM has GPU 1's channels disabled");
  t.same(await rmState(prog, 'chan', ch0), Array(11).fill(0), "and GPU 0's enabled");
  t.same([g0.compute.frozen, g1.compute.frozen], [false, true]);
  t.equal(cli(shm, ['get', `${ready.pid}:0`, 'compute.freeze']).stdout, '0\n');
  t.equal(cli(shm, ['get', `${ready.pid}:1`, 'compute.freeze']).stdout, '1\n');

  // GPU 1's new work waits; GPU 0's runs to completion meanwhile
  await prog.ask('gpu 1', 'GPU 1');
  await prog.ask('launch 4', 'LAUNCHED');
  await prog.ask('gpu 0', 'GPU 0');
  await prog.ask('launch 5', 'LAUNCHED');
  t.equal(await prog.ask('gsync', 'GSYNCED'), 'GSYNCED 0', 'GPU 0 synchronises while GPU 1 is frozen');
  t.ok(await settled(p, 0, 15), 'GPU 0: all 15 kernels ended');
  await new Promise((r) => setTimeout(r, 200));
  t.same([g1.kernels.submitted, g1.kernels.ended, g1.kernels.pending], [24, 20, 4], 'GPU 1: the 4 new kernels wait');

  // contexts created now: channels on GPU 1 start disabled, on GPU 0 they run
  t.equal(await prog.ask('newctx', 'NEWCTX'), 'NEWCTX 0 0');
  await prog.ask('gpu 1', 'GPU 1');
  t.equal(await prog.ask('newctx', 'NEWCTX'), 'NEWCTX 0 1');
  const [new0, new1] = [chans(0).filter((h) => !ch0.includes(h)), chans(1).filter((h) => !ch1.includes(h))];
  t.same([new0.length, new1.length], [11, 11], 'a new context on each GPU');
  t.same(await rmState(prog, 'chan', new1), Array(11).fill(1), "the new context's channels on GPU 1 start disabled");
  t.same(await rmState(prog, 'chan', new0), Array(11).fill(0), 'those on GPU 0 do not');
  t.ok(controls(log, CMD_DISABLE_CHANNELS).every((c) => c.hObject === g1.rm().subdevice), 'no control ever went to GPU 0');

  const thawed = await g1.thaw();
  t.match(thawed.message, /^thawed: 22 channels enabled in \d+\.\d\d ms$/);
  t.same(await rmState(prog, 'chan', chans(1)), Array(22).fill(0), "every GPU 1 channel enabled again");
  t.ok(await settled(p, 1, 24), 'the waiting kernels ran after the thaw');
  t.same([g0.compute.frozen, g1.compute.frozen], [false, false]);

  // the CLI freezes one GPU with :GPU, every GPU without
  let r = cli(shm, ['freeze', `${ready.pid}:1`]);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, new RegExp(`^${ready.pid}:1 frozen: 22 channels of 8 TSGs`));
  t.equal(r.stdout.trim().split('\n').length, 1, 'one GPU answered');
  t.same([g0.compute.frozen, g1.compute.frozen], [false, true]);
  t.equal(cli(shm, ['thaw', `${ready.pid}:1`]).status, 0);
  r = cli(shm, ['freeze', String(ready.pid)]);
  t.same(r.stdout.trim().split('\n').map((l) => l.split(' ').slice(0, 2).join(' ')), [`${ready.pid}:0 frozen:`, `${ready.pid}:1 frozen:`]);
  t.same([g0.compute.frozen, g1.compute.frozen], [true, true]);
  t.equal(cli(shm, ['thaw', String(ready.pid)]).status, 0);
  t.same([g0.compute.frozen, g1.compute.frozen], [false, false]);
  t.equal(await prog.ask('gsync', 'GSYNCED'), 'GSYNCED 1');
});

t.test('software freeze (no RM path) of GPU 1 only: launches on GPU 1 wait at the hook, GPU 0 launches freely', async (t) => {
  const shm = tmpShm(t);
  const { prog, p } = await gpus(t, shm); // GVM_RM_ANY_DRIVER unset: the fake's driver is not verified
  const [g0, g1] = [p.gpu(0), p.gpu(1)];
  t.match((await g1.freeze()).message, /software freeze/);
  t.same([g0.compute.mode, g1.compute.mode], ['none', 'software']);
  await prog.ask('launch 5', 'LAUNCHED');
  t.equal(await prog.ask('gsync', 'GSYNCED'), 'GSYNCED 0');
  t.ok(await settled(p, 0, 15), 'GPU 0: 5 more kernels ran');
  await prog.ask('gpu 1', 'GPU 1');
  const mark = prog.send('launch 3');
  await new Promise((r) => setTimeout(r, 300));
  t.notOk(prog.lines.slice(mark).some((l) => l.startsWith('LAUNCHED')), "GPU 1's launch is held at the hook");
  t.equal(g1.kernels.submitted, 20, 'and not submitted');
  await g1.thaw();
  t.equal(await prog.line('LAUNCHED', mark), 'LAUNCHED 3', 'the thaw lets it through');
  t.ok(await settled(p, 1, 23));
});

t.test("settings given before GPU 1's first context: they wait for its channels, GPU 0's run as they are", async (t) => {
  const shm = tmpShm(t);
  const log = path.join(shm, 'rm.log');
  const { prog, ready, p } = await gpus(t, shm, { GVM_RM_ANY_DRIVER: '1', FAKE_RM_LOG: log }, 'gpus only=0');
  t.same(ready.gpus, { '0': { deviceBytes: 2 * MiB, managedBytes: 0, hostBytes: 0, kernels: 10 } }, 'only GPU 0 opened');
  const [g0, g1] = [p.gpu(0), p.gpu(1)];
  t.same([g1.contexts, g1.rm().tsgs.length], [0, 0], 'GPU 1: no context, no channel group yet');
  t.match((await g1.setPriority(12)).message, /^priority 12 recorded; applied when the process creates its channels$/);
  t.match((await g1.freeze()).message, /^frozen before the first channel; new channels start disabled$/);
  t.same(controls(log, CMD_SET_TIMESLICE).concat(controls(log, CMD_DISABLE_CHANNELS)), [], 'no RM control yet');

  t.equal(await prog.ask('gpu 1', 'GPU 1'), 'GPU 1', 'the program opens GPU 1 now');
  const rm1 = g1.rm();
  t.equal(rm1.tsgs.length, 4, 'GPU 1: its channel groups');
  t.same(await rmState(prog, 'timeslice', rm1.tsgs.map((x) => x.handle)), [128, 128, 128, 128], 'created with priority 12 (128 us)');
  t.same(await rmState(prog, 'chan', rm1.channels.map((c) => c.handle)), Array(11).fill(1), 'and disabled: the freeze holds');
  t.ok(controls(log, CMD_DISABLE_CHANNELS).every((c) => c.hObject === rm1.subdevice && c.status === 0), "each disable went to GPU 1's subdevice");
  t.same(await rmState(prog, 'timeslice', g0.rm().tsgs.map((x) => x.handle)), [2048, 2048, 2048, 2048], "GPU 0's untouched");
  t.same(await rmState(prog, 'chan', g0.rm().channels.map((c) => c.handle)), Array(11).fill(0));
  await prog.ask('launch 2', 'LAUNCHED');
  await prog.ask('gpu 0', 'GPU 0');
  await prog.ask('launch 2', 'LAUNCHED');
  t.equal(await prog.ask('gsync', 'GSYNCED'), 'GSYNCED 0', 'GPU 0 runs');
  await new Promise((r) => setTimeout(r, 100));
  t.same([g1.kernels.submitted, g1.kernels.ended], [2, 0], "GPU 1's first kernels wait for the thaw");
  t.match((await g1.thaw()).message, /^thawed: 11 channels enabled/);
  t.ok(await settled(p, 1, 2), 'and run after it');
});

t.test("a reset of GPU 1's primary context drops GPU 1's memory, contexts and channels only", async (t) => {
  const shm = tmpShm(t);
  const { prog, p } = await gpus(t, shm, { GVM_RM_ANY_DRIVER: '1' });
  const [g0, g1] = [p.gpu(0), p.gpu(1)];
  await prog.ask('gpu 1', 'GPU 1');
  await prog.ask('alloc 6', 'ALLOC');
  t.same([g0.memory.current, g1.memory.current], [2 * MiB, 10 * MiB]);
  await g1.setPriority(15);
  t.equal(await prog.ask('reset', 'RESET'), 'RESET 0 1');
  t.ok(await until(() => g1.memory.current === 0), "GPU 1's memory went with its context");
  t.same([g1.contexts, g1.rm().tsgs.length, g1.rm().channels.length], [0, 0, 0], 'no context, channel group or channel left on GPU 1');
  t.same([g0.memory.current, g0.contexts, g0.rm().tsgs.length, g0.rm().channels.length], [2 * MiB, 1, 4, 11], 'GPU 0 as it was');
  t.equal(g1.compute.priority, 15, 'the setting stays with the GPU');
  await prog.ask('gpu 1', 'GPU 1');
  t.same(await rmState(prog, 'timeslice', g1.rm().tsgs.map((x) => x.handle)), [16, 16, 16, 16], 'a new context there takes it again');
  t.equal(await prog.ask('alloc 3', 'ALLOC'), 'ALLOC 0');
  t.same([g0.memory.current, g1.memory.current], [2 * MiB, 3 * MiB]);
});

t.test('the automatic policy per GPU: a latency burst on GPU 1 holds a best-effort process on GPU 1 only', async (t) => {
  const shm = tmpShm(t);
  const common = { GVM_RM_ANY_DRIVER: '1', GVM_POLICY_IDLE_MS: '5' };
  const best = await gpus(t, shm, { ...common, GVM_CLASS: 'best-effort' });
  const latency = await gpus(t, shm, { ...common, GVM_CLASS: 'latency' }, 'gpus only=1');
  const [b0, b1] = [best.p.gpu(0), best.p.gpu(1)];
  const boards = fs.readdirSync(path.join(shm, 'boards')).sort();
  t.equal(boards.length, 2, 'a policy board per GPU (named by UUID)');
  await until(() => !b0.policy.held && !b1.policy.held, 3000);
  const holds = [b0.policy.holds, b1.policy.holds];
  latency.prog.send('hold'); // its kernels stay pending: the burst lasts until release
  latency.prog.send('launch 3');
  t.ok(await until(() => b1.policy.held, 3000), "GPU 1's best-effort work held during the burst on GPU 1");
  t.equal(b1.policy.events.find((e) => e.kind === 'hold')?.pid, latency.ready.pid, 'by the latency process');
  t.same([b0.policy.held, b0.policy.holds], [false, holds[0]], 'its GPU 0 work never held');
  const ch1 = b1.rm().channels.map((c) => c.handle);
  t.ok((await rmState(best.prog, 'chan', ch1)).every((v) => v === 1), "GPU 1's channels stopped");
  t.same(await rmState(best.prog, 'chan', b0.rm().channels.map((c) => c.handle)), Array(11).fill(0), "GPU 0's run");
  await best.prog.ask('launch 4', 'LAUNCHED');
  t.equal(await best.prog.ask('gsync', 'GSYNCED'), 'GSYNCED 0', 'and finish work meanwhile');
  latency.prog.send('release');
  t.ok(await until(() => !b1.policy.held, 3000), 'released after the burst');
  t.same(await rmState(best.prog, 'chan', ch1), Array(11).fill(0), "GPU 1's channels run again");
});

t.test("swap mode on GPU 1 alone: a lowered limit moves GPU 1's bytes to the host and back intact, GPU 0 untouched", async (t) => {
  const shm = tmpShm(t);
  const log = path.join(shm, 'rm.log');
  const { prog, p } = await gpus(t, shm, { GVM_RM_ANY_DRIVER: '1', FAKE_RM_LOG: log });
  const [g0, g1] = [p.gpu(0), p.gpu(1)];
  t.match((await g1.command(GvmKey.MEMORY_MODE, 1)).message, /^mode swap/);
  t.same([g0.memory.mode, g1.memory.mode], ['oom', 'swap']);
  await prog.ask('gpu 1', 'GPU 1');
  t.equal(await prog.ask('buffers 4 4', 'BUFFERS'), 'BUFFERS 4', 'four 4 MiB buffers on GPU 1 (swap mode: movable)');
  await prog.ask('gpu 0', 'GPU 0');
  t.equal(await prog.ask('buffers 2 4', 'BUFFERS'), 'BUFFERS 6', 'two on GPU 0 (oom mode: plain)');
  t.same([g0.memory.current, g1.memory.current], [10 * MiB, 20 * MiB]);
  const ch0 = g0.rm().channels.map((c) => c.handle);
  const ch1 = g1.rm().channels.map((c) => c.handle);

  const out = await g1.setMemoryLimit(8 * MiB);
  t.match(out.message, /^limit set in \d+ ms/);
  // GPU 1: its first 4 MiB is plain (allocated before swap mode); the three oldest buffers go out
  t.same([g1.memory.current, g1.memory.swapCurrent], [8 * MiB, 12 * MiB], 'GPU 1 under its limit, 12 MiB on the host');
  t.same([g0.memory.current, g0.memory.swapCurrent], [10 * MiB, 0], 'GPU 0 untouched');
  t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 6', 'every byte of every buffer, on both GPUs');
  const stops = controls(log, CMD_DISABLE_CHANNELS);
  t.ok(stops.length >= 2, `the move stopped and resumed channels (${stops.length} controls)`);
  t.ok(stops.every((c) => c.hObject === g1.rm().subdevice && c.status === 0), "every stop went to GPU 1's subdevice");
  t.ok(stops.every((c) => listedChannels(c).every((h) => ch1.includes(h))), "listing GPU 1's channels only");
  t.same(await rmState(prog, 'chan', ch0), Array(11).fill(0), "GPU 0's channels never stopped");
  t.same([g0.rm().tsgs.length, g1.rm().tsgs.length], [4, 4], "the mover's own context on GPU 1 is not listed as the process's");
  t.same([g0.compute.frozen, g1.compute.frozen], [false, false]);

  await g1.setMemoryLimit(64 * MiB);
  t.same([g1.memory.current, g1.memory.swapCurrent], [20 * MiB, 0], 'raised: all back on GPU 1');
  t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 6', 'every byte back');
  await prog.ask('free', 'FREED');
  t.same([g0.memory.current, g1.memory.current, g1.memory.swapCurrent], [0, 0, 0]);
});

t.test('swap mode on both GPUs: each is moved under its own limit in the same pass', async (t) => {
  const shm = tmpShm(t);
  const { prog, p } = await gpus(t, shm, { GVM_RM_ANY_DRIVER: '1', GVM_MEMORY_MODE: 'swap' });
  const [g0, g1] = [p.gpu(0), p.gpu(1)];
  await prog.ask('buffers 3 4', 'BUFFERS');
  await prog.ask('gpu 1', 'GPU 1');
  await prog.ask('buffers 3 4', 'BUFFERS');
  t.same([g0.memory.current, g1.memory.current], [14 * MiB, 16 * MiB]);
  await g0.setMemoryLimit(6 * MiB);
  await g1.setMemoryLimit(10 * MiB);
  t.ok(g0.memory.current <= 6 * MiB && g1.memory.current <= 10 * MiB, `each under its own limit (${g0.memory.current}, ${g1.memory.current})`);
  t.same([g0.memory.current + g0.memory.swapCurrent, g1.memory.current + g1.memory.swapCurrent], [14 * MiB, 16 * MiB], 'nothing lost or counted on the other GPU');
  t.ok(g0.memory.swapCurrent >= 8 * MiB && g1.memory.swapCurrent >= 6 * MiB, 'both moved data out');
  t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 6');
  const held1 = [g1.memory.current, g1.memory.swapCurrent];
  await g0.setMemoryLimit(TOTAL);
  t.same([g0.memory.current, g0.memory.swapCurrent], [14 * MiB, 0], "GPU 0's limit raised: its data back");
  t.same([g1.memory.current, g1.memory.swapCurrent], held1, 'GPU 1 left where its own limit keeps it');
  t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 6');
});

t.test('gvmd and gvm ps show both GPUs of a process with their own numbers; a write reaches one GPU', async (t) => {
  const shm = tmpShm(t);
  const mount = tmpShm(t); // an empty directory, removed after gvmd unmounted it (teardowns run last first)
  const { ready, p } = await gpus(t, shm);
  t.ok((await settled(p, 0, 10)) && (await settled(p, 1, 20)));
  await startDaemon(t, mount, shm);
  const dir = path.join(mount, 'processes', String(ready.pid));
  t.same(fs.readdirSync(dir).sort(), ['0', '1'], 'a directory per GPU');
  for (const o of [0, 1]) {
    t.equal(fs.readFileSync(path.join(dir, String(o), 'memory.current'), 'utf8'), `${2 * (o + 1) * MiB}\n`, `GPU ${o}: memory.current`);
    t.match(fs.readFileSync(path.join(dir, String(o), 'gcgroup.stat'), 'utf8'), new RegExp(`^nr_submitted_kernels ${10 * (o + 1)}\\n`), `GPU ${o}: kernels`);
    t.equal(fs.readFileSync(path.join(mount, 'gpus', String(o), 'memory.used'), 'utf8'), `${2 * (o + 1) * MiB}\n`, `GPU ${o}: the GPU's total`);
  }
  fs.writeFileSync(path.join(dir, '1', 'memory.limit'), '8M\n');
  t.same([p.gpu(0).memory.limit, p.gpu(1).memory.limit], [TOTAL, 8 * MiB], 'echo 8M > 1/memory.limit limits GPU 1 only');
  t.equal(fs.readFileSync(path.join(dir, '0', 'memory.limit'), 'utf8'), `${TOTAL}\n`);
  fs.writeFileSync(path.join(dir, '1', 'compute.freeze'), '1\n');
  t.same([fs.readFileSync(path.join(dir, '0', 'compute.freeze'), 'utf8'), fs.readFileSync(path.join(dir, '1', 'compute.freeze'), 'utf8')], ['0\n', '1\n']);
  fs.writeFileSync(path.join(dir, '1', 'compute.freeze'), '0\n');

  const ps = cli(shm, ['ps', '--json']);
  const rows = (JSON.parse(ps.stdout) as Array<{ pid: number; gpu: { index: number; memory: { current: number; limit: number }; kernels: { submitted: number } } }>).filter(
    (r) => r.pid === ready.pid,
  );
  t.same(
    rows.map((r) => [r.gpu.index, r.gpu.memory.current, r.gpu.memory.limit, r.gpu.kernels.submitted]),
    [[0, 2 * MiB, TOTAL, 10], [1, 4 * MiB, 8 * MiB, 20]],
    'gvm ps --json: one row per GPU, each with its own numbers',
  );
});

t.test('gvmd numbers GPUs machine-wide like gvm: with a GPU the process cannot see, its ordinals 0 and 1 are GPUs 1 and 2', async (t) => {
  const shm = tmpShm(t);
  const mount = tmpShm(t); // an empty directory, removed after gvmd unmounted it (teardowns run last first)
  const { ready, p } = await gpus(t, shm);
  const proc = fs.mkdtempSync(path.join(shm, 'nvidia-gpus-'));
  // the driver's spelling of the ids; the agent's comes from cuDeviceGetPCIBusId
  for (const bus of ['0000:0f:00.0', '0000:10:00.0', '0000:11:00.0']) fs.mkdirSync(path.join(proc, bus));
  t.same([p.gpu(0).pciBusId.toLowerCase(), p.gpu(1).pciBusId.toLowerCase()], ['0000:10:00.0', '0000:11:00.0']);
  const saved = process.env.GVM_NVIDIA_PROC_DIR;
  process.env.GVM_NVIDIA_PROC_DIR = proc; // gvmd inherits it
  let daemon;
  try {
    daemon = await startDaemon(t, mount, shm);
  } finally {
    if (saved === undefined) delete process.env.GVM_NVIDIA_PROC_DIR;
    else process.env.GVM_NVIDIA_PROC_DIR = saved;
  }
  t.ok(daemon.port > 0);
  const dir = path.join(mount, 'processes', String(ready.pid));
  t.same(fs.readdirSync(dir).sort(), ['1', '2'], 'the process\'s GPUs are 1 and 2, as gvm ps shows them');
  t.equal(fs.readFileSync(path.join(dir, '2', 'memory.current'), 'utf8'), `${4 * MiB}\n`, "GPU 2 is its ordinal 1");
  fs.writeFileSync(path.join(dir, '2', 'memory.limit'), '16M\n');
  t.same([p.gpu(0).memory.limit, p.gpu(1).memory.limit], [TOTAL, 16 * MiB], 'a write to 2/ reaches ordinal 1');
  t.equal(cli(shm, ['get', `${ready.pid}:2`, 'memory.limit'], { GVM_NVIDIA_PROC_DIR: proc }).stdout, `${16 * MiB}\n`, 'and gvm agrees');
  t.same(fs.readdirSync(path.join(mount, 'gpus')).sort(), ['0', '1', '2'], 'every GPU of the machine listed');
  t.equal(fs.readFileSync(path.join(mount, 'gpus', '1', 'memory.used'), 'utf8'), `${2 * MiB}\n`);
  t.equal(fs.readFileSync(path.join(mount, 'gpus', '0', 'memory.used'), 'utf8'), '0\n', 'the GPU nobody uses');
});

for (const n of [4, 16]) {
  t.test(`FAKE_CUDA_DEVICES=${n}: settings on GPU ${n - 1} reach only that GPU`, async (t) => {
    const shm = tmpShm(t);
    const log = path.join(shm, 'rm.log');
    const last = n - 1;
    const { prog, ready, p } = await gpus(t, shm, { FAKE_CUDA_DEVICES: String(n), GVM_RM_ANY_DRIVER: '1', FAKE_RM_LOG: log }, `gpus n=${n}`);
    t.equal(p.gpuCount, n);
    t.equal(p.gpus.length, n, `all ${n} present`);
    for (let o = 0; o < n; o++) t.ok(await settled(p, o, 10 * (o + 1)), `GPU ${o}: ${10 * (o + 1)} kernels`);
    t.same(p.gpus.map((g) => g.memory.current), Array.from({ length: n }, (_, o) => 2 * (o + 1) * MiB), 'each GPU its own bytes');
    t.equal(new Set(p.gpus.map((g) => g.rm().subdevice)).size, n, 'a subdevice per GPU');
    const gl = p.gpu(last);

    await gl.setMemoryLimit(2 * n * MiB + MiB);
    t.same(p.gpus.map((g) => g.memory.limit), Array.from({ length: n }, (_, o) => (o === last ? 2 * n * MiB + MiB : TOTAL)));
    await prog.ask(`gpu ${last}`, `GPU ${last}`);
    t.equal(await prog.ask('alloc 2', 'ALLOC'), 'ALLOC 2', `GPU ${last} refuses past its limit`);
    await prog.ask('gpu 0', 'GPU 0');
    t.equal(await prog.ask('alloc 2', 'ALLOC'), 'ALLOC 0', 'GPU 0 does not');

    const r = cli(shm, ['set', `${ready.pid}:${last}`, 'compute.priority', '15']);
    t.equal(r.status, 0, r.stderr);
    const tsgLast = gl.rm().tsgs.map((x) => x.handle);
    t.same(sorted(controls(log, CMD_SET_TIMESLICE).map((c) => c.hObject)), sorted(tsgLast), `timeslice controls on GPU ${last}'s channel groups only`);
    t.same(p.gpus.map((g) => g.compute.priority), Array.from({ length: n }, (_, o) => (o === last ? 15 : 8)));

    await gl.freeze();
    const stops = controls(log, CMD_DISABLE_CHANNELS);
    t.same(stops.map((c) => [c.hObject, c.status]), [[gl.rm().subdevice, 0]], `one disable control, on GPU ${last}'s subdevice`);
    t.same(p.gpus.map((g) => g.compute.frozen), Array.from({ length: n }, (_, o) => o === last));
    const others = p.gpus.filter((g) => g.ordinal !== last).flatMap((g) => g.rm().channels.map((c) => c.handle));
    t.ok((await rmState(prog, 'chan', others)).every((v) => v === 0), 'every other GPU\'s channels enabled');
    for (const o of [0, last - 1]) {
      await prog.ask(`gpu ${o}`, `GPU ${o}`);
      await prog.ask('launch 2', 'LAUNCHED');
      t.equal(await prog.ask('gsync', 'GSYNCED'), `GSYNCED ${o}`, `GPU ${o} runs while GPU ${last} is frozen`);
    }
    await gl.thaw();
    t.equal(gl.compute.frozen, false);
  });
}

t.test('two processes, one GPU each (a two-rank job): settings of one never reach the other', async (t) => {
  const shm = tmpShm(t);
  const log = path.join(shm, 'rm.log');
  const env = { GVM_RM_ANY_DRIVER: '1', FAKE_RM_LOG: log };
  const a = await gpus(t, shm, env, 'gpus only=0');
  const b = await gpus(t, shm, env, 'gpus only=1');
  t.same(a.ready.gpus, { '0': { deviceBytes: 2 * MiB, managedBytes: 0, hostBytes: 0, kernels: 10 } });
  t.same(b.ready.gpus, { '1': { deviceBytes: 4 * MiB, managedBytes: 0, hostBytes: 0, kernels: 20 } });
  t.ok(await settled(a.p, 0, 10));
  t.ok(await settled(b.p, 1, 20));
  t.same([a.p.gpu(0).contexts, a.p.gpu(1).contexts, b.p.gpu(0).contexts, b.p.gpu(1).contexts], [1, 0, 0, 1], 'each a context on its own GPU');
  t.same([b.p.gpu(0).memory.current, b.p.gpu(1).memory.current], [0, 4 * MiB]);

  const r = cli(shm, ['freeze', `${b.ready.pid}:1`]);
  t.equal(r.status, 0, r.stderr);
  const stops = controls(log, CMD_DISABLE_CHANNELS);
  t.same(stops.map((c) => [c.pid, c.hObject]), [[b.ready.pid, b.p.gpu(1).rm().subdevice]], "one control, from B, on B's GPU 1 subdevice");
  t.equal(await a.prog.ask('launch 3', 'LAUNCHED'), 'LAUNCHED 3');
  t.equal(await a.prog.ask('gsync', 'GSYNCED'), 'GSYNCED 0', "A's GPU 0 keeps running");
  t.ok(await settled(a.p, 0, 13));
  await b.p.gpu(1).setMemoryLimit(6 * MiB);
  await a.p.gpu(0).setPriority(2);
  t.same([a.p.gpu(0).memory.limit, a.p.gpu(1).memory.limit], [TOTAL, TOTAL], "B's limit is B's");
  t.same([b.p.gpu(0).compute.priority, b.p.gpu(1).compute.priority], [8, 8], "A's priority is A's");
  const sets = controls(log, CMD_SET_TIMESLICE);
  t.ok(sets.length === 4 && sets.every((c) => c.pid === a.ready.pid), 'timeslices set by A only, 4 of them');
  t.same(sorted(sets.map((c) => c.hObject)), sorted(a.p.gpu(0).rm().tsgs.map((x) => x.handle)), "on A's GPU 0 channel groups");
  t.equal(cli(shm, ['thaw', `${b.ready.pid}`]).status, 0);
  t.equal(await b.prog.ask('gsync', 'GSYNCED'), 'GSYNCED 1');
});

for (const [exporterGpu, importerGpu] of [[1, 0], [1, 1], [0, 1]] as const) {
  t.test(`CUDA IPC of a swap-mode range between two processes: exporter on GPU ${exporterGpu}, importer on GPU ${importerGpu}`, async (t) => {
    const shm = tmpShm(t);
    const swapEnv = { GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1', GVM_MEMORY_LIMIT: String(16 * MiB) };
    const exporter = spawnFake(t, 'gvm-memory-prog', ['ipc-export', 'mib=64', `gpu=${exporterGpu}`], fakeEnv(shm, swapEnv));
    const handle = (await exporter.line('HANDLE')).split(' ')[1]!;
    const bytes = Buffer.from(handle, 'hex');
    t.equal(bytes.subarray(0, 8).toString('latin1'), 'gvm-ipc\u0001', "gvm's handle");
    t.equal(bytes.readInt32LE(8), exporter.child.pid, "naming the exporter's pid");
    t.equal(bytes.readUInt32LE(12), exporterGpu, `and GPU ${exporterGpu}`);
    using p = await Gvm.process(exporter.child.pid!, { shmDir: shm });
    const other = 1 - exporterGpu;
    t.same(
      [p.gpu(exporterGpu).memory.current, p.gpu(exporterGpu).memory.swapCurrent, p.gpu(other).memory.current],
      [65 * MiB, 0, 0],
      `pinned on GPU ${exporterGpu} (brought back from the host), nothing on GPU ${other}`,
    );
    const importer = spawnFake(t, 'gvm-memory-prog', ['ipc-import', 'mib=64', `handle=${handle}`, `gpu=${importerGpu}`], fakeEnv(shm, { GVM_MEMORY_MODE: 'swap' }));
    t.equal(await importer.line('OPENED'), 'OPENED 0', `opened on GPU ${importerGpu}`);
    t.equal(await importer.line('VERIFIED'), 'VERIFIED ok', "read the exporter's bytes");
    t.equal(await importer.line('WRITTEN'), 'WRITTEN ok');
    t.equal(await importer.line('CLOSED'), 'CLOSED 0');
    t.equal(await importer.exited, 0);
    t.equal(await exporter.ask('verify 2', 'VERIFIED'), 'VERIFIED ok', "the exporter sees the importer's bytes");
    exporter.send('exit');
    t.equal(await exporter.exited, 0);
  });
}

t.test('test/gpu/multi_gpu_check.c on the fake driver: accounting, limit, priority, freeze and swap of GPU 1 only', async (t) => {
  const bin = path.join(FAKE, 'bin', 'gvm-multi-gpu-check');
  const r = spawnSync(bin, ['3'], { encoding: 'utf8', env: fakeEnv(tmpShm(t), { GVM_RM_ANY_DRIVER: '1' }), timeout: 90000 });
  t.equal(r.status, 0, r.status === 0 ? 'exit 0' : `${r.stdout}${r.stderr}`);
  const lines = r.stdout.split('\n');
  for (const want of [
    /^ok +GPU 0: memory.current 67108864 = the 64 MiB allocated there$/,
    /^ok +GPU 1: 200 kernels submitted, 200 ended/,
    /^ok +GPU 1: cuMemGetInfo total 160 MiB \(the limit\), free 32 MiB$/,
    /^ok +GPU 1: all 4 TSGs read back 16 us/,
    /^ok +GPU 0: its 4 TSGs read back what they had before$/,
    /^ok +GPU 1 made zero progress in 3 of 3 frozen windows/,
    /^ok +GPU 0 kept progressing in 3 of 3/,
    /^ok +GPU 1: 192 MiB on the GPU, 192 MiB moved to the host$/,
    /^ok +and every byte intact after the move back \(4 of 4\)$/,
  ]) {
    t.ok(lines.some((l) => want.test(l)), String(want));
  }
  t.same(lines.filter((l) => l.startsWith('FAIL')), [], 'no failed check');
  t.ok(lines.includes('0 failure(s)'));

  const one = spawnSync(bin, [], { encoding: 'utf8', env: fakeEnv(tmpShm(t), { FAKE_CUDA_DEVICES: '1' }), timeout: 30000 });
  t.equal(one.status, 0, 'one GPU: exit 0');
  t.equal(one.stdout, 'SKIP: 1 GPU(s) visible, this check needs 2\n', 'with a SKIP line');
});

t.test('test/gpu/multi_gpu_check.sh on the fake driver (GVM_CHECK_FAKE=1): the program, then the CLI steering one GPU', async (t) => {
  const r = spawnSync('bash', [path.join(ROOT, 'test', 'gpu', 'multi_gpu_check.sh'), '2'], {
    encoding: 'utf8',
    env: { ...process.env, GVM_CHECK_FAKE: '1', OUT: '' },
    timeout: 110000,
  });
  t.equal(r.status, 0, r.status === 0 ? 'exit 0' : `${r.stdout}${r.stderr}`);
  const lines = r.stdout.split('\n');
  for (const want of [
    /^ok +multi_gpu_check: every check held$/,
    /^ok +gvm ps --json: one row per GPU \(0:67108864 1:134217728\)$/,
    /^ok +gvm set PID:1 memory.limit 1G: GPU 1 limited/,
    /^ok +gvm set PID:1 compute.priority 15: 4 of GPU 1's 4 TSGs at 16 us, none of GPU 0's/,
    /^ok +gvm freeze PID:1: GPU 1 stood still for 1 s/,
    /^ok +gvm thaw PID:1: GPU 1 progresses again/,
  ]) {
    t.ok(lines.some((l) => want.test(l)), String(want));
  }
  t.ok(lines.includes('multi-GPU check: 0 failure(s)'));
});

for (const [e, i] of [[0, 1], [1, 0]] as const) {
  t.test(`test/gpu/ipc_check.c on the fake driver: exporter on GPU ${e}, importer on GPU ${i}`, async (t) => {
    const r = spawnSync(path.join(FAKE, 'bin', 'gvm-ipc-check'), [String(e), String(i)], {
      encoding: 'utf8',
      env: fakeEnv(tmpShm(t), { GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1' }),
      timeout: 60000,
    });
    t.equal(r.status, 0, r.status === 0 ? 'exit 0' : `${r.stdout}${r.stderr}`);
    const lines = r.stdout.split('\n');
    for (const want of [
      `     exporter on GPU ${e}, importer on GPU ${i} (peer access)`,
      'ok   the 64 MiB allocation was placed on the host (over the limit)',
      'ok   exporting brought it back to the GPU',
      'ok   the importer opened the handle and read every byte the exporter wrote',
      'ok   the exporter reads every byte the importer wrote',
      "ok   the exporter's memory is counted on its own GPU only, none on another GPU's slot",
      '0 failure(s)',
    ]) {
      t.ok(lines.includes(want), want.trim());
    }
    t.same(lines.filter((l) => l.startsWith('FAIL')), [], 'no failed check');
  });
}

t.test("a command sent right after cuInit is applied, never acknowledged unapplied (ipc_check's first limit, 4 at once)", async (t) => {
  // ipc_check lowers its own limit a moment after cuInit, when the agent's control thread may not
  // have run yet; one that took the pending command for answered made the 64 MiB allocation fit on
  // the GPU (about 2 in 3 runs failed so on a loaded 2-core machine)
  const once = (shm: string) =>
    new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = spawn(path.join(FAKE, 'bin', 'gvm-ipc-check'), [], { env: fakeEnv(shm, { GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1' }) });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.on('exit', (code) => resolve({ code, out }));
    });
  const runs: Array<{ code: number | null; out: string }> = [];
  for (let round = 0; round < 3; round++) runs.push(...(await Promise.all([0, 1, 2, 3].map(() => once(tmpShm(t))))));
  const failed = runs.filter((r) => r.code !== 0);
  t.equal(failed.length, 0, failed[0]?.out.split('\n').filter((l) => l.startsWith('FAIL') || l.includes('limit')).join(' | ') ?? 'all 12 runs held');
  const first = (out: string) => out.split('\n').find((l) => l.startsWith('     limit ')) ?? '';
  t.ok(runs.every((r) => /^ {5}limit \d+: limit set in \d+ ms/.test(first(r.out))), "each first limit was answered by the agent (a real answer, not an empty one)");
});
