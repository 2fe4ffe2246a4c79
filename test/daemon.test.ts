// gvmd: the real FUSE tree mounted over real agent processes on the fake driver and over
// gvm-make-block --serve blocks, driven with shell commands (cat, echo >, ls), a second user made with
// useradd for the permission cases, and a scrape of /metrics checked with a strict parser.
// CI runs as root with /dev/fuse: without FUSE these tests fail, they do not skip.
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

import { Gvm } from '../lib/index';
import { blockFile, GVMD, makeBlock, parseExposition, serveBlock, startDaemon, startFakeAgent, startTime } from './helpers';

const MiB = 1 << 20;
const GiB = 1024 * MiB;

function tmpDir(t: Tap.Test, prefix: string, mode = 0o755): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, mode);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The second user of the permission cases, made with useradd when it does not exist yet. */
function testUser(t: Tap.Test): { uid: number; gid: number } {
  if (spawnSync('id', ['gvmtest']).status !== 0) {
    const r = spawnSync('useradd', ['--no-create-home', '--shell', '/usr/sbin/nologin', 'gvmtest'], { encoding: 'utf8' });
    t.equal(r.status, 0, `useradd gvmtest: ${r.stderr}`);
  }
  const id = (flag: string): number => Number(spawnSync('id', [flag, 'gvmtest'], { encoding: 'utf8' }).stdout.trim());
  return { uid: id('-u'), gid: id('-g') };
}

/** Runs a shell command, as root or as another user (uid, and gid when given, else the uid). */
function sh(cmd: string, uid?: number, gid = uid): { status: number | null; stdout: string; stderr: string } {
  const args = uid === undefined ? ['-c', cmd] : ['--reuid', String(uid), '--regid', String(gid), '--clear-groups', 'sh', '-c', cmd];
  const r = spawnSync(uid === undefined ? 'sh' : 'setpriv', args, { encoding: 'utf8', timeout: 60000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    }).on('error', reject);
  });
}

t.test('FUSE is available (CI must provide /dev/fuse)', async (t) => {
  t.ok(fs.existsSync('/dev/fuse'), '/dev/fuse exists');
  t.equal(process.getuid?.(), 0, 'the daemon tests run as root, like CI');
});

