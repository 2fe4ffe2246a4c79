// Processes in containers sharing one control-block directory with each other and with the host:
// each program runs as PID 1 of its own PID namespace (unshare --pid --fork --mount-proc), as a
// container's main process does. Their blocks must not collide, the host must see and steer each by
// its host pid, a tool inside one container must see only its own processes and never remove another
// namespace's blocks as stale, a dead container process's block must be recognised as stale from the
// host (its owner lock is gone), and the automatic policy must work across containers (a peer's pid
// means nothing in another namespace: slots are judged by their owner locks).
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

import { Gvm } from '../lib/index';
import { FAKE, fakeEnv, Prog, until } from './fake-prog';
import { blockFile, CLI, startDaemon, tmpShm } from './helpers';

const PROG = path.join(FAKE, 'bin', 'gvm-prog-direct');

function namespacesWork(): string | null {
  const r = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'sh', '-c', 'echo $$'], { encoding: 'utf8', timeout: 10000 });
  if (r.status !== 0 || r.stdout.trim() !== '1') return `unshare --pid --fork --mount-proc failed here (${(r.stderr || String(r.error)).trim()})`;
  return null;
}

/**
 * A fake program in a new PID namespace, as its PID 1, or (later=true) under a shell that is PID 1,
 * after a hundred short-lived processes, so its pid is above 100; hostPid() is its pid on the host.
 */
function startInNamespace(t: Tap.Test, shm: string, scenario: string, env: NodeJS.ProcessEnv, later = false, unshareArgs: string[] = []) {
  // a background job's stdin would be /dev/null: hand it the shell's own through fd 3
  const script = `i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done; exec 3<&0; "$0" ${scenario} <&3 & wait`;
  const cmd = later ? ['sh', '-c', script, PROG] : [PROG, ...scenario.split(' ')];
  const child = spawn('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', ...unshareArgs, ...cmd], {
    env: fakeEnv(shm, env),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const prog = new Prog(child);
  child.stderr.on('data', (d: Buffer) => (prog.stderr += d.toString()));
  t.teardown(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await prog.exited;
  });
  const childOf = (pid: number): number =>
    Number(fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0]);
  const hostPid = (): number => (later ? childOf(childOf(child.pid!)) : childOf(child.pid!));
  return { prog, hostPid };
}

function nsOf(pid: number | 'self'): number {
  return fs.statSync(`/proc/${pid}/ns/pid`).ino;
}

/** The gvm CLI run inside the PID and mount namespaces of `hostPid` (its /proc is the container's). */
function gvmInside(hostPid: number, args: string[], shm: string) {
  return spawnSync('nsenter', ['--target', String(hostPid), '--pid', '--mount', process.execPath, CLI, ...args], {
    encoding: 'utf8',
    env: { ...process.env, GVM_SHM_DIR: shm },
    timeout: 30000,
  });
}

