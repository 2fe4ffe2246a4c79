// Memory under the real agent on the fake driver: accounting exact to the byte over random (seeded)
// sequences of every allocation path, from one thread and from eight, the oom limit exact at the
// boundary, cuMemGetInfo under a limit, swap-mode moves that keep every byte over random limit
// changes, and CUDA IPC of swap-mode ranges between two processes. The scenarios live in
// test/fake-cuda/progs/memory_prog.c (gvm-memory-prog), which compares gvm's control block with
// its own bookkeeping and with the driver after every step and prints BAD on any difference.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

import { Gvm } from '../lib/index';
import { AGENT, FAKE, FAKE_RM, Prog, fakeEnv, spawnFake, traceCalls, until } from './fake-prog';
import { tmpShm } from './helpers';

const PROG = path.join(FAKE, 'bin', 'gvm-memory-prog');
const MiB = 1 << 20;

/** Runs a scenario to its end; returns stdout lines and the exit status. */
function runProg(shm: string, args: string[], extra: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(PROG, args, { encoding: 'utf8', env: fakeEnv(shm, extra), timeout: 60000 });
  return { status: r.status, lines: r.stdout.split('\n').filter(Boolean), stderr: r.stderr };
}

/** gvm-memory-prog with a scenario, driven over stdin (see test/fake-prog.ts). */
function memProg(t: Tap.Test, shm: string, args: string[], extra: NodeJS.ProcessEnv = {}, agent = true): Prog {
  return spawnFake(t, 'gvm-memory-prog', args, fakeEnv(shm, extra, agent));
}

