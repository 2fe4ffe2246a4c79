// A control-block directory gvm cannot use (a file in its place, a full tmpfs): a program under the
// agent still runs to the end with its work intact and one clear warning; `gvm run` refuses to start
// a command it could not control, before anything runs, and says why.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

import { start } from './fake-prog';
import { gvm, NOOP_PRELOAD, tmpShm } from './helpers';

/** A tmpfs of `kib` KiB filled to the last byte, or the reason none can be mounted here. */
function fullTmpfs(t: Tap.Test, kib: number): string | { cannot: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gvm-full-'));
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${kib}k`, 'tmpfs', dir], { encoding: 'utf8' });
  if (m.status !== 0) {
    fs.rmdirSync(dir);
    return { cannot: `cannot mount a tmpfs here (${(m.stderr || String(m.error)).trim()}): needs root` };
  }
  t.teardown(() => {
    spawnSync('umount', ['-l', dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const fd = fs.openSync(path.join(dir, 'filler'), 'w');
  const chunk = Buffer.alloc(4096, 1);
  try {
    for (;;) fs.writeSync(fd, chunk);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    fs.closeSync(fd);
  }
  return dir;
}

/** The agent's warnings in a program's stderr. */
const warnings = (stderr: string) => stderr.split('\n').filter((l) => /^\[gvm \d+ warn\]/.test(l));

async function runsUncontrolled(t: Tap.Test, shm: string, cause: RegExp): Promise<void> {
  const prog = start(t, shm, 'direct', 'basic');
  const ready = await prog.report('READY');
  t.ok(ready.gpus['0']!.kernels > 0 && ready.gpus['0']!.deviceBytes > 0, 'the program did its work (kernels, allocations)');
  const freed = await prog.report('FREED', prog.send('free'));
  t.ok(freed.gpus['0']!.deviceBytes < ready.gpus['0']!.deviceBytes, 'and freed');
  prog.send('exit');
  t.equal(await prog.exited, 0, 'exits cleanly: gvm being unable to control it harmed nothing');
  const w = warnings(prog.stderr);
  t.equal(w.length, 1, `one warning, not one per call: ${w.join(' | ')}`);
  t.match(w[0] ?? '', new RegExp(`^\\[gvm ${ready.pid} warn\\] `), 'with the process id');
  t.match(w[0] ?? '', cause, 'naming the cause');
  t.match(w[0] ?? '', /runs without gvm's control \(no memory limit, priority or freeze\)/, 'and what it means');
  const r = gvm(['get', String(ready.pid), 'memory.current'], { GVM_SHM_DIR: shm });
  t.not(r.status, 0, 'gvm get has nothing to read for it');
}

t.test('the agent: a file where the block directory should be', async (t) => {
  const shm = path.join(tmpShm(t), 'not-a-dir');
  fs.writeFileSync(shm, 'x');
  await runsUncontrolled(t, shm, /cannot use .*not-a-dir \(Not a directory\)/);
});

t.test('the agent: a full tmpfs', async (t) => {
  const full = fullTmpfs(t, 64);
  if (typeof full !== 'string') return t.skip(full.cannot);
  await runsUncontrolled(t, full, /cannot (size|create) .*No space left on device/);
  t.same(fs.readdirSync(full), ['filler'], 'no half-made block left behind');
});

t.test('gvm run refuses before starting the command, and says why', async (t) => {
  const base = tmpShm(t);
  const marker = path.join(base, 'ran');
  const env = { GVM_AGENT_PATH: NOOP_PRELOAD };
  const file = path.join(base, 'a-file');
  fs.writeFileSync(file, 'x');

  const r = gvm(['run', '--memory-limit', '1G', '--', 'touch', marker], { ...env, GVM_SHM_DIR: file });
  t.equal(r.status, 1, 'exit 1');
  t.match(r.stderr, /^gvm: cannot run touch under gvm: its control block cannot be created \(.*a-file is not a directory\); .*GVM_SHM_DIR.*\(EGVM_IO\)\n$/);
  t.notOk(fs.existsSync(marker), 'the command never ran');

  const below = gvm(['run', '--', 'touch', marker], { ...env, GVM_SHM_DIR: path.join(file, 'gvm') });
  t.equal(below.status, 1, 'a path below a file: exit 1');
  t.match(below.stderr, /a-file is not a directory/);

  const fresh = gvm(['run', '--', 'touch', marker], { ...env, GVM_SHM_DIR: path.join(base, 'new', 'gvm') });
  t.equal(fresh.status, 0, 'a directory the agent can create is fine');
  t.ok(fs.existsSync(marker), 'and the command ran');
  fs.rmSync(marker);

  const full = fullTmpfs(t, 64);
  if (typeof full !== 'string') return t.skip(full.cannot);
  const f = gvm(['run', '--', 'touch', marker], { ...env, GVM_SHM_DIR: full });
  t.equal(f.status, 1, 'a full tmpfs: exit 1');
  t.match(f.stderr, /has 0 bytes free, a control block needs \d+ \(a full \/dev\/shm\?\).*\(EGVM_IO\)/);
  t.notOk(fs.existsSync(marker), 'the command never ran');
  const gvmDir = gvm(['run', '--', 'touch', marker], { ...env, GVM_SHM_DIR: path.join(full, 'gvm') });
  t.equal(gvmDir.status, 1, 'nor in a directory still to be made on it');
});
