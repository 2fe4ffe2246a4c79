// gvm top: one frame for scripts (--once) against a known process, and the live view in tmux driven
// with keys: the selected process is frozen with 'f' and thawed with 't', and 'q' quits.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import t from 'tap';

import { Gvm } from '../lib/index';
import { CLI, startFakeAgent, tmpShm } from './helpers';



const tmux = (...args: string[]) => spawnSync('tmux', args, { encoding: 'utf8' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function screenUntil(session: string, re: RegExp, ms = 5000): Promise<string> {
  const end = Date.now() + ms;
  let screen = '';
  while (Date.now() < end) {
    screen = tmux('capture-pane', '-p', '-t', session).stdout;
    if (re.test(screen)) return screen;
    await sleep(100);
  }
  return screen;
}

t.test('gvm top --once prints the known state', async (t) => {
  const shm = tmpShm(t);
  fs.chmodSync(shm, 0o1777);
  const { pid } = await startFakeAgent(t, shm);
  const r = spawnSync(process.execPath, [CLI, 'top', '--once'], { encoding: 'utf8', env: { ...process.env, GVM_SHM_DIR: shm } });
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.split('\n');
  t.match(lines[0], /^gvm top .* 2 process-GPU row\(s\) {2}sort: memory/);
  t.ok(lines.some((l) => /^GPU 0 {2}Fake GPU 0 .* 15\.1 MiB \/ 80 GiB {2}swap 0 B {2}1 process\(es\)$/.test(l)), 'GPU 0 header with its totals');
  const row = lines.find((l) => l.includes(String(pid)) && l.includes('15.1 MiB'));
  t.ok(row, 'a row for the process on GPU 0');
  t.match(row ?? '', /^ +\d+ {2}root +8 {2}running .*15\.1 MiB \/ 80 GiB +0 B +\d+ +0 {2}.*gvm-prog-direct basic/);
  t.equal(spawnSync(process.execPath, [CLI, 'top', '--sort', 'size'], { encoding: 'utf8' }).status, 2, 'a bad sort key is a usage error');
});

t.test('gvm top live in tmux: f freezes the selected process, t thaws it, q quits', async (t) => {
  t.equal(tmux('-V').status, 0, 'tmux is installed');
  const shm = tmpShm(t);
  fs.chmodSync(shm, 0o1777);
  const { pid } = await startFakeAgent(t, shm);
  const session = `gvmtop${process.pid}`;
  t.teardown(() => tmux('kill-session', '-t', session));
  const started = tmux('new-session', '-d', '-s', session, '-x', '140', '-y', '30', `GVM_SHM_DIR=${shm} ${process.execPath} ${CLI} top`);
  t.equal(started.status, 0, started.stderr);
  let screen = await screenUntil(session, new RegExp(`> +${pid} .*running`));
  t.match(screen, /PID +USER +PRIO +STATE/, 'the live view is drawn');
  t.match(screen, new RegExp(`> +${pid} `), 'the first row is selected');
  using p = await Gvm.process(pid, { shmDir: shm });
  tmux('send-keys', '-t', session, 'f');
  screen = await screenUntil(session, /frozen: 11 channels disabled/);
  t.equal(p.gpu(0).compute.frozen, true, "'f' froze the process");
  t.match(screen, new RegExp(`> +${pid} .* frozen `), 'and the screen shows it');
  tmux('send-keys', '-t', session, 't');
  screen = await screenUntil(session, /thawed/);
  t.equal(p.gpu(0).compute.frozen, false, "'t' thawed it");
  tmux('send-keys', '-t', session, 's');
  screen = await screenUntil(session, /sort: rate/);
  t.match(screen, /sort: rate/, "'s' changes the sort");
  tmux('send-keys', '-t', session, 'q');
  await sleep(500);
  t.not(tmux('has-session', '-t', session).status, 0, "'q' quit (the session ended)");
});
