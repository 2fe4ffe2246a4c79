// gvm top: one frame for scripts (--once) checked against known blocks and a real agent process, and
// the live view in tmux (120x40) driven with keys: selection (j/k), sort (s), freeze (f) of the selected
// process checked through the API, thaw (t), quit (q).
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

import { Gvm } from '../lib/index';
import { blockFile, CLI, makeBlock, startFakeAgent, startTime, tmpShm } from './helpers';

const GiB = 1 << 30;
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

/** A known block for a live sleep process: GPU 0, 1 GiB of an 8 GiB limit, 256 MiB swapped, frozen, priority 15. */
function knownProcess(t: Tap.Test, shm: string): number {
  const child: ChildProcess = spawn('sleep', ['1000'], { stdio: 'ignore' });
  t.teardown(() => void child.kill('SIGKILL'));
  const pid = child.pid!;
  makeBlock(blockFile(shm, pid), {
    pid,
    start_time: startTime(pid),
    gpu_count: 1,
    cmdline: 'python finetune.py',
    'gpu0.present': 1,
    'gpu0.name': 'Fake GPU 0',
    'gpu0.total': 80 * GiB,
    'gpu0.limit': 8 * GiB,
    'gpu0.current': GiB,
    'gpu0.swap': GiB / 4,
    'gpu0.submitted': 5000,
    'gpu0.ended': 4959,
    'gpu0.priority': 15,
    'gpu0.frozen': 1,
  });
  return pid;
}

t.test('gvm top --once prints the known state', async (t) => {
  const shm = tmpShm(t);
  fs.chmodSync(shm, 0o1777);
  const { pid, deviceBytes } = await startFakeAgent(t, shm);
  const known = knownProcess(t, shm);
  const r = spawnSync(process.execPath, [CLI, 'top', '--once'], { encoding: 'utf8', env: { ...process.env, GVM_SHM_DIR: shm } });
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.split('\n');
  t.match(lines[0], /^gvm top {2}\d\d:\d\d:\d\d {2}3 process-GPU row\(s\) {2}sort: memory {2}keys: /);
  const header = lines.findIndex((l) => l.startsWith('GPU 0 '));
  t.match(lines[header], /^GPU 0 {2}Fake GPU 0 {2}\[\.{30}\] 1 GiB \/ 80 GiB {2}swap 256 MiB {2}2 process\(es\) {2}0 kernels\/s {2}41 pending$/, 'GPU 0: totals over both processes');
  t.match(lines[header + 1], /^ +PID +USER +PRIO +STATE +MEMORY .* SWAP +KERNELS\/S +PENDING +COMMAND$/);
  // sorted by memory: the 1 GiB process first, then the agent
  t.equal(
    lines[header + 2],
    `${String(known).padStart(7)}  root        15  frozen   [##~.............] 1 GiB / 8 GiB         256 MiB             0        41  python finetune.py`,
    'the known process, exactly',
  );
  t.match(lines[header + 3], new RegExp(`^ +${pid} {2}root {9}8 {2}running {2}\\[\\.{16}\\] 15\\.1 MiB / 80 GiB +0 B +0 +0 {2}.*gvm-prog-direct basic`), 'the agent process');
  t.ok(deviceBytes > 15 * (1 << 20), 'the agent holds 15.1 MiB');
  const gpu1 = lines.findIndex((l) => l.startsWith('GPU 1 '));
  t.ok(gpu1 > header && lines[gpu1 + 2]!.includes(String(pid)), 'GPU 1 has the agent only');
  const byPid = spawnSync(process.execPath, [CLI, 'top', '--once', '--sort', 'pid'], { encoding: 'utf8', env: { ...process.env, GVM_SHM_DIR: shm } });
  const rowsByPid = byPid.stdout.split('\n').filter((l) => /^ +\d+ {2}root/.test(l)).map((l) => Number(l.trim().split(' ')[0]));
  t.same(rowsByPid.slice(0, 2), [pid, known].sort((a, b) => a - b), '--sort pid orders GPU 0 by pid');
  t.equal(spawnSync(process.execPath, [CLI, 'top', '--sort', 'size'], { encoding: 'utf8' }).status, 2, 'a bad sort key is a usage error');
});

t.test('gvm top live in tmux: j/k select, f freezes the selected process, t thaws it, s sorts, q quits', async (t) => {
  t.equal(tmux('-V').status, 0, 'tmux is installed');
  const shm = tmpShm(t);
  fs.chmodSync(shm, 0o1777);
  const { pid } = await startFakeAgent(t, shm);
  const known = knownProcess(t, shm); // started after the agent: a larger pid, more memory
  const session = `gvmtop${process.pid}`;
  t.teardown(() => tmux('kill-session', '-t', session));
  const started = tmux('new-session', '-d', '-s', session, '-x', '120', '-y', '40', `GVM_SHM_DIR=${shm} ${process.execPath} ${CLI} top`);
  t.equal(started.status, 0, started.stderr);
  let screen = await screenUntil(session, new RegExp(`> +${known} .*frozen`));
  t.match(screen, /PID +USER +PRIO +STATE/, 'the live view is drawn');
  t.match(screen, new RegExp(`> +${known} `), 'the first row (most memory) is selected');
  t.equal(screen.split('\n').filter((l) => l.startsWith('>')).length, 1, 'one selected row');

  tmux('send-keys', '-t', session, 'j');
  screen = await screenUntil(session, new RegExp(`> +${pid} +root +8 +running`));
  t.match(screen, new RegExp(`> +${pid} `), "'j' selects the next row (the agent on GPU 0)");
  using p = await Gvm.process(pid, { shmDir: shm });
  tmux('send-keys', '-t', session, 'f');
  screen = await screenUntil(session, new RegExp(`> +${pid} .* frozen `));
  t.equal(p.gpu(0).compute.frozen, true, "'f' froze the selected process on GPU 0");
  t.equal(p.gpu(1).compute.frozen, false, 'and only on that GPU');
  t.match(screen, new RegExp(`> +${pid} .* frozen `), 'the screen shows it frozen');
  t.match(screen, /frozen: \d+ channels of \d+ TSGs disabled/, "and the agent's answer");

  tmux('send-keys', '-t', session, 'k');
  screen = await screenUntil(session, new RegExp(`> +${known} `));
  t.match(screen, new RegExp(`> +${known} `), "'k' goes back up");
  tmux('send-keys', '-t', session, 'j', 't');
  screen = await screenUntil(session, /thawed/);
  t.equal(p.gpu(0).compute.frozen, false, "'t' thawed it");

  tmux('send-keys', '-t', session, 's');
  screen = await screenUntil(session, /sort: rate/);
  t.match(screen, /sort: rate/, "'s' changes the sort");
  tmux('send-keys', '-t', session, 's');
  screen = await screenUntil(session, /sort: pid/);
  const order = screen.split('\n').filter((l) => /^[> ] +\d+ {2}root/.test(l)).map((l) => Number(l.slice(1).trim().split(' ')[0]));
  t.same(order.slice(0, 2), [pid, known].sort((a, b) => a - b), 'sort: pid orders GPU 0 by pid');
  t.match(screen, new RegExp(`> +${pid} `), 'the selection follows its row');
  t.ok(screen.split('\n').every((l) => l.length <= 120), 'no line is wider than the terminal');

  tmux('send-keys', '-t', session, 'q');
  await sleep(500);
  t.not(tmux('has-session', '-t', session).status, 0, "'q' quit (the session ended)");
});