/** A small seeded generator (mulberry32), so a failing sequence can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

t.before(() => {
  for (const f of [AGENT, FAKE_RM, PROG]) {
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: run npm install (cmake-js builds it)`);
  }
});

for (const seed of [1, 2, 3]) {
  t.test(`accounting exact to the byte over a random sequence of every allocation path (seed ${seed})`, async (t) => {
    const r = runProg(tmpShm(t), ['random', `seed=${seed}`, 'steps=250']);
    t.equal(r.status, 0, r.stderr);
    t.same(r.lines.filter((l) => l.startsWith('BAD')), [], 'memory.current = the driver = the program after each step');
    for (const kind of ['cuMemAlloc', 'cuMemAllocPitch', 'cuMemAllocAsync', 'cuMemAllocFromPoolAsync', 'VMM device', 'VMM host']) {
      const n = Number(/^ok (\d+) x /.exec(r.lines.find((l) => l.endsWith(` x ${kind}`)) ?? '')?.[1] ?? 0);
      t.ok(n > 0, `${kind} was exercised (${n} times)`);
    }
    t.ok(r.lines.includes('DONE 250 0'), 'every step checked, back to zero after the frees');
  });
}

t.test('8 threads allocating and freeing every kind at once: exact totals', async (t) => {
  for (const seed of [1, 2]) {
    const r = runProg(tmpShm(t), ['threads', `seed=${seed}`, 'steps=150']);
    t.equal(r.status, 0, r.stderr);
    t.same(r.lines.filter((l) => l.startsWith('BAD')), [], `seed ${seed}: totals, host bytes and live count exact`);
    t.ok(r.lines.includes('DONE 1200 0'));
  }
});

t.test('oom limit: refusal exact at the boundary for every kind, and under 8 racing threads', async (t) => {
  const limit = 100 * MiB + 12345;
  const r = runProg(tmpShm(t), ['limit'], { GVM_MEMORY_LIMIT: String(limit) });
  t.equal(r.status, 0, r.stderr);
  t.same(r.lines.filter((l) => l.startsWith('BAD')), []);
  for (const what of [
    'cuMemAlloc(room + 1): 2',
    'cuMemAlloc(room): 0',
    'cuMemAlloc(1) at the limit: 2',
    'cuMemAllocPitch whose padding passes the limit: 2',
    'cuMemAllocPitch that fits with its padding: 0',
    'cuMemCreate(room rounded up): 2',
    'cuMemCreate(room rounded down): 0',
    'cuMemAllocAsync(room + 1): 2',
    'cuMemAllocAsync(room): 0',
    'cuMemAlloc(1) with the pool at the limit: 2',
  ]) {
    t.ok(r.lines.includes(`ok ${what}`), what);
  }
  t.ok(r.lines.includes('ok 8 threads were granted exactly 100 x 1 MiB'), 'no thread refused while room was left');
});

t.test('cuMemGetInfo under a limit: total = limit, free = min(limit - current, what the GPU has free)', async (t) => {
  // the GPU: 200 MiB; other processes hold `others`; the limit is 100 MiB; 24 MiB more each line
  for (const others of [40 * MiB, 130 * MiB]) {
    const gpu = 200 * MiB;
    const limit = 100 * MiB;
    const r = runProg(tmpShm(t), ['meminfo'], {
      GVM_MEMORY_LIMIT: String(limit),
      FAKE_CUDA_MEM_BYTES: String(gpu),
      FAKE_CUDA_USED_BYTES: String(others),
    });
    t.equal(r.status, 0, r.stderr);
    const rows = r.lines.filter((l) => l.startsWith('MEMINFO')).map((l) => l.split(' ').slice(1).map(Number));
    t.ok(rows.length >= 3, `${rows.length} readings`);
    for (const [free, total, current] of rows) {
      const want = Math.min(limit - current!, gpu - others - current!);
      t.same([free, total], [want, limit], `others ${others / MiB} MiB, current ${current! / MiB} MiB: free ${want / MiB} MiB`);
    }
    const binding = others === 40 * MiB ? 'the limit' : 'the GPU';
    t.ok(r.lines.some((l) => l.startsWith('REFUSED 2')), `allocation refused once ${binding} is full`);
  }
});

for (const [what, tuning, steps] of [
  ['default mover', {}, 20],
  ['3 streams, 2 MiB chunks, an 8 MiB pool', { GVM_SWAP_STREAMS: '3', GVM_SWAP_CHUNK_MIB: '2', GVM_SWAP_POOL_MIB: '8' }, 8],
] as const) {
  t.test(`swap mode (${what}): every byte survives a random sequence of limit changes and writes`, async (t) => {
    const shm = tmpShm(t);
    const prog = memProg(t, shm, ['swap', 'seed=5', 'count=8'], { GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1', ...tuning });
    const [, , totalStr] = (await prog.line('READY')).split(' ');
    const total = Number(totalStr);
    using p = await Gvm.process(prog.child.pid!, { shmDir: shm });
    const g = p.gpu(0);
    t.equal(g.memory.current + g.memory.swapCurrent, total, 'every buffer counted once, in 2 MiB granules');
    const next = rng(42);
    let moves = 0;
    for (let step = 0; step < steps; step++) {
      const limit = Math.max(2 * MiB, Math.floor(next() * (total + 8 * MiB)));
      const before = g.memory.current;
      await g.setMemoryLimit(limit);
      if (g.memory.current !== before) moves++;
      t.ok(g.memory.current <= limit || g.memory.swapCurrent === 0, `step ${step}: under the limit ${limit}`);
      t.equal(g.memory.current + g.memory.swapCurrent, total, `step ${step}: nothing lost or counted twice`);
      if (next() < 0.5) await prog.ask(`write ${Math.floor(next() * 8)}`, 'WRITTEN');
      t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 8', `step ${step}: every byte of every buffer`);
    }
    t.ok(moves >= steps / 2, `${moves} of ${steps} limit changes moved data`);
    t.equal(g.compute.frozen, false, 'never left frozen');
    await prog.ask('free', 'FREED');
    t.same([g.memory.current, g.memory.swapCurrent], [0, 0], 'all freed, wherever it lived');
  });
}

for (const mode of ['oom', 'swap'] as const) {
  t.test(`${mode} mode: the limit changed every few ms while 4 threads allocate, fill, check and free (test/gpu/limit_race.c)`, async (t) => {
    const shm = tmpShm(t);
    const bin = path.join(FAKE, 'bin', 'gvm-limit-race');
    const r = spawnSync(bin, ['6', '256'], {
      encoding: 'utf8',
      env: fakeEnv(shm, { GVM_MEMORY_MODE: mode, GVM_RM_ANY_DRIVER: '1' }),
      timeout: 90000,
    });
    t.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    const lines = r.stdout.split('\n');
    t.ok(lines.some((l) => /^ok +every buffer held its pattern at every check \(0 bad/.test(l)), 'every buffer intact at every check');
    t.ok(lines.some((l) => /^ok +all freed: memory.current 0 \(started at 0\), swap 0/.test(l)), 'back to zero, nothing on the host');
    t.ok(lines.some((l) => (mode === 'swap' ? /^ok +swap mode refused no allocation/ : /^ok +oom mode refused allocations past the limit/).test(l)),
      mode === 'swap' ? 'no allocation refused' : 'allocations past the limit refused with out-of-memory');
    t.ok(lines.includes('0 failure(s)'));
  });
}

for (const prewarm of [true, false]) {
  t.test(`swap mode ${prewarm ? 'with' : 'without'} a pre-warm: ${prewarm ? 'the first move out creates no host memory' : 'a move out creates its host memory'}`, async (t) => {
    const shm = tmpShm(t);
    const trace = path.join(shm, 'trace');
    const creates = () => traceCalls(trace).get('cuMemCreate') ?? 0;
    const env: NodeJS.ProcessEnv = { GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1', GVM_LOG: 'info', FAKE_CUDA_TRACE: trace };
    if (prewarm) env.GVM_SWAP_PREWARM_MIB = '4096';
    const prog = memProg(t, shm, ['swap', 'seed=9', 'count=6'], env);
    const total = Number((await prog.line('READY')).split(' ')[2]);
    using p = await Gvm.process(prog.child.pid!, { shmDir: shm });
    const g = p.gpu(0);
    if (prewarm) {
      // it follows the ranges as they appear, and says so each time it has caught up
      const done = new RegExp(`swap pre-warm: host memory ready for ${total / MiB} MiB on GPU 0 \\(\\d+ MiB made\\)`);
      t.ok(await until(() => done.test(prog.stderr), 10000), 'host memory ready for every range, and said so');
      const made = [...prog.stderr.matchAll(/\((\d+) MiB made\)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
      t.equal(made, total / MiB, 'made once for each range, none twice');
    } else {
      await new Promise((r) => setTimeout(r, 600)); // two mover passes: time enough for a pre-warm, were there one
      t.notMatch(prog.stderr, /pre-warm/, 'no pre-warm unless asked for');
    }
    const before = creates();
    await g.setMemoryLimit(2 * MiB);
    t.ok(g.memory.swapCurrent >= total - 2 * MiB, `moved out (${g.memory.swapCurrent / MiB} of ${total / MiB} MiB)`);
    const during = creates() - before;
    if (prewarm) {
      t.equal(during, 0, 'no host memory created inside the move: it was ready');
      await new Promise((r) => setTimeout(r, 600)); // two mover passes
      t.equal(creates() - before, 0, 'nor after it: what is on the host counts against the pre-warm, no second reserve');
    }
    else t.ok(during >= 5, `the move created its host memory (${during} cuMemCreate calls)`);
    t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 6', 'every byte on the host');
    await g.setMemoryLimit(total);
    t.same([g.memory.current, g.memory.swapCurrent], [total, 0], 'and back');
    t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 6', 'every byte back on the GPU');
  });
}

t.test('swap pre-warm larger than the pool: it stops at the pool, says so once, and churns nothing', async (t) => {
  const shm = tmpShm(t);
  const trace = path.join(shm, 'trace');
  const creates = () => traceCalls(trace).get('cuMemCreate') ?? 0;
  const prog = memProg(t, shm, ['swap', 'seed=9', 'count=6'], {
    GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1', GVM_LOG: 'info', FAKE_CUDA_TRACE: trace,
    GVM_SWAP_PREWARM_MIB: '4096', GVM_SWAP_POOL_MIB: '8',
  });
  await prog.line('READY');
  t.ok(await until(() => /swap pre-warm stopped short of \d+ MiB for GPU 0: GVM_SWAP_POOL_MIB is smaller/.test(prog.stderr), 10000), 'a clear warning');
  const settled = creates();
  await new Promise((r) => setTimeout(r, 700)); // more than two mover passes
  t.equal(creates(), settled, 'no host memory made and dropped over and over');
  t.equal(prog.stderr.match(/pre-warm stopped/g)?.length, 1, 'said once');
  t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 6', 'the program unharmed');
});

t.test('swap mode: a frozen process is moved to the host and back while it stays frozen', async (t) => {
  const shm = tmpShm(t);
  const prog = memProg(t, shm, ['swap', 'seed=3', 'count=6'], { GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1' });
  const total = Number((await prog.line('READY')).split(' ')[2]);
  using p = await Gvm.process(prog.child.pid!, { shmDir: shm });
  const g = p.gpu(0);
  await g.freeze();
  t.equal(g.compute.frozen, true);
  // the application's own copies wait while it is frozen (its copy channels are stopped too)
  const mark = prog.lines.length;
  prog.child.stdin.write('verify\n');
  await new Promise((r) => setTimeout(r, 300));
  t.notOk(prog.lines.slice(mark).some((l) => l.startsWith('VERIFIED')), "the frozen process's own read did not run");
  const out = await g.setMemoryLimit(2 * MiB);
  t.match(out.message, /limit set/);
  t.ok(g.memory.swapCurrent >= total - 2 * MiB, `moved out while frozen (${g.memory.swapCurrent} of ${total} bytes on the host)`);
  t.equal(g.compute.frozen, true, 'still frozen after the move');
  await g.setMemoryLimit(total);
  t.same([g.memory.current, g.memory.swapCurrent], [total, 0], 'and back, still frozen');
  t.equal(g.compute.frozen, true);
  await g.thaw();
  t.equal(await prog.line('VERIFIED', mark), 'VERIFIED ok 6', 'after the thaw its read ran and found every byte');
});

t.test('swap mode under injected driver failures (maps, access, copies): nothing lost, nothing counted twice', async (t) => {
  const shm = tmpShm(t);
  // every 4th cuMemSetAccess, every 5th cuMemMap and every 3rd cuMemcpyAsync fail: staging, second
  // mappings, remaps and copies each fail somewhere in the sequence, on both sides of the window
  const prog = memProg(t, shm, ['swap', 'seed=11', 'count=8'], {
    GVM_MEMORY_MODE: 'swap',
    GVM_RM_ANY_DRIVER: '1',
    FAKE_CUDA_FAIL: 'cuMemSetAccess:4,cuMemMap:5,cuMemcpyAsync:3',
  });
  const rounded = Number((await prog.line('READY')).split(' ')[2]);
  using p = await Gvm.process(prog.child.pid!, { shmDir: shm });
  const g = p.gpu(0);
  // an allocation whose movable range the driver refused stays plain, counted at its own size
  const total = g.memory.current + g.memory.swapCurrent;
  t.ok(total > 0 && total <= rounded, `all 8 allocations counted at start (${total} of at most ${rounded} bytes)`);
  t.match(prog.stderr, /a movable range could not be set up .*stays plain/, 'the refused range was reported, the allocation kept');
  const next = rng(7);
  let moved = 0;
  for (let step = 0; step < 16; step++) {
    const limit = Math.max(2 * MiB, Math.floor(next() * (total + 8 * MiB)));
    const before = g.memory.current;
    await g.setMemoryLimit(limit);
    if (g.memory.current !== before) moved++;
    t.equal(g.memory.current + g.memory.swapCurrent, total, `step ${step}: every buffer counted once`);
    if (next() < 0.5) await prog.ask(`write ${Math.floor(next() * 8)}`, 'WRITTEN');
    t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 8', `step ${step}: every byte of every buffer`);
  }
  t.ok(moved >= 4, `moves still happened between the failures (${moved} of 16 limit changes moved data)`);
  t.match(prog.stderr, /a move to the (host|GPU) failed; the range stays where it was/, 'failed moves were reported');
  t.equal(g.compute.frozen, false, 'never left frozen');
  await prog.ask('free', 'FREED');
  t.same([g.memory.current, g.memory.swapCurrent], [0, 0], 'all freed, wherever it lived');
});

t.test('swap mode: stream-ordered pool memory past the limit is admitted; movable ranges make room, then come back', async (t) => {
  const shm = tmpShm(t);
  const prog = memProg(t, shm, ['swap', 'seed=9', 'count=6'], { GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1' });
  const total = Number((await prog.line('READY')).split(' ')[2]);
  using p = await Gvm.process(prog.child.pid!, { shmDir: shm });
  const g = p.gpu(0);
  await g.setMemoryLimit(total);
  t.same([g.memory.current, g.memory.swapCurrent], [total, 0], 'the buffers fill the limit exactly, all on the GPU');
  t.equal(await prog.ask('async 8', 'ASYNC'), 'ASYNC 0', 'cuMemAllocAsync of 8 MiB past the limit succeeds (oom mode refuses it)');
  const deadline = Date.now() + 10000;
  while (g.memory.current > total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.ok(g.memory.current <= total, `the mover brought the process back under its limit (${g.memory.current} <= ${total})`);
  t.ok(g.memory.swapCurrent >= 8 * MiB, `at least the pool's 8 MiB of buffers moved to the host (${g.memory.swapCurrent})`);
  t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 6', 'every byte of every buffer, wherever it lives');
  t.equal(await prog.ask('asyncfree', 'ASYNCFREED'), 'ASYNCFREED');
  const back = Date.now() + 10000;
  while (g.memory.swapCurrent > 0 && Date.now() < back) await new Promise((r) => setTimeout(r, 20));
  t.same([g.memory.current, g.memory.swapCurrent], [total, 0], 'once the pool was trimmed, the buffers came back');
  t.equal(await prog.ask('verify', 'VERIFIED'), 'VERIFIED ok 6', 'and kept every byte');
});

t.test('CUDA IPC of a swap-mode range: pinned on the GPU, shared bytes both ways, other handles untouched', async (t) => {
  const shm = tmpShm(t);
  const swapEnv = { GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1', GVM_MEMORY_LIMIT: String(16 * MiB) };
  const exporter = memProg(t, shm, ['ipc-export', 'mib=64'], swapEnv);
  const handleLine = await exporter.line('HANDLE');
  const handle = handleLine.split(' ')[1]!;
  t.match(handle, /^67766d2d69706301/, "gvm's marker leads the handle");
  t.equal(await exporter.line('PLAIN'), 'PLAIN 0 FAKEIPC', "a 1 MiB allocation (not converted) gets the driver's own handle");
  using p = await Gvm.process(exporter.child.pid!, { shmDir: shm });
  const g = p.gpu(0);
  t.equal(g.memory.swapCurrent, 0, 'the range was over the limit, on the host; exporting brought it back');
  t.equal(g.memory.current, 65 * MiB, 'on the GPU now, past the limit');
  await g.setMemoryLimit(2 * MiB);
  t.same([g.memory.current, g.memory.swapCurrent], [65 * MiB, 0], 'a lowered limit does not move a pinned range');
  t.ok(fs.existsSync(path.join(shm, `.${exporter.child.pid}.ipc`)), "the exporter's agent serves descriptors");
  t.equal((fs.statSync(path.join(shm, `.${exporter.child.pid}.ipc`)).mode & 0o777).toString(8), '600', 'to its user only');

  const importer = memProg(t, shm, ['ipc-import', 'mib=64', `handle=${handle}`], { GVM_MEMORY_MODE: 'swap' });
  t.equal(await importer.line('OPENED'), 'OPENED 0', 'another process under the agent opens it');
  t.equal(await importer.line('VERIFIED'), 'VERIFIED ok', "and reads the exporter's bytes");
  t.equal(await importer.line('WRITTEN'), 'WRITTEN ok');
  t.equal(await importer.line('CLOSED'), 'CLOSED 0', 'cuIpcCloseMemHandle unmaps and releases');
  t.equal(await importer.exited, 0);
  t.equal(await exporter.ask('verify 2', 'VERIFIED'), 'VERIFIED ok', "the exporter sees the importer's bytes");

  const again = memProg(t, shm, ['ipc-import', 'mib=64', `handle=${handle}`]);
  t.equal(await again.line('OPENED'), 'OPENED 0', 'a handle opens again (and in an oom-mode process)');
  t.equal(await again.line('VERIFIED'), 'VERIFIED bad', 'seeing the current bytes (generation 2), not generation 1');
  await again.exited;

  const bare = memProg(t, shm, ['ipc-import', 'mib=64', `handle=${handle}`], {}, false);
  t.equal(await bare.line('OPENED'), 'OPENED 1', "without the agent: the driver's error for a handle it does not know");
  await bare.exited;

  t.equal(await exporter.ask('free', 'FREED'), 'FREED 0');
  const stale = memProg(t, shm, ['ipc-import', 'mib=64', `handle=${handle}`]);
  t.equal(await stale.line('OPENED'), 'OPENED 1', 'once freed, its handle opens nothing');
  await stale.exited;
  exporter.child.stdin.write('exit\n');
  t.equal(await exporter.exited, 0);
  t.notOk(fs.existsSync(path.join(shm, `.${exporter.child.pid}.ipc`)), 'the socket is removed at exit');
});