t.test('the GVM file tree: cat, echo and ls over a real agent process', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const mount = tmpDir(t, 'gvm-mnt-');
  const agent = await startFakeAgent(t, shm);
  const daemon = await startDaemon(t, mount, shm);
  const dir = `${mount}/processes/${agent.pid}/0`;

  t.same(sh(`ls ${mount}`).stdout.split('\n').filter(Boolean), ['gpus', 'processes']);
  t.same(sh(`ls ${mount}/processes`).stdout.trim(), String(agent.pid));
  t.same(sh(`ls ${mount}/processes/${agent.pid}`).stdout.split('\n').filter(Boolean), ['0', '1'], 'both fake GPUs');
  t.same(
    sh(`ls ${dir}`).stdout.split('\n').filter(Boolean),
    ['compute.freeze', 'compute.priority', 'gcgroup.stat', 'memory.current', 'memory.limit', 'memory.mode', 'memory.swap.current'],
  );
  t.equal(sh(`cat ${dir}/memory.current`).stdout, `${agent.deviceBytes}\n`, 'memory.current as the program counted it');
  t.equal(sh(`cat ${dir}/memory.swap.current`).stdout, '0\n');
  const stat = sh(`cat ${dir}/gcgroup.stat`).stdout;
  t.match(stat, /^nr_submitted_kernels 125\nnr_ended_kernels 125\nnr_pending_kernels 0\n/, "GVM's fields first");
  t.match(stat, /memory_current \d+/);

  const t0 = process.hrtime.bigint();
  for (let i = 0; i < 20; i++) fs.readFileSync(`${dir}/memory.current`);
  const perRead = Number(process.hrtime.bigint() - t0) / 20 / 1e6;
  t.comment(`one open+read+close of memory.current through FUSE: ${perRead.toFixed(3)} ms`);
  t.ok(perRead < 20, 'a read is fast (generous bound; the target is under 1 ms)');
  const catMs = (file: string): number => {
    const times: number[] = [];
    for (let i = 0; i < 21; i++) {
      const c0 = process.hrtime.bigint();
      spawnSync('cat', [file], { stdio: 'ignore' });
      times.push(Number(process.hrtime.bigint() - c0) / 1e6);
    }
    return times.sort((a, b) => a - b)[10]!;
  };
  fs.writeFileSync(path.join(shm, 'plain'), '1\n');
  const [fuseCat, plainCat] = [catMs(`${dir}/memory.current`), catMs(path.join(shm, 'plain'))];
  t.comment(`cat memory.current: ${fuseCat.toFixed(2)} ms median (cat of a plain file: ${plainCat.toFixed(2)} ms)`);

  // writes, as GVM's README shows them
  t.equal(sh(`echo 8M > ${dir}/memory.limit`).status, 0, 'echo 8M > memory.limit');
  t.equal(sh(`cat ${dir}/memory.limit`).stdout, `${8 * MiB}\n`);
  using p = await Gvm.process(agent.pid, { shmDir: shm });
  t.equal(p.gpu(0).memory.limit, 8 * MiB, 'the agent applied it');
  t.equal(sh(`echo 1 > ${dir}/compute.freeze`).status, 0, 'echo 1 > compute.freeze');
  t.equal(p.gpu(0).compute.frozen, true);
  t.equal(sh(`echo 0 > ${dir}/compute.freeze`).status, 0);
  t.equal(p.gpu(0).compute.frozen, false);
  t.equal(sh(`echo 12 > ${dir}/compute.priority`).status, 0);
  t.equal(p.gpu(0).compute.priority, 12);

  // every writable file refuses bad values with EINVAL, and nothing changes
  const bad: Record<string, string[]> = {
    'memory.limit': ['abc', '-1', '0', '8X', '1.5G', '99999T', ''],
    'compute.priority': ['16', '-1', 'high', '1.5'],
    'compute.freeze': ['2', 'yes', '-1'],
    'memory.mode': ['fast', '2'],
  };
  for (const [file, values] of Object.entries(bad)) {
    for (const v of values) {
      const r = sh(`/usr/bin/printf '%s\\n' '${v}' > ${dir}/${file}`);
      t.not(r.status, 0, `${file} <- '${v}' refused`);
      t.match(r.stderr, /Invalid argument/, `${file} <- '${v}': EINVAL`);
    }
  }
  t.same([p.gpu(0).memory.limit, p.gpu(0).compute.priority, p.gpu(0).compute.frozen], [8 * MiB, 12, false], 'nothing changed');
  t.match(sh(`echo 1 > ${dir}/memory.current`).stderr, /Permission denied/, 'read-only files refuse writes');

  // GPU totals
  t.equal(sh(`cat ${mount}/gpus/0/memory.used`).stdout, `${agent.deviceBytes}\n`);
  t.equal(sh(`cat ${mount}/gpus/0/processes`).stdout, '1\n');
  t.equal(sh(`cat ${mount}/gpus/0/name`).stdout, 'Fake GPU 0\n');

  // Prometheus
  const { samples, types } = parseExposition(await scrape(daemon.port));
  const used = samples.find((s) => s.name === 'gvm_memory_used_bytes' && s.labels.pid === String(agent.pid) && s.labels.gpu === '0');
  t.equal(used?.value, agent.deviceBytes, 'gvm_memory_used_bytes');
  t.equal(samples.find((s) => s.name === 'gvm_memory_limit_bytes' && s.labels.gpu === '0')?.value, 8 * MiB);
  t.equal(samples.find((s) => s.name === 'gvm_kernels_submitted_total' && s.labels.gpu === '0')?.value, 125);
  t.equal(types.get('gvm_kernels_submitted_total'), 'counter', 'counters are typed counter and named _total');
  t.equal(samples.find((s) => s.name === 'gvm_compute_priority' && s.labels.gpu === '0')?.value, 12);
  t.equal(samples.find((s) => s.name === 'gvm_gpu_processes' && s.labels.gpu === '0')?.value, 1);

  // the process exits: its files go, a write gets ENOENT
  agent.child.stdin!.write('exit\n');
  await new Promise((r) => agent.child.on('exit', r));
  t.match(sh(`/usr/bin/printf 1 > ${dir}/compute.freeze`).stderr, /No such file or directory|nonexistent/, 'ENOENT once it exited');
  t.equal(sh(`ls ${mount}/processes`).stdout.trim(), '', 'no process listed');
});

