// The automatic policy: the state machine alone (a C harness), then real agents in fake-driver
// programs sharing one policy board: a latency process's bursts hold a best-effort one and its end
// releases it; death mid-burst, exit, a user's freeze, throttle, class changes and memory lending.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

import { Gvm, GvmGpu } from '../lib/index';
import { Prog, start, until } from './fake-prog';
import { createMetrics } from '../lib/daemon/metrics';
import { gvm, parseExposition, RELEASE, rmLogParams, tmpShm } from './helpers';

const RM_DISABLE_CHANNELS = '2080110b';
const RM_SET_TIMESLICE = 'a06c0103';

t.test('the state machine: bursts, hysteresis, several processes, frozen and vanished peers', async (t) => {
  const r = spawnSync(path.join(RELEASE, 'gvm-test-policy-rules'), { encoding: 'utf8' });
  t.equal(r.status, 0, r.stdout.split('\n').filter((l) => l.startsWith('not ok')).join('\n') || 'all checks pass');
  const plan = /^1\.\.(\d+)$/m.exec(r.stdout);
  t.ok(plan && Number(plan[1]) >= 25, `the harness ran its checks (${plan?.[1]})`);
});

interface Pair {
  shm: string;
  latency: Prog;
  best: Prog;
  lpid: number;
  bpid: number;
  bgpu: GvmGpu;
  lgpu: GvmGpu;
}

async function pid(p: Prog): Promise<number> {
  const l = await p.line('READY');
  return (JSON.parse(l.slice(6)) as { pid: number }).pid;
}

/** A best-effort and a latency program on one (fake) GPU, both ready. */
async function pair(t: Tap.Test, bestEnv: NodeJS.ProcessEnv = {}, latencyEnv: NodeJS.ProcessEnv = {}, bestScenario = 'basic'): Promise<Pair> {
  const shm = tmpShm(t);
  const common = { GVM_RM_ANY_DRIVER: '1', GVM_POLICY_IDLE_MS: '5', FAKE_CUDA_DEVICES: '1' };
  const best = start(t, shm, 'direct', bestScenario, { ...common, GVM_CLASS: 'best-effort', ...bestEnv });
  const bpid = await pid(best);
  const latency = start(t, shm, 'direct', 'basic', { ...common, GVM_CLASS: 'latency', ...latencyEnv });
  const lpid = await pid(latency);
  const bproc = await Gvm.process(bpid, { shmDir: shm });
  const lproc = await Gvm.process(lpid, { shmDir: shm });
  t.teardown(() => {
    bproc.close();
    lproc.close();
  });
  return { shm, latency, best, lpid, bpid, bgpu: bproc.gpu(0), lgpu: lproc.gpu(0) };
}

async function rmCount(p: Prog, cmd: string): Promise<number> {
  const mark = p.send(`rmcount ${cmd}`);
  return Number((await p.line('RMCOUNT', mark)).split(' ')[1]);
}

