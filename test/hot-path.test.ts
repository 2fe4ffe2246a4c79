// The design rule "a launch path takes no lock, allocates nothing and makes no system call", checked on
// the agent itself for every launch entry point (direct symbols, cuGetProcAddress pointers, _ptsz,
// Ex, cooperative, graphs; explicit, NULL, legacy and per-thread streams), from several threads, with
// and without the automatic policy and a swap-mode limit. test/fake-cuda/progs/hot_path.c traps every
// system call of its launching threads (seccomp) and every lock and allocation (its own definitions),
// and counts those made outside the fake driver: the agent's. A self-test launch that misbehaves on
// purpose shows the detectors catch each kind.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

import { FAKE, fakeEnv } from './fake-prog';
import { tmpShm } from './helpers';

const PROG = path.join(FAKE, 'bin', 'gvm-hot-path');
const FUTEX = 202; // x86_64

interface Result {
  kinds: number;
  launches: number;
  failed: number;
  expected: number;
  submitted: number;
  burstsDuring: number;
  syscalls: number | null; // null: seccomp unavailable here
  uncheckedWhy: string;
  byNr: Map<number, number>;
  locks: number;
  allocs: number;
  callers: string[];
  raw: string;
}

function field(lines: string[], key: string): number {
  const l = lines.find((x) => x.startsWith(`${key} `));
  if (l === undefined) throw new Error(`no '${key}' line`);
  return Number(l.split(' ')[1]);
}

function run(shm: string, args: string[], env: NodeJS.ProcessEnv = {}): Result {
  const r = spawnSync(PROG, args, {
    encoding: 'utf8',
    env: fakeEnv(shm, { GVM_RM_ANY_DRIVER: '1', ...env }),
    timeout: 90000,
  });
  const raw = `${r.stdout}\n${r.stderr}`;
  if (r.status !== 0 || !r.stdout.includes('DONE')) throw new Error(`gvm-hot-path ${args.join(' ')} failed (${r.status}): ${raw}`);
  const lines = r.stdout.split('\n');
  const unchecked = lines.find((l) => l.startsWith('syscalls unchecked: '));
  const byNr = new Map<number, number>();
  for (const l of lines) {
    const m = /^syscall nr=(\d+) count=(\d+)$/.exec(l);
    if (m) byNr.set(Number(m[1]), Number(m[2]));
  }
  const launchLine = lines.find((l) => l.startsWith('launches '))?.split(' ') ?? [];
  return {
    kinds: field(lines, 'kinds'),
    launches: Number(launchLine[1]),
    failed: Number(launchLine[3]),
    expected: field(lines, 'expected-kernels'),
    submitted: field(lines, 'submitted'),
    burstsDuring: field(lines, 'bursts-during'),
    syscalls: unchecked ? null : field(lines, 'syscalls'),
    uncheckedWhy: unchecked?.slice('syscalls unchecked: '.length) ?? '',
    byNr,
    locks: field(lines, 'locks'),
    allocs: field(lines, 'allocs'),
    callers: lines.filter((l) => l.startsWith('caller ')),
    raw,
  };
}

/** Every launch reached the agent and the driver: otherwise "nothing caught" would prove nothing. */
function reachedAgent(t: Tap.Test, r: Result, launches: number): void {
  t.equal(r.launches, launches, 'every measured launch was made');
  t.equal(r.failed, 0, 'and succeeded');
  t.ok(r.expected > launches, 'graph launches count their three kernels');
  t.equal(r.submitted, r.expected, `the agent counted every kernel (${r.submitted}): its hooks were on each path`);
}

function clean(t: Tap.Test, r: Result, what: string): void {
  if (r.syscalls === null) t.skip(`system calls not checked: ${r.uncheckedWhy}`);
  else t.equal(r.syscalls, 0, `${what}: no system call of the agent's`, { raw: r.raw });
  t.equal(r.locks, 0, `${what}: no lock taken by the agent`, { callers: r.callers });
  t.equal(r.allocs, 0, `${what}: no allocation by the agent`, { callers: r.callers });
}

t.before(() => {
  if (!fs.existsSync(PROG)) throw new Error(`${PROG} is not built (x86_64 only); run npm install`);
});

t.test('the detectors catch a system call, a lock and an allocation made outside the driver', async (t) => {
  const shm = tmpShm(t);
  const iterations = 6000;
  const r = run(shm, ['selftest', `iterations=${iterations}`, 'threads=2']);
  reachedAgent(t, r, 2 * iterations);
  const misbehaving = 2 * Math.floor((iterations + r.kinds - 1) / r.kinds); // its share of the rotation
  if (r.syscalls === null) t.skip(`system calls not checked: ${r.uncheckedWhy}`);
  else {
    t.equal(r.byNr.get(39), misbehaving, 'every getpid of the misbehaving launch was caught, by number');
    t.equal(r.syscalls, misbehaving, 'and nothing else');
  }
  t.equal(r.locks, misbehaving, 'every lock it took was caught');
  t.equal(r.allocs, 2 * misbehaving, 'every malloc and free was caught');
  t.ok(r.callers.some((c) => c.startsWith('caller lock gvm-hot-path+')), 'the caller is named');
});

t.test('plain launches, two threads: nothing but the count', async (t) => {
  const r = run(tmpShm(t), ['iterations=20000', 'threads=2']);
  reachedAgent(t, r, 40000);
  clean(t, r, 'no policy');
});

t.test('a latency-class process inside one long burst (four threads)', async (t) => {
  const r = run(tmpShm(t), ['iterations=10000', 'threads=4', 'hold'], { GVM_CLASS: 'latency', GVM_POLICY_IDLE_MS: '5' });
  reachedAgent(t, r, 40000);
  t.equal(r.burstsDuring, 0, 'the burst lasted the whole measurement (the steady state is what was measured)');
  clean(t, r, 'latency, busy');
});

t.test('a latency-class process going idle and busy: only the burst-opening launch signals', async (t) => {
  const r = run(tmpShm(t), ['iterations=8000', 'threads=1', 'gap-every=1000'], {
    GVM_CLASS: 'latency',
    GVM_POLICY_IDLE_MS: '5',
  });
  reachedAgent(t, r, 8000);
  t.ok(r.burstsDuring >= 3, `bursts opened while measuring: ${r.burstsDuring}`);
  if (r.syscalls === null) t.skip(`system calls not checked: ${r.uncheckedWhy}`);
  else {
    t.ok(r.syscalls <= 2 * r.burstsDuring, `at most two system calls a burst (${r.syscalls} for ${r.burstsDuring})`);
    t.same([...r.byNr.keys()].filter((nr) => nr !== FUTEX), [], 'all of them futex wakes');
  }
  t.equal(r.locks, 0, 'no lock', { callers: r.callers });
  t.equal(r.allocs, 0, 'no allocation', { callers: r.callers });
});

t.test('a best-effort process (launch gate open)', async (t) => {
  const r = run(tmpShm(t), ['iterations=20000', 'threads=2'], { GVM_CLASS: 'best-effort', GVM_POLICY_IDLE_MS: '5' });
  reachedAgent(t, r, 40000);
  clean(t, r, 'best-effort');
});

t.test('a process with a swap-mode memory limit', async (t) => {
  const r = run(tmpShm(t), ['iterations=20000', 'threads=2'], { GVM_MEMORY_LIMIT: String(1 << 30), GVM_MEMORY_MODE: 'swap' });
  reachedAgent(t, r, 40000);
  clean(t, r, 'swap mode');
});