t.test('permissions: a process\'s files belong to its user; others may read, not write', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const mount = tmpDir(t, 'gvm-mnt-');
  const { uid } = testUser(t);
  const agent = await startFakeAgent(t, shm);
  // the block is the user's in real life (the agent creates it as that user); hand this one over
  fs.chownSync(blockFile(shm, agent.pid), uid, uid);
  await startDaemon(t, mount, shm);
  const dir = `${mount}/processes/${agent.pid}/0`;
  t.equal(fs.statSync(dir).uid, uid, 'directory owned by the process\'s user');
  t.equal(fs.statSync(`${dir}/compute.priority`).uid, uid, 'files owned by the process\'s user');
  const nobody = 65534;
  t.equal(sh(`cat ${dir}/memory.current`, nobody).status, 0, 'another user may read');
  const denied = sh(`echo 3 > ${dir}/compute.priority`, nobody);
  t.match(denied.stderr, /Permission denied/, 'another user may not write');
  t.equal(sh(`echo 3 > ${dir}/compute.priority`, uid).status, 0, 'the owner may write');
  t.equal(sh(`cat ${dir}/compute.priority`).stdout, '3\n');
  t.equal(sh(`echo 4 > ${dir}/compute.priority`).status, 0, 'root may write');
});

t.test('a failure inside the agent comes back as EIO, with the reason in the daemon\'s log', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const mount = tmpDir(t, 'gvm-mnt-');
  // without a verified driver the agent cannot set priorities: it answers "unsupported"
  const agent = await startFakeAgent(t, shm, {});
  const daemon = await startDaemon(t, mount, shm);
  const r = sh(`/usr/bin/printf 3 > ${mount}/processes/${agent.pid}/0/compute.priority`);
  t.match(r.stderr, /Input\/output error/, 'EIO');
  await new Promise((res) => setTimeout(res, 200));
  t.ok(
    daemon.log.some((l) => /compute\.priority of process \d+ GPU 0 = 3: agent status 2: .*unsupported/.test(l)),
    `the agent's reason is logged: ${daemon.log.join(' | ')}`,
  );
});

t.test('restart-safe: killing gvmd loses no setting, and a new gvmd replaces the stale mount', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const mount = tmpDir(t, 'gvm-mnt-');
  const agent = await startFakeAgent(t, shm);
  const first = await startDaemon(t, mount, shm);
  const dir = `${mount}/processes/${agent.pid}/0`;
  t.equal(sh(`echo 16M > ${dir}/memory.limit`).status, 0);
  first.child.kill('SIGKILL');
  await new Promise((r) => first.child.on('exit', r));
  using p = await Gvm.process(agent.pid, { shmDir: shm });
  t.equal(p.gpu(0).memory.limit, 16 * MiB, 'the process keeps its setting while gvmd is down');
  const second = await startDaemon(t, mount, shm);
  t.ok(second.log.some((l) => /stale mount/.test(l)), 'the stale mount was detected and detached');
  t.equal(sh(`cat ${dir}/memory.limit`).stdout, `${16 * MiB}\n`, 'the new gvmd serves the same setting');
});

/** A live process of our own (sleep) whose pid a block can name; killed after the test. */
function sleeper(t: Tap.Test): ChildProcess {
  const child = spawn('sleep', ['1000'], { stdio: 'ignore' });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return child;
}

/** Fields of a block of a live process with one GPU: 80 GiB, 1 GiB in use, 10 kernels pending. */
function blockFields(pid: number, extra: Record<string, string | number> = {}): Record<string, string | number> {
  return {
    pid,
    start_time: startTime(pid),
    gpu_count: 1,
    cmdline: 'python train.py',
    'gpu0.present': 1,
    'gpu0.name': 'NVIDIA H100 80GB HBM3',
    'gpu0.total': 80 * GiB,
    'gpu0.limit': 80 * GiB,
    'gpu0.current': GiB,
    'gpu0.submitted': 1000,
    'gpu0.ended': 990,
    'gpu0.priority': 8,
    ...extra,
  };
}