t.test('a burst holds the best-effort process; the end of it releases the process', async (t) => {
  const { shm, latency, best, lpid, bgpu, lgpu } = await pair(t);
  t.equal(bgpu.policy.class, 'best-effort', 'best-effort class in the block');
  t.equal(lgpu.policy.class, 'latency', 'latency class in the block');
  const boards = fs.readdirSync(path.join(shm, 'boards'));
  t.same(boards, [`gpu-${bgpu.uuid.replace(/^GPU-/, '').replace(/-/g, '')}.board`], 'one board, named by the GPU UUID');
  t.equal(fs.statSync(path.join(shm, 'boards', boards[0]!)).mode & 0o777, 0o660, 'the board is shared with the group only');
  t.equal(fs.statSync(path.join(shm, 'boards')).mode & 0o7777, 0o1777, 'any user may add a board, none remove another\'s');

  // the scenario's own start-up kernels were bursts too: count from here
  await until(() => !bgpu.policy.held, 3000);
  const holds0 = bgpu.policy.holds;
  const bursts0 = lgpu.policy.bursts;
  const disabledBefore = await rmCount(best, RM_DISABLE_CHANNELS);
  latency.send('hold'); // kernels stay pending: the burst lasts until "release"
  latency.send('launch 3');
  t.ok(await until(() => bgpu.policy.held, 3000), 'best-effort held while the latency burst is pending');
  t.ok((await rmCount(best, RM_DISABLE_CHANNELS)) > disabledBefore, 'its own channels were disabled through RM');
  const p = bgpu.policy;
  t.equal(p.holds, holds0 + 1, 'one hold');
  const hold = p.events.find((e) => e.kind === 'hold');
  t.equal(hold?.pid, lpid, 'the hold names the latency process');
  t.ok(p.chain.lastUs > 0 && p.chain.lastUs < 2_000_000, `chain measured (${p.chain.lastUs} us on a loaded CI machine)`);
  t.equal(lgpu.policy.bursts, bursts0 + 1, 'the latency process published one burst');

  const launched = await rmCount(best, RM_DISABLE_CHANNELS);
  latency.send('launch 5'); // more work in the same burst: no second hold
  await new Promise((r) => setTimeout(r, 100));
  t.equal(bgpu.policy.holds, holds0 + 1, 'more launches in the same burst do not hold again');
  t.equal(await rmCount(best, RM_DISABLE_CHANNELS), launched, 'and issue no RM control');

  latency.send('release');
  t.ok(await until(() => !bgpu.policy.held, 3000), 'released once the burst ended and stayed idle');
  t.ok(bgpu.policy.events.some((e) => e.kind === 'release'), 'a release event');
  t.ok(lgpu.policy.events.some((e) => e.kind === 'idle'), 'the latency process logged idle');
  t.ok((await rmCount(best, RM_DISABLE_CHANNELS)) > launched, 'channels enabled again (a second disable-channels control)');

  // a second burst: held again, counted (the GPU held meanwhile, so its two launches are one burst:
  // kernels that end at once could let the event thread see idle between them on a loaded machine)
  latency.send('hold');
  latency.send('launch 2');
  await until(() => lgpu.policy.bursts === bursts0 + 2, 2000);
  latency.send('release');
  await until(() => !bgpu.policy.held, 3000);
  t.equal(lgpu.policy.bursts, bursts0 + 2, 'second burst published');

  const stat = gvm(['get', `${bgpu.process.pid}`, 'policy.stat'], { GVM_SHM_DIR: shm });
  t.equal(stat.status, 0, stat.stderr);
  t.match(stat.stdout, new RegExp(`^holds ${bgpu.policy.holds}$`, 'm'), 'gvm get policy.stat shows the holds');
  t.match(stat.stdout, /^chain_p99_us \d+$/m, 'and the chain percentiles');
  const chain = gvm(['get', `${bgpu.process.pid}`, 'policy.chain', '--json'], { GVM_SHM_DIR: shm });
  t.equal(chain.status, 0, chain.stderr);
  const buckets = JSON.parse(chain.stdout) as Record<string, number>;
  t.equal(Object.values(buckets).reduce((a, b) => a + b, 0), bgpu.policy.holds, 'gvm get policy.chain: one chain per hold');
  t.ok(Object.keys(buckets).every((k) => Number(k) % 100 === 0), 'by 100-us bucket');
  const events = gvm(['get', `${lpid}`, 'policy.events'], { GVM_SHM_DIR: shm });
  t.match(events.stdout, /busy 0 \d+\n.*idle 0 \d+/s, 'gvm get policy.events lists busy then idle');
});