const why = namespacesWork();
if (why !== null) t.skip(`PID namespaces: ${why}`);
else {
  t.test('two containers, both PID 1, and a host process share one directory', async (t) => {
    const shm = tmpShm(t);
    const env = { GVM_RM_ANY_DRIVER: '1', FAKE_CUDA_DEVICES: '1' };
    const a = startInNamespace(t, shm, 'basic', env);
    const b = startInNamespace(t, shm, 'basic', env);
    const host = spawn(PROG, ['basic'], { env: fakeEnv(shm, env), stdio: ['pipe', 'pipe', 'pipe'] });
    const hostProg = new Prog(host);
    t.teardown(async () => {
      if (host.exitCode === null) host.kill('SIGKILL');
      await hostProg.exited;
    });
    const hostOwn = (JSON.parse((await hostProg.line('READY')).slice(6)) as { pid: number }).pid;
    const readyA = JSON.parse((await a.prog.line('READY')).slice(6)) as { pid: number };
    const readyB = JSON.parse((await b.prog.line('READY')).slice(6)) as { pid: number };
    t.same([readyA.pid, readyB.pid], [1, 1], 'each is PID 1 in its own namespace');
    const hostA = a.hostPid();
    const hostB = b.hostPid();
    const names = fs.readdirSync(shm).filter((n) => /^\d/.test(n)).sort();
    t.same(names, [`1@${nsOf(hostA)}`, `1@${nsOf(hostB)}`, path.basename(blockFile(shm, hostOwn))].sort(), "the containers' blocks are named by pid and namespace: no collision");

    const procs = await Gvm.processes({ shmDir: shm });
    t.teardown(() => procs.forEach((p) => p.close()));
    t.same(procs.map((p) => p.pid), [hostA, hostB, hostOwn].sort((x, y) => x - y), 'the host lists all three, the containers by their host pids');
    const byPid = new Map(procs.map((p) => [p.pid, p]));
    t.same(byPid.get(hostA)?.container, { pid: 1, pidNamespace: nsOf(hostA) }, 'A says where it runs: PID 1 of its namespace');
    if (nsOf('self') === 0xeffffffc) t.equal(byPid.get(hostOwn)?.container, undefined, "the host's own process is in no container");
    else t.same(byPid.get(hostOwn)?.container, { pid: hostOwn, pidNamespace: nsOf('self') }, 'the tests run in a container: so is their own process');
    const ps = spawnSync(process.execPath, [CLI, 'ps', '--json'], { encoding: 'utf8', env: { ...process.env, GVM_SHM_DIR: shm } });
    const rows = JSON.parse(ps.stdout) as Array<{ pid: number; container: { pid: number; pidNamespace: number } | null }>;
    t.same(rows.find((r) => r.pid === hostB)?.container, { pid: 1, pidNamespace: nsOf(hostB) }, 'gvm ps --json shows it too');

    // the host steers each by its host pid, and only that one
    const frozen = spawnSync(process.execPath, [CLI, 'freeze', String(hostA)], { encoding: 'utf8', env: { ...process.env, GVM_SHM_DIR: shm } });
    t.equal(frozen.status, 0, frozen.stderr);
    using pa = await Gvm.process(hostA, { shmDir: shm });
    using pb = await Gvm.process(hostB, { shmDir: shm });
    t.equal(pa.gpu(0).compute.frozen, true, 'A frozen through its host pid');
    t.equal(pb.gpu(0).compute.frozen, false, 'B untouched');
    await pb.gpu(0).setMemoryLimit(1 << 30);
    t.equal(pb.gpu(0).memory.limit, 1 << 30, 'a limit set on B through its host pid');
    t.not(pa.gpu(0).memory.limit, 1 << 30, 'not on A');
    await pa.gpu(0).thaw();

    // gvmd on the host: the file tree names them by host pid, and a write reaches the right one
    const mount = fs.mkdtempSync(path.join(os.tmpdir(), 'gvm-mnt-'));
    t.teardown(() => fs.rmSync(mount, { recursive: true, force: true }));
    const daemon = await startDaemon(t, mount, shm);
    const metrics = await new Promise<string>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: daemon.port, path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(body));
      }).on('error', reject);
    });
    const info = metrics.split('\n').find((l) => l.startsWith('gvm_process_info{') && l.includes(`pid="${hostA}"`));
    t.match(info, new RegExp(`container_pid="1",pid_namespace="${nsOf(hostA)}"`), "gvmd's metrics say where A runs");
    t.match(info, /cgroup="\/[^"]*"/, 'with its cgroup, to join with the container\'s own metrics');
    const listed = fs.readdirSync(path.join(mount, 'processes')).map(Number).sort((x, y) => x - y);
    t.same(listed, [hostA, hostB, hostOwn].sort((x, y) => x - y), "gvmd's tree lists the containers' processes by host pid");
    fs.writeFileSync(path.join(mount, 'processes', String(hostB), '0', 'compute.priority'), '12\n');
    t.equal(pb.gpu(0).compute.priority, 12, 'a write to B\'s file reached B');
    t.equal(pa.gpu(0).compute.priority, 8, 'and not A');

    // inside container B: only its own process, as PID 1; the other blocks stay where they are
    const inside = gvmInside(hostB, ['ps', '--json'], shm);
    t.equal(inside.status, 0, inside.stderr);
    const seen = (JSON.parse(inside.stdout) as Array<{ pid: number }>).map((p) => p.pid);
    t.same(seen, [1], 'a tool inside B sees B alone, as PID 1');
    t.same(fs.readdirSync(shm).filter((n) => /^\d/.test(n)).sort(), names, "and removed no other namespace's block (the host's included)");
    const freezeInside = gvmInside(hostB, ['freeze', '1'], shm);
    t.equal(freezeInside.status, 0, freezeInside.stderr);
    t.equal(pb.gpu(0).compute.frozen, true, 'B frozen from inside B by its own pid 1');
    t.equal(pa.gpu(0).compute.frozen, false, 'A untouched by "freeze 1" inside B');
    t.equal(gvmInside(hostB, ['thaw', '1'], shm).status, 0);

    // A dies without cleaning up: its block is stale, and the host knows it from the lock
    const blockA = path.join(shm, `1@${nsOf(hostA)}`);
    process.kill(hostA, 'SIGKILL');
    await a.prog.exited;
    t.ok(fs.existsSync(blockA), 'kill -9 left its block behind');
    const after = await Gvm.processes({ shmDir: shm });
    t.same(after.map((p) => p.pid), [hostB, hostOwn].sort((x, y) => x - y), 'the host lists B and its own process');
    after.forEach((p) => p.close());
    t.notOk(fs.existsSync(blockA), 'and removed the dead one, whose owner lock was gone');
  });

  t.test('a program that steers itself (include/gvm/self_command.h) finds its block as PID 1 of a container', async (t) => {
    const shm = tmpShm(t);
    const r = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', path.join(FAKE, 'bin', 'gvm-limit-race'), '2', '64'], {
      encoding: 'utf8',
      env: fakeEnv(shm, { GVM_MEMORY_MODE: 'swap', GVM_RM_ANY_DRIVER: '1' }),
      timeout: 60000,
    });
    t.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    t.match(r.stdout, /^ok +every buffer held its pattern/m, 'it changed its own limit throughout and kept every byte');
  });

  t.test('a container with its own time namespace (its /proc start times shifted) is still found by its lock', async (t) => {
    const probe = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', '--time', '--boottime', '100000', 'true']);
    if (probe.status !== 0) {
      t.skip('unshare --time is refused here');
      return;
    }
    const shm = tmpShm(t);
    const c = startInNamespace(t, shm, 'basic', { GVM_RM_ANY_DRIVER: '1', FAKE_CUDA_DEVICES: '1' }, false, ['--time', '--boottime', '100000']);
    await c.prog.line('READY');
    const host = c.hostPid();
    const block = fs.readdirSync(shm).find((n) => n.startsWith('1@'))!;
    using raw = await Gvm.process(host, { shmDir: shm });
    const recorded = raw._handle().header().startTime;
    const here = Number(fs.readFileSync(`/proc/${host}/stat`, 'utf8').split(') ')[1]!.split(' ')[19]);
    t.not(recorded, here, `the block's start time (${recorded}) is not the host's view (${here})`);
    t.equal(raw.pid, host, 'yet the host finds it by its host pid (its owner lock proves it lives)');
    t.equal(raw.startTime, here, 'and reports the start time as the host sees it');
    const procs = await Gvm.processes({ shmDir: shm });
    t.same(procs.map((p) => p.pid), [host], 'listed');
    procs.forEach((p) => p.close());
    await raw.gpu(0).setPriority(12);
    t.equal(raw.gpu(0).compute.priority, 12, 'and steered');
    t.ok(fs.existsSync(path.join(shm, block)), 'its block was never taken for stale');
  });

  t.test('the automatic policy across containers: a burst in one holds the other; its death releases it', async (t) => {
    const shm = tmpShm(t);
    const common = { GVM_RM_ANY_DRIVER: '1', GVM_POLICY_IDLE_MS: '5', FAKE_CUDA_DEVICES: '1' };
    const best = startInNamespace(t, shm, 'basic', { ...common, GVM_CLASS: 'best-effort' });
    await best.prog.line('READY');
    const latency = startInNamespace(t, shm, 'basic', { ...common, GVM_CLASS: 'latency' });
    await latency.prog.line('READY');
    using bproc = await Gvm.process(best.hostPid(), { shmDir: shm });
    const bgpu = bproc.gpu(0);
    await until(() => !bgpu.policy.held, 3000);
    latency.prog.send('hold');
    latency.prog.send('launch 3');
    t.ok(await until(() => bgpu.policy.held, 3000), 'held while the other container is busy (both are PID 1)');
    process.kill(latency.hostPid(), 'SIGKILL');
    await latency.prog.exited;
    t.ok(await until(() => !bgpu.policy.held, 3000), "released once the busy peer died: its slot's lock was gone");
    t.ok(bgpu.policy.events.some((e) => e.kind === 'peer-gone'), 'and the peer was reaped');
  });

  t.test('a peer in another container is not reaped while it lives, whatever its pid means here', async (t) => {
    const shm = tmpShm(t);
    const common = { GVM_RM_ANY_DRIVER: '1', GVM_POLICY_IDLE_MS: '5', FAKE_CUDA_DEVICES: '1' };
    // the latency process has a pid above 100 in its namespace; the best-effort one is PID 1 of
    // another, where no such pid exists: judged by its pid, the live peer would look dead there
    const latency = startInNamespace(t, shm, 'basic', { ...common, GVM_CLASS: 'latency' }, true);
    const lready = JSON.parse((await latency.prog.line('READY')).slice(6)) as { pid: number };
    t.ok(lready.pid > 100, `the latency process is PID ${lready.pid} of its namespace`);
    const best = startInNamespace(t, shm, 'basic', { ...common, GVM_CLASS: 'best-effort' });
    await best.prog.line('READY');
    using bproc = await Gvm.process(best.hostPid(), { shmDir: shm });
    const bgpu = bproc.gpu(0);
    await until(() => !bgpu.policy.held, 3000);
    latency.prog.send('hold');
    latency.prog.send('launch 3');
    t.ok(await until(() => bgpu.policy.held, 3000), 'held');
    await new Promise((r) => setTimeout(r, 400)); // several reaping rounds (every 100 ms while held)
    t.ok(bgpu.policy.held, 'still held: the live peer was not reaped');
    t.notOk(bgpu.policy.events.some((e) => e.kind === 'peer-gone'), 'no peer-gone event');
    latency.prog.send('release');
    t.ok(await until(() => !bgpu.policy.held, 3000), 'released when its burst ended');
  });
}