t.test('gvm daemon over gvm-make-block --serve blocks: values, writes, the agent\'s refusals, a second user', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const mount = tmpDir(t, 'gvm-mnt-');
  const user = testUser(t);
  // root's block (this test's own process) and gvmtest's block (a sleep's pid, the file chowned)
  const rootPid = process.pid;
  await serveBlock(t, blockFile(shm, rootPid), blockFields(rootPid));
  const sleep = sleeper(t);
  const userPid = sleep.pid!;
  const userBlock = blockFile(shm, userPid);
  await serveBlock(t, userBlock, blockFields(userPid, { 'gpu0.current': 2 * GiB, 'gpu0.submitted': 50, 'gpu0.ended': 50 }));
  fs.chownSync(userBlock, user.uid, user.gid);
  const daemon = await startDaemon(t, mount, shm, true);
  const mine = `${mount}/processes/${rootPid}/0`;
  const theirs = `${mount}/processes/${userPid}/0`;

  t.same(sh(`ls ${mount}/processes`).stdout.split('\n').filter(Boolean), [rootPid, userPid].sort((a, b) => a - b).map(String));
  t.equal(sh(`cat ${mine}/gcgroup.stat`).stdout.split('\n').slice(0, 3).join('\n'), 'nr_submitted_kernels 1000\nnr_ended_kernels 990\nnr_pending_kernels 10');
  t.equal(sh(`cat ${mine}/memory.current`).stdout, `${GiB}\n`);
  t.equal(sh(`cat ${mine}/compute.priority ${mine}/compute.freeze ${mine}/memory.mode`).stdout, '8\n0\noom\n');
  t.equal(sh(`cat ${mount}/gpus/0/memory.used`).stdout, `${3 * GiB}\n`, 'GPU totals sum over processes');
  t.equal(sh(`cat ${mount}/gpus/0/processes ${mount}/gpus/0/kernels.submitted ${mount}/gpus/0/kernels.pending`).stdout, '2\n1050\n10\n');
  t.equal(sh(`cat ${mount}/gpus/0/memory.total ${mount}/gpus/0/name`).stdout, `${80 * GiB}\nNVIDIA H100 80GB HBM3\n`);

  // (dash's echo reports every failed write as "I/O error": /bin/echo names the errno)
  // owners and modes, as ls -ln shows them
  const modes = sh(`ls -ln ${theirs}`).stdout.split('\n').filter((l) => /^[-d]/.test(l));
  t.ok(modes.length === 7 && modes.every((l) => l.split(/ +/)[2] === String(user.uid)), `gvmtest owns its files:\n${modes.join('\n')}`);
  t.ok(modes.some((l) => /^-rw-r--r-- .* memory\.limit$/.test(l)) && modes.some((l) => /^-r--r--r-- .* memory\.current$/.test(l)), '0644 writable, 0444 read-only');
  t.match(sh(`ls -ld ${theirs}`).stdout, /^dr-xr-xr-x /, 'directories 0555');

  // root writes; values take GVM's suffixes; the write returns once the block says so
  t.equal(sh(`echo 8G > ${mine}/memory.limit`).status, 0);
  t.equal(sh(`cat ${mine}/memory.limit`).stdout, `${8 * GiB}\n`);
  t.equal(sh(`echo 512M > ${mine}/memory.limit && cat ${mine}/memory.limit`).stdout, `${512 * MiB}\n`);
  t.equal(sh(`echo 15 > ${mine}/compute.priority && cat ${mine}/compute.priority`).stdout, '15\n');
  for (const v of ['81G', '1T', '0']) {
    t.match(sh(`/bin/echo ${v} > ${mine}/memory.limit`).stderr, /Invalid argument/, `memory.limit <- ${v} (past the 80 GiB GPU, or 0): EINVAL`);
  }
  t.equal(sh(`cat ${mine}/memory.limit`).stdout, `${512 * MiB}\n`, 'nothing changed');
  // this stand-in agent cannot freeze: EIO, and the daemon logs why
  t.match(sh(`/bin/echo 1 > ${mine}/compute.freeze`).stderr, /Input\/output error/, 'an agent refusal is EIO');
  t.equal(sh(`cat ${mine}/compute.freeze`).stdout, '0\n');
  await new Promise((r) => setTimeout(r, 200));
  t.ok(daemon.log.some((l) => l.includes(`compute.freeze of process ${rootPid} GPU 0 = 1: agent status 2: freeze is not supported`)), 'the reason is in the log');
  t.ok(daemon.log.some((l) => l.includes(`memory.limit of process ${rootPid} GPU 0 = 8G (by uid 0)`)), 'applied writes are logged with the writer');
  // the GPU files and the directories are read-only for everyone
  t.match(sh(`echo 1 > ${mount}/gpus/0/processes`).stderr, /Permission denied/);
  t.not(sh(`touch ${mine}/new`).status, 0, 'no new files');

  // the second user: reads everything, writes only its own process's files
  t.equal(sh(`cat ${mine}/memory.current`, user.uid, user.gid).stdout, `${GiB}\n`, 'gvmtest reads root\'s files');
  const denied = sh(`echo 3 > ${mine}/compute.priority`, user.uid, user.gid);
  t.match(denied.stderr, /Permission denied/, 'gvmtest may not write root\'s files (EACCES)');
  t.equal(sh(`cat ${mine}/compute.priority`).stdout, '15\n', 'and nothing changed');
  t.equal(sh(`echo 3 > ${theirs}/compute.priority`, user.uid, user.gid).status, 0, 'gvmtest writes its own');
  t.equal(sh(`echo 4G > ${theirs}/memory.limit`, user.uid, user.gid).status, 0);
  t.equal(sh(`cat ${theirs}/compute.priority ${theirs}/memory.limit`).stdout, `3\n${4 * GiB}\n`);
  t.equal(sh(`echo 2 > ${theirs}/compute.priority`).status, 0, 'root writes anyone\'s');
  t.match(sh(`echo 1 > ${theirs}/memory.current`, user.uid, user.gid).stderr, /Permission denied/, 'read-only even for the owner');

  // writers in parallel take turns through the block's lock; every write is applied and answered
  const parallel = sh(`for i in 1 2 3 4 5 6 7 8 9 10 11 12; do (echo $i > ${mine}/compute.priority || echo FAIL) & done; wait`);
  t.equal(parallel.stdout + parallel.stderr, '', '12 parallel writes all succeed');
  t.match(sh(`cat ${mine}/compute.priority`).stdout, /^([1-9]|1[0-2])\n$/);

  // Prometheus, both processes
  const { samples } = parseExposition(await scrape(daemon.port));
  const get = (name: string, labels: Record<string, string>): number | undefined =>
    samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
  t.equal(get('gvm_memory_used_bytes', { pid: String(userPid), gpu: '0' }), 2 * GiB);
  t.equal(get('gvm_memory_limit_bytes', { pid: String(userPid) }), 4 * GiB);
  t.equal(get('gvm_kernels_pending', { pid: String(rootPid) }), 10);
  t.equal(get('gvm_kernels_ended_total', { pid: String(rootPid) }), 990);
  t.equal(get('gvm_gpu_memory_used_bytes', { gpu: '0' }), 3 * GiB);
  t.equal(get('gvm_gpu_memory_total_bytes', { gpu: '0' }), 80 * GiB);
  t.equal(get('gvm_gpu_kernels_pending', { gpu: '0' }), 10);
  t.equal(get('gvm_gpu_info', { gpu: '0', name: 'NVIDIA H100 80GB HBM3' }), 1);
  t.equal(get('gvm_processes', {}), 2);
});