t.test("a hold's chain in parts: slow RM controls show in the RM part, not the wake", async (t) => {
  // every RM control of the best-effort process costs 30 ms here (a GSP round trip is ~0.3 ms)
  const { shm, latency, best, bgpu, lgpu } = await pair(t, { FAKE_RM_CONTROL_US: '30000' });
  await until(() => !bgpu.policy.held, 5000);
  const before = bgpu.policy;
  const sum = (p: typeof before, part: 'wake' | 'lock' | 'rm'): number => (p.chainParts[part].meanUs ?? 0) * p.chainParts.holds;
  latency.send('hold');
  latency.send('launch 2');
  t.ok(await until(() => bgpu.policy.holds === before.holds + 1, 5000), 'held');
  const after = bgpu.policy;
  t.equal(after.chainParts.holds, before.chainParts.holds + 1, 'the hold counted in parts');
  const wake = sum(after, 'wake') - sum(before, 'wake');
  const lock = sum(after, 'lock') - sum(before, 'lock');
  const rm = sum(after, 'rm') - sum(before, 'rm');
  t.ok(rm >= 60_000, `RM part: at least a disable and a preempt of 30 ms each (${Math.round(rm)} us)`);
  t.ok(wake < rm, `the wake is not blamed for it (${Math.round(wake)} us)`);
  t.ok(Math.abs(wake + lock + rm - after.chain.lastUs) < 1000, `the parts add up to the chain (${Math.round(wake + lock + rm)} vs ${Math.round(after.chain.lastUs)} us)`);
  t.ok(after.chainParts.rm.maxUs >= 60_000, 'the slowest RM part is kept');
  const said = /policy: holding GPU 0 took ([\d.]+) ms after the burst began \(wake ([\d.]+) ms, control lock ([\d.]+) ms, RM controls ([\d.]+) ms\)/.exec(best.stderr);
  t.ok(said && Number(said[4]) >= 60, `the slow-hold log says the same (${said?.[0] ?? 'no line'})`);
  const rmBuckets = gvm(['get', `${bgpu.process.pid}`, 'policy.chain.rm', '--json'], { GVM_SHM_DIR: shm });
  t.equal(rmBuckets.status, 0, rmBuckets.stderr);
  const counts = JSON.parse(rmBuckets.stdout) as Record<string, number>;
  t.equal(Object.values(counts).reduce((a, b) => a + b, 0), after.chainParts.holds, 'gvm get policy.chain.rm: one RM part per hold');
  t.ok((counts['3100'] ?? 0) >= 1, 'in the open top bucket (past 3.1 ms)');
  const stat = gvm(['get', `${bgpu.process.pid}`, 'policy.stat', '--json'], { GVM_SHM_DIR: shm });
  const st = JSON.parse(stat.stdout) as Record<string, number>;
  t.ok(st.chain_rm_max_us! >= 60_000 && st.chain_wake_p50_us! > 0, `policy.stat shows the parts (rm max ${st.chain_rm_max_us} us, wake p50 ${st.chain_wake_p50_us} us)`);
  // gvmd's Prometheus metrics carry the same
  const metrics = createMetrics({ shmDir: shm });
  await metrics.refresh();
  const { samples, types } = parseExposition(await metrics.registry.metrics());
  const get = (name: string, labels: Record<string, string>): number | undefined =>
    samples.find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v))?.value;
  const bp = String(bgpu.process.pid);
  t.equal(get('gvm_holds_total', { pid: bp }), after.holds, 'gvm_holds_total');
  t.equal(get('gvm_held', { pid: bp }), 1, 'gvm_held while held');
  t.equal(types.get('gvm_holds_total'), 'counter');
  t.equal(get('gvm_bursts_total', { pid: String(lgpu.process.pid) }), lgpu.policy.bursts, "the latency process's bursts");
  t.equal(get('gvm_hold_chain_seconds', { pid: bp, part: 'rm', quantile: '0.99' }), 0.0032, 'the RM part at p99: the open top bucket');
  const wakeP50 = get('gvm_hold_chain_seconds', { pid: bp, part: 'wake', quantile: '0.5' });
  t.ok(wakeP50 !== undefined && wakeP50 < 0.0032, `and the wake part below it (${wakeP50} s)`);
  t.equal(get('gvm_hold_chain_seconds', { pid: String(lgpu.process.pid) }), undefined, 'no chain for the latency process');
  metrics.registry.clear();
  latency.send('release');
  t.ok(await until(() => !bgpu.policy.held, 5000), 'released');
  // the release's enable costs 30 ms too: a burst beginning meanwhile would wait, so it is logged
  t.ok(await until(() => /policy: releasing GPU 0 took [\d.]+ ms/.test(best.stderr), 3000), 'the slow release is logged');
  const took = /policy: releasing GPU 0 took ([\d.]+) ms/.exec(best.stderr);
  t.ok(took && Number(took[1]) >= 30, `with its time (${took?.[1]} ms)`);
});

