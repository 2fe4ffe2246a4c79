// gvm doctor: each check meets the situation it describes (made here with the environment overrides
// the agent and the tools share), says what to do, and the exit status fails only when processes
// would run without gvm's control. The driver check and the agent read the same version file.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

import { Gvm } from '../lib/index';
import { start } from './fake-prog';
import { CLI, tmpShm } from './helpers';

interface Check {
  name: string;
  status: 'ok' | 'info' | 'warn' | 'fail';
  detail: string;
  fix?: string;
}

function tmp(t: Tap.Test, prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A machine as the checks see it: a driver version file, a GPU list, a block directory, no MPS. */
function machine(t: Tap.Test, version: string | undefined, gpus: string[]): NodeJS.ProcessEnv {
  const root = tmp(t, 'gvm-doctor-');
  const versionFile = path.join(root, 'version');
  if (version !== undefined) fs.writeFileSync(versionFile, `${version}\n`);
  const gpuDir = path.join(root, 'gpus');
  fs.mkdirSync(gpuDir);
  for (const g of gpus) fs.mkdirSync(path.join(gpuDir, g));
  const shm = path.join(root, 'shm');
  fs.mkdirSync(shm);
  fs.chmodSync(shm, 0o1777);
  return {
    GVM_NVIDIA_VERSION_FILE: versionFile,
    GVM_NVIDIA_PROC_DIR: gpuDir,
    GVM_SHM_DIR: shm,
    CUDA_MPS_PIPE_DIRECTORY: path.join(root, 'no-mps'),
  };
}

function doctor(env: NodeJS.ProcessEnv, args: string[] = ['--json']) {
  const r = spawnSync(process.execPath, [CLI, 'doctor', ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  const checks = args.includes('--json') && r.stdout.trim().startsWith('[') ? (JSON.parse(r.stdout) as Check[]) : [];
  const get = (name: string) => checks.filter((c) => c.name === name);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, checks, get };
}

t.test('a verified driver with two GPUs: nothing to fix', async (t) => {
  const r = doctor(machine(t, '580.159.04', ['0000:41:00.0', '0000:c1:00.0']));
  t.equal(r.status, 0, r.stderr);
  t.same(r.get('driver').map((c) => c.status), ['ok']);
  t.match(r.get('driver')[0]?.detail, /NVIDIA 580\.159\.04: priority and the hardware freeze/);
  t.match(r.get('gpus')[0], { status: 'ok', detail: '2 GPUs: 0000:41:00.0, 0000:c1:00.0' });
  t.same(r.get('blocks').map((c) => c.status), ['ok']);
  t.match(r.get('mps')[0], { status: 'ok' });
  t.same(
    r.checks.map((c) => c.name).filter((n, i, a) => a.indexOf(n) === i),
    ['agent', 'addon', 'driver', 'gpus', 'libcuda', 'blocks', 'namespace', 'mps', 'fuse', 'backend', 'user'],
    'every check, in order',
  );
  t.ok(r.checks.every((c) => c.status === 'ok' || c.fix !== undefined), 'every finding that is not ok says what to do');
});

t.test('a driver outside the verified range, no driver, no GPU: warnings with their fixes, exit 0', async (t) => {
  const newer = doctor(machine(t, '590.10', []));
  t.equal(newer.status, 0);
  t.match(newer.get('driver')[0], { status: 'warn', detail: /590\.10 is outside 525\.\.580.*software freeze.*priority is unsupported/, fix: /GVM_RM_ANY_DRIVER=1/ });
  t.match(newer.get('gpus')[0], { status: 'warn', detail: /lists no GPU/ });
  const none = doctor(machine(t, undefined, []));
  t.match(none.get('driver')[0], { status: 'warn', detail: /no NVIDIA kernel module/ });
});

t.test('an MPS daemon: a warning that its clients get the software freeze only', async (t) => {
  const env = machine(t, '580.159.04', ['0000:41:00.0']);
  const pipe = tmp(t, 'gvm-mps-');
  fs.writeFileSync(path.join(pipe, 'control'), '');
  const r = doctor({ ...env, CUDA_MPS_PIPE_DIRECTORY: pipe });
  t.equal(r.status, 0);
  t.match(r.get('mps')[0], { status: 'warn', detail: /MPS clients.*software.*priority is unsupported/, fix: /nvidia-cuda-mps-control/ });
});

t.test('a block directory processes cannot use: fail and exit 1; one other users cannot use: warn', async (t) => {
  const env = machine(t, '580.159.04', ['0000:41:00.0']);
  const file = path.join(tmp(t, 'gvm-doctor-file-'), 'f');
  fs.writeFileSync(file, '');
  const bad = doctor({ ...env, GVM_SHM_DIR: path.join(file, 'gvm') });
  t.equal(bad.status, 1, 'exit 1: processes would run without control');
  t.match(bad.get('blocks')[0], { status: 'fail', detail: /is not a directory.*without gvm's control/, fix: /GVM_SHM_DIR/ });
  const closed = tmp(t, 'gvm-doctor-shm-');
  fs.chmodSync(closed, 0o755);
  const narrow = doctor({ ...env, GVM_SHM_DIR: closed });
  t.equal(narrow.status, 0);
  t.same(narrow.get('blocks').map((c) => c.status), ['ok', 'warn']);
  t.match(narrow.get('blocks')[1], { detail: /mode 755, not 1777/, fix: `chmod 1777 ${closed}` });
});

t.test('no agent library: fail, exit 1', async (t) => {
  const r = doctor({ ...machine(t, '580.159.04', []), GVM_AGENT_PATH: '/nonexistent/libgvm.so' });
  t.equal(r.status, 1);
  t.match(r.get('agent')[0], { status: 'fail', detail: /cannot find the gvm agent/ });
});

t.test('inside a container (a PID namespace of its own): how blocks are named, how to reach the host', async (t) => {
  const probe = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'true']);
  if (probe.status !== 0) {
    t.skip('unshare --pid --fork --mount-proc is refused here');
    return;
  }
  const env = machine(t, '580.159.04', ['0000:41:00.0']);
  const r = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, CLI, 'doctor', '--json'], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  t.equal(r.status, 0, r.stderr);
  const ns = (JSON.parse(r.stdout) as Check[]).find((c) => c.name === 'namespace');
  t.match(ns, { status: 'info', detail: /a container \(PID namespace \d+\): blocks are named <pid>@\d+/, fix: /bind-mount/ });
});

t.test('the text form: one line per finding, a fix under each warning; bad arguments exit 2', async (t) => {
  const r = doctor(machine(t, '590.10', []), []);
  t.equal(r.status, 0);
  t.match(r.stdout, /^warn +driver +NVIDIA 590\.10 is outside/m);
  t.match(r.stdout, /^ +fix: a driver in 525\.\.580/m);
  t.equal(doctor({}, ['--bogus']).status, 2);
});

t.test('the agent reads the driver version where doctor does: priority works on 580, is refused on 590', async (t) => {
  for (const [version, works] of [['580.159.04', true], ['590.10', false]] as const) {
    const shm = tmpShm(t);
    const root = tmp(t, 'gvm-doctor-drv-');
    const versionFile = path.join(root, 'version');
    fs.writeFileSync(versionFile, `${version}\n`);
    const prog = start(t, shm, 'direct', 'basic', { GVM_NVIDIA_VERSION_FILE: versionFile });
    const ready = JSON.parse((await prog.line('READY')).slice(6)) as { pid: number };
    using p = await Gvm.process(ready.pid, { shmDir: shm });
    if (works) t.match((await p.gpu(0).setPriority(12)).message, /timeslice/, `${version}: the RM path`);
    else await t.rejects(p.gpu(0).setPriority(12), { code: 'EGVM_UNSUPPORTED' }, `${version}: refused, as doctor says`);
  }
});
