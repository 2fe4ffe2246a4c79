// gvmd: the real FUSE tree mounted over a real agent process on the fake driver, driven with shell
// commands (cat, echo >, ls), another user for the permission cases, and a scrape of /metrics.
// CI runs as root with /dev/fuse: without FUSE these tests fail, they do not skip.
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import t from 'tap';

import { Gvm } from '../lib/index';
import { ROOT, startFakeAgent } from './helpers';

const GVMD = path.join(ROOT, 'dist', 'daemon', 'gvmd.js');
const MiB = 1 << 20;

function tmpDir(t: Tap.Test, prefix: string, mode = 0o755): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, mode);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface Daemon {
  child: ChildProcess;
  port: number;
  log: string[];
}

async function startDaemon(t: Tap.Test, mount: string, shm: string): Promise<Daemon> {
  const child = spawn(process.execPath, [GVMD, '--mount', mount, '--shm-dir', shm, '--metrics-port', '0'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const log: string[] = [];
  const port = await new Promise<number>((resolve, reject) => {
    readline.createInterface({ input: child.stderr! }).on('line', (l) => {
      log.push(l);
      const m = /metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(l);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', (code) => reject(new Error(`gvmd exited ${code}: ${log.join(' | ')}`)));
    setTimeout(() => reject(new Error(`gvmd did not start: ${log.join(' | ')}`)), 15000);
  });
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.on('exit', r));
    }
    spawnSync('fusermount3', ['-uz', mount]);
  });
  return { child, port, log };
}


/** Runs a shell command, as root or as another uid. */
function sh(cmd: string, uid?: number): { status: number | null; stdout: string; stderr: string } {
  const args = uid === undefined ? ['-c', cmd] : ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'sh', '-c', cmd];
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

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A strict parser of the Prometheus text exposition format (0.0.4): throws on any malformed line. */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      if (m[1] === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(m[3]!)) throw new Error(`bad TYPE: ${line}`);
        types.set(m[2]!, m[3]!);
      }
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+]+|NaN|[+-]Inf)$/.exec(line);
    if (!m) throw new Error(`malformed sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/g;
      let consumed = 0;
      for (let l = re.exec(m[3]); l; l = re.exec(m[3])) {
        labels[l[1]!] = l[2]!;
        consumed += l[0].length;
      }
      if (consumed !== m[3].length) throw new Error(`malformed labels: ${line}`);
    }
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return { samples, types };
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
  t.comment(`one read of memory.current through FUSE: ${(Number(process.hrtime.bigint() - t0) / 20 / 1e6).toFixed(3)} ms`);

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
  if (spawnSync('id', ['gvmtest']).status !== 0) {
    const r = spawnSync('useradd', ['--no-create-home', '--shell', '/usr/sbin/nologin', 'gvmtest'], { encoding: 'utf8' });
    t.equal(r.status, 0, `useradd gvmtest: ${r.stderr}`);
  }
  const uid = Number(spawnSync('id', ['-u', 'gvmtest'], { encoding: 'utf8' }).stdout.trim());
  const agent = await startFakeAgent(t, shm);
  // the block is the user's in real life (the agent creates it as that user); hand this one over
  fs.chownSync(path.join(shm, String(agent.pid)), uid, uid);
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