/** CPU time (ms) of a process's thread named `comm`, from /proc (utime + stime, clock ticks of 10 ms). */
function threadCpuMs(pid: number, comm: string): number {
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    if (fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim() !== comm) continue;
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10; // fields 14 and 15 of stat
  }
  throw new Error(`no thread ${comm} in ${pid}`);
}

t.test('GVM_POLICY_SPIN_US: a released best-effort thread polls instead of sleeping, and still holds and releases', async (t) => {
  const { latency, bpid, bgpu } = await pair(t, { GVM_POLICY_SPIN_US: '10000000' });
  await until(() => !bgpu.policy.held, 3000);
  const cpu0 = threadCpuMs(bpid, 'gvm-policy0');
  await new Promise((r) => setTimeout(r, 1000));
  const spun = threadCpuMs(bpid, 'gvm-policy0') - cpu0;
  t.ok(spun >= 100, `the policy thread polled while released: ${spun} ms of CPU in 1 s`);
  const holds0 = bgpu.policy.holds;
  latency.send('hold');
  latency.send('launch 3');
  t.ok(await until(() => bgpu.policy.held, 3000), 'held by a burst');
  t.equal(bgpu.policy.holds, holds0 + 1, 'one hold');
  const cpuHeld = threadCpuMs(bpid, 'gvm-policy0');
  await new Promise((r) => setTimeout(r, 500));
  t.ok(threadCpuMs(bpid, 'gvm-policy0') - cpuHeld <= 60, 'while held it sleeps (the release waits on the board as before)');
  latency.send('release');
  t.ok(await until(() => !bgpu.policy.held, 3000), 'released');
});

t.test('without GVM_POLICY_SPIN_US the released thread sleeps', async (t) => {
  const { bpid, bgpu } = await pair(t);
  await until(() => !bgpu.policy.held, 3000);
  const cpu0 = threadCpuMs(bpid, 'gvm-policy0');
  await new Promise((r) => setTimeout(r, 1000));
  t.ok(threadCpuMs(bpid, 'gvm-policy0') - cpu0 <= 60, 'at most a few ticks of CPU in 1 s');
});

t.test('a latency process killed mid-burst leaves no hold behind', async (t) => {
  const { latency, bgpu, lpid } = await pair(t);
  latency.send('hold');
  latency.send('launch 3');
  t.ok(await until(() => bgpu.policy.held, 3000), 'held');
  latency.child.kill('SIGKILL');
  await latency.exited;
  t.ok(await until(() => !bgpu.policy.held, 3000), 'released after the busy process died');
  const gone = bgpu.policy.events.find((e) => e.kind === 'peer-gone');
  t.equal(gone?.pid, lpid, 'the dead peer was reaped and named');
});

t.test('a latency process exiting while busy releases the best-effort one at once', async (t) => {
  const { latency, bgpu } = await pair(t);
  latency.send('hold');
  latency.send('launch 3');
  t.ok(await until(() => bgpu.policy.held, 3000), 'held');
  latency.send('release');
  latency.send('launch 1000'); // still busy when it exits
  latency.send('exit');
  await latency.exited;
  t.ok(await until(() => !bgpu.policy.held, 3000), 'released when the latency process left the board');
  t.notOk(bgpu.policy.events.some((e) => e.kind === 'peer-gone'), 'it left by itself (no reaping needed)');
});

t.test("a user's freeze of the latency process does not hold the best-effort one", async (t) => {
  const { latency, bgpu, lgpu, shm } = await pair(t);
  const f = gvm(['freeze', `${lgpu.process.pid}`], { GVM_SHM_DIR: shm });
  t.equal(f.status, 0, f.stderr);
  latency.send('hold');
  latency.send('launch 3');
  await new Promise((r) => setTimeout(r, 300));
  t.notOk(bgpu.policy.held, 'not held: the busy process is frozen');
  const th = gvm(['thaw', `${lgpu.process.pid}`], { GVM_SHM_DIR: shm });
  t.equal(th.status, 0, th.stderr);
  t.ok(await until(() => bgpu.policy.held, 3000), 'held once it is thawed with work pending');
  latency.send('release');
  t.ok(await until(() => !bgpu.policy.held, 3000), 'released after');
});