t.test('a process that exits while its write waits gets ENOENT at once, not a timeout', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const mount = tmpDir(t, 'gvm-mnt-');
  const sleep = sleeper(t);
  makeBlock(blockFile(shm, sleep.pid), blockFields(sleep.pid!)); // nobody answers this block
  await startDaemon(t, mount, shm);
  const writer = spawn('sh', ['-c', `/bin/echo 5 > ${mount}/processes/${sleep.pid}/0/compute.priority`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  writer.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await new Promise((r) => setTimeout(r, 500));
  t.equal(writer.exitCode, null, 'the write waits for an answer');
  const killedAt = Date.now();
  sleep.kill('SIGKILL');
  const code = await new Promise<number | null>((r) => writer.on('exit', r));
  t.not(code, 0);
  t.match(stderr, /No such file or directory/, 'ENOENT');
  t.ok(Date.now() - killedAt < 3000, `answered ${Date.now() - killedAt} ms after the exit`);
});

t.test('a running gvmd\'s mount point is refused; SIGTERM unmounts cleanly', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const mount = tmpDir(t, 'gvm-mnt-');
  const first = await startDaemon(t, mount, shm);
  const second = spawnSync(process.execPath, [GVMD, '--mount', mount, '--shm-dir', shm, '--no-metrics'], { encoding: 'utf8', timeout: 15000 });
  t.equal(second.status, 1, 'a second gvmd on the same mount point fails');
  t.match(second.stderr, /already served by a running gvmd/);
  t.equal(sh(`ls ${mount}`).stdout, 'gpus\nprocesses\n', 'the first one still serves');
  first.child.kill('SIGTERM');
  const code = await new Promise<number | null>((r) => first.child.on('exit', r));
  t.equal(code, 0, 'exit status 0');
  t.ok(first.log.some((l) => /unmounted/.test(l)), 'it says so');
  t.not(spawnSync('mountpoint', ['-q', mount]).status, 0, 'nothing is mounted there any more');
  const bad = spawnSync(process.execPath, [GVMD, '--metrics-port', 'x'], { encoding: 'utf8' });
  t.equal(bad.status, 2, 'a bad option is a usage error');
});