t.test('user freeze and policy hold compose: neither undoes the other', async (t) => {
  const { latency, bgpu, shm } = await pair(t);
  const bpid = `${bgpu.process.pid}`;
  t.equal(gvm(['freeze', bpid], { GVM_SHM_DIR: shm }).status, 0, 'user freezes the best-effort process');
  latency.send('hold');
  latency.send('launch 3');
  t.ok(await until(() => bgpu.policy.held, 3000), 'the policy holds it too');
  latency.send('release');
  t.ok(await until(() => !bgpu.policy.held, 3000), 'the policy releases it');
  t.ok(bgpu.compute.frozen, 'still frozen by the user');
  t.equal(gvm(['thaw', bpid], { GVM_SHM_DIR: shm }).status, 0, 'user thaws');
  t.notOk(bgpu.compute.frozen, 'runs again');
});

t.test('throttle: the shortest timeslice while held, the priority\'s own after', async (t) => {
  const { latency, best, bgpu } = await pair(t, { GVM_POLICY_ACTION: 'throttle', GVM_PRIORITY: '10' });
  const tsgs = () => bgpu.process._handle().rm(0).tsgs.map((x) => x.timesliceUs);
  t.ok(await until(() => tsgs().length > 0 && tsgs().every((us) => us === 512), 2000), 'priority 10: 512 us');
  const before = await rmCount(best, RM_SET_TIMESLICE);
  latency.send('hold');
  latency.send('launch 3');
  t.ok(await until(() => bgpu.policy.held, 3000), 'held');
  t.equal(bgpu.policy.action, 'throttle', 'action throttle');
  t.ok(tsgs().every((us) => us === 16), `every TSG at 16 us while held (${tsgs().join(',')})`);
  t.ok((await rmCount(best, RM_DISABLE_CHANNELS)) === 0, 'no channel was disabled');
  latency.send('release');
  t.ok(await until(() => !bgpu.policy.held, 3000), 'released');
  t.ok(tsgs().every((us) => us === 512), 'back to 512 us');
  t.ok((await rmCount(best, RM_SET_TIMESLICE)) >= before + 2, 'set through RM both ways');
});

t.test('policy.class changes at run time through gvm set', async (t) => {
  const shm = tmpShm(t);
  const env = { GVM_RM_ANY_DRIVER: '1', GVM_POLICY_IDLE_MS: '5' };
  const a = start(t, shm, 'direct', 'basic', env);
  const b = start(t, shm, 'direct', 'basic', env);
  const apid = await pid(a);
  const bpid = await pid(b);
  using bp = await Gvm.process(bpid, { shmDir: shm });
  const bgpu = bp.gpu(0);
  t.equal(bgpu.policy.class, 'none', 'class none by default');
  a.send('hold');
  a.send('launch 2');
  await new Promise((r) => setTimeout(r, 200));
  t.notOk(bgpu.policy.held, 'nobody holds anybody without classes');
  let r = gvm(['set', `${bpid}`, 'policy.class', 'best-effort'], { GVM_SHM_DIR: shm });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /class best-effort/);
  r = gvm(['set', `${apid}`, 'policy.class', 'latency'], { GVM_SHM_DIR: shm });
  t.equal(r.status, 0, r.stderr);
  a.send('launch 2'); // the next launch publishes the burst
  t.ok(await until(() => bgpu.policy.held, 3000), 'held after both classes were set');
  r = gvm(['set', `${bpid}`, 'policy.class', 'none'], { GVM_SHM_DIR: shm });
  t.equal(r.status, 0, r.stderr);
  t.ok(await until(() => !bgpu.policy.held, 3000), 'back to class none: released although the burst goes on');
  r = gvm(['set', `${bpid}`, 'policy.class', 'urgent'], { GVM_SHM_DIR: shm });
  t.equal(r.status, 2, 'a bad class is a usage error');
  t.match(r.stderr, /policy\.class must be/);
  t.equal(gvm(['get', `${bpid}`, 'policy.class'], { GVM_SHM_DIR: shm }).stdout.trim(), 'none', 'nothing changed');
});

t.test('memory: a latency allocation the GPU cannot satisfy makes a best-effort process in swap mode lend', async (t) => {
  const { latency, best, bgpu, lgpu } = await pair(
    t,
    { GVM_MEMORY_MODE: 'swap' },
    { FAKE_CUDA_MEM_BYTES: String(64 << 20), FAKE_CUDA_USED_BYTES: String(40 << 20), GVM_POLICY_MEM_WAIT_MS: '400' },
    'buffers count=4 mib=8',
  );
  t.equal(bgpu.memory.swapCurrent, 0, 'best-effort starts with everything on the GPU');
  const mark = latency.send('alloc 30');
  // the fake GPU of the latency process never gains memory (each fake process has its own), so the
  // allocation still fails after the wait; what matters here is the chain up to the lender
  const line = await latency.line('ALLOC', mark);
  t.equal(line, 'ALLOC 2', 'the allocation failed cleanly (out of memory) after the wait');
  t.equal(lgpu.policy.memoryWaits, 1, 'one allocation waited');
  t.ok(lgpu.policy.events.some((e) => e.kind === 'mem-need' && e.value === 30 << 20), 'need of 30 MiB posted');
  const lend = bgpu.policy.events.find((e) => e.kind === 'mem-lend');
  t.equal(lend?.pid, lgpu.process.pid, 'best-effort lent to the latency process');
  // the need is the allocation plus the 64 MiB of slack its wait asks the driver for; all 32 MiB it has
  t.equal(lend?.value, 32 << 20, 'what was needed (30 MiB + 64 MiB of slack), up to all it holds: 32 MiB');
  t.ok(await until(() => bgpu.memory.swapCurrent === 32 << 20, 3000), 'four 8 MiB buffers cover it: all moved to the host');
  let m = best.send('verify');
  t.equal(await best.line('VERIFIED', m), 'VERIFIED ok 4', 'every byte intact on the host');
  t.ok(await until(() => bgpu.policy.memoryLent === 0, 5000), 'taken back once nobody needed it for a second');
  t.ok(await until(() => bgpu.memory.swapCurrent === 0, 3000), 'back on the GPU');
  m = best.send('verify');
  t.equal(await best.line('VERIFIED', m), 'VERIFIED ok 4', 'every byte intact after the round trip');
});

/** A fresh path for the fake RM's log of one program (pair() shares its block directory). */
function rmLog(t: Tap.Test): string {
  return path.join(tmpShm(t), 'rm.log');
}

/** bDisable of each disable-channels control in an RM log, in order (1 = stop, 0 = enable). */
function disableSequence(log: string): number[] {
  if (!fs.existsSync(log)) return [];
  return fs
    .readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.toLowerCase().includes(RM_DISABLE_CHANNELS) && l.includes('control'))
    .map((l) => rmLogParams(l)[0] ?? -1);
}

t.test("a burst during a best-effort process's swap move: the move's stopped channels become the hold", async (t) => {
  // Each copy of the move takes 300 ms, so the move keeps control_lock (and every channel of the job
  // stopped) for about a second. Before the handover, the hold waited for the move's end, the move's
  // end enabled the channels, and the hold stopped them again: the job ran between the two, and the
  // chain counted the whole wait although the job had been stopped all along.
  const log = rmLog(t);
  const { latency, best, bgpu } = await pair(t, { GVM_MEMORY_MODE: 'swap', FAKE_CUDA_COPY_US: '300000', FAKE_RM_LOG: log }, {}, 'buffers count=4 mib=8');
  await until(() => !bgpu.policy.held, 3000);
  const holds0 = bgpu.policy.holds;
  const parts0 = bgpu.policy.chainParts;
  const before = disableSequence(log).length;
  const moving = bgpu.setMemoryLimit(8 << 20); // three of the four buffers go to the host
  t.ok(await until(() => disableSequence(log).length > before, 5000), "the move stopped the job's channels");
  latency.send('hold');
  latency.send('launch 3');
  t.ok(await until(() => bgpu.policy.holds === holds0 + 1, 10000), 'the burst held the job');
  await moving;
  t.ok(bgpu.memory.swapCurrent >= 24 << 20, `the move finished (${bgpu.memory.swapCurrent >> 20} MiB on the host)`);
  t.ok(bgpu.policy.held, 'still held after the move');
  t.ok(bgpu.policy.chain.lastUs < 200_000, `the hold counts from when the move stopped the job, not from the move's end (chain ${bgpu.policy.chain.lastUs} us; the move took ~1 s)`);
  const parts = bgpu.policy.chainParts;
  const gained = (part: 'wake' | 'lock' | 'rm'): number => (parts[part].meanUs ?? 0) * parts.holds - (parts0[part].meanUs ?? 0) * parts0.holds;
  if (bgpu.policy.chain.lastUs > 0) {
    // the hold waited for the move's lock, but its chain ended when the move stopped the job: its parts end there too
    t.ok(Math.abs(gained('wake') + gained('lock') + gained('rm') - bgpu.policy.chain.lastUs) < 1000,
      `the parts add up to the chain (${Math.round(gained('wake') + gained('lock') + gained('rm'))} vs ${Math.round(bgpu.policy.chain.lastUs)} us)`);
    t.ok(gained('rm') < 1000, `no RM part: the move's stop was handed over (${Math.round(gained('rm'))} us)`);
  } else {
    t.equal(parts.holds, parts0.holds, 'the job was stopped before the burst began: no chain, no parts counted');
  }
  latency.send('release');
  t.ok(await until(() => !bgpu.policy.held, 5000), 'released after the burst');
  t.same(disableSequence(log).slice(before), [1, 0], "one stop (the move's), one enable (the release's): the job never ran between the move and the hold");
  const m = best.send('verify');
  t.equal(await best.line('VERIFIED', m), 'VERIFIED ok 4', 'every byte intact');
});

t.test('a move that stops compute channels only (GVM_SWAP_QUIESCE=compute) hands nothing over: the slow hold is logged with its cause', async (t) => {
  const log = rmLog(t);
  const { latency, best, bgpu } = await pair(t, { GVM_MEMORY_MODE: 'swap', GVM_SWAP_QUIESCE: 'compute', FAKE_CUDA_COPY_US: '300000', FAKE_RM_LOG: log }, {}, 'buffers count=4 mib=8');
  await until(() => !bgpu.policy.held, 3000);
  const holds0 = bgpu.policy.holds;
  const before = disableSequence(log).length;
  const moving = bgpu.setMemoryLimit(8 << 20);
  t.ok(await until(() => disableSequence(log).length > before, 5000), "the move stopped the job's compute channels");
  latency.send('hold');
  latency.send('launch 3');
  await moving;
  t.ok(await until(() => bgpu.policy.holds === holds0 + 1, 5000), 'held once the move let go of the lock');
  // its copy channels ran during the window: the hold needs all of them stopped, so it waited
  t.ok(bgpu.policy.chain.lastUs > 200_000, `the hold waited for the move (chain ${Math.round(bgpu.policy.chain.lastUs)} us)`);
  const said = /policy: holding GPU 0 took ([\d.]+) ms after the burst began \(wake ([\d.]+) ms, control lock ([\d.]+) ms, RM controls ([\d.]+) ms\)/.exec(best.stderr);
  t.ok(said, 'the slow hold was logged with where its time went');
  if (said) t.ok(Number(said[3]) > 150 && Number(said[3]) > Number(said[4]), `most of it waiting for the move's lock (${said[3]} of ${said[1]} ms)`);
  latency.send('release');
  t.ok(await until(() => !bgpu.policy.held, 5000), 'released after the burst');
});

t.test('gvm top shows who is held and what the policy did', async (t) => {
  const { latency, bpid, lpid, shm } = await pair(t);
  latency.send('hold');
  latency.send('launch 3');
  const top = async () => gvm(['top', '--once'], { GVM_SHM_DIR: shm, COLUMNS: '200' }).stdout;
  let screen = '';
  for (let i = 0; i < 100 && !/held/.test(screen); i++) {
    screen = await top();
    await new Promise((r) => setTimeout(r, 30));
  }
  t.match(screen, new RegExp(`^ +${bpid} .* held +\\[`, 'm'), 'the best-effort row is in state held');
  t.match(screen, new RegExp(`policy: .*${lpid} latency, \\d+ bursts`), 'the policy line names the latency process and its bursts');
  t.match(screen, new RegExp(`${bpid} best-effort, \\d+ holds \\(held now\\), chain p99 \\d+ us \\(wake \\d+, RM \\d+\\), last: hold`), 'and the best-effort one, held now');
  latency.send('release');
});
