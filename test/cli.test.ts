// The built CLI (dist/cli/gvm.js), spawned as a user would.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

import { blockFile, CLI, deadPid, gvm, liveBlock, makeBlock, NOOP_PRELOAD, ROOT, startTime, tmpShm } from './helpers';

const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

t.test('help and version', async (t) => {
  for (const args of [['help'], ['--help'], ['-h']]) {
    const r = gvm(args);
    t.equal(r.status, 0, args.join(' '));
    t.match(r.stdout, /^Usage: gvm <command>/);
    t.match(r.stdout, /run \[options\] -- CMD/);
  }
  for (const cmd of ['run', 'ps', 'get', 'debug', 'help']) {
    const r = gvm(['help', cmd]);
    t.equal(r.status, 0);
    t.match(r.stdout, new RegExp(`^Usage: gvm ${cmd}`), `help ${cmd}`);
    if (cmd !== 'help') t.equal(gvm([cmd, '--help']).stdout, r.stdout, `${cmd} --help`);
  }
  t.equal(gvm(['--version']).stdout.trim(), version);
  t.equal(gvm(['-V']).stdout.trim(), version);
});

t.test('argument errors exit 2 with usage on stderr', async (t) => {
  const cases: [string[], RegExp, RegExp][] = [
    [[], /missing a command/, /^Usage: gvm <command>/m],
    [['frobnicate'], /unknown command 'frobnicate'/, /^Usage: gvm <command>/m],
    [['help', 'nope'], /no help for 'nope'/, /^Usage: gvm <command>/m],
    [['run'], /no command to run/, /^Usage: gvm run/m],
    [['run', '--'], /no command to run/, /^Usage: gvm run/m],
    [['run', '--memory-limit'], /--memory-limit needs a value/, /^Usage: gvm run/m],
    [['run', '--memory-limit', '-1G', '--', 'true'], /negative/, /^Usage: gvm run/m],
    [['run', '--memory-limit', '1.5', '--', 'true'], /whole number of bytes/, /^Usage: gvm run/m],
    [['run', '--memory-limit=lots', '--', 'true'], /invalid size 'lots'/, /^Usage: gvm run/m],
    [['run', '--memory-mode', 'maybe', '--', 'true'], /oom or swap/, /^Usage: gvm run/m],
    [['run', '--priority', '16', '--', 'true'], /0\.\.15/, /^Usage: gvm run/m],
    [['run', '--priority', '-1', '--', 'true'], /0\.\.15/, /^Usage: gvm run/m],
    [['run', '--priority', 'high', '--', 'true'], /0\.\.15/, /^Usage: gvm run/m],
    [['run', '--log', 'verbose', '--', 'true'], /error, warn, info or debug/, /^Usage: gvm run/m],
    [['run', '--bogus', '--', 'true'], /unknown option --bogus/, /^Usage: gvm run/m],
    [['ps', 'extra'], /unexpected argument 'extra'/, /^Usage: gvm ps/m],
    [['ps', '--wide'], /unexpected argument '--wide'/, /^Usage: gvm ps/m],
    [['get'], /expected PID\[:GPU\] and KEY/, /^Usage: gvm get/m],
    [['get', '123'], /expected PID\[:GPU\] and KEY/, /^Usage: gvm get/m],
    [['get', 'abc', 'memory.current'], /bad PID\[:GPU\] 'abc'/, /^Usage: gvm get/m],
    [['get', '0', 'memory.current'], /bad PID/, /^Usage: gvm get/m],
    [['get', '12:x', 'memory.current'], /bad PID/, /^Usage: gvm get/m],
    [['get', '12:-1', 'memory.current'], /unknown option|bad PID/, /^Usage: gvm get/m],
    [['get', '99999999999', 'memory.current'], /bad PID/, /^Usage: gvm get/m],
    [['get', '12', 'memory.bogus'], /unknown key 'memory.bogus'/, /^Usage: gvm get/m],
    [['get', '12', 'memory.current', 'extra'], /expected PID\[:GPU\] and KEY/, /^Usage: gvm get/m],
    [['get', '12', 'memory.current', '--yaml'], /unknown option --yaml/, /^Usage: gvm get/m],
    [['debug'], /missing a debug view/, /^Usage: gvm debug/m],
    [['debug', 'gpu', '12'], /unknown debug view 'gpu'/, /^Usage: gvm debug/m],
    [['debug', 'rm'], /expected: debug rm PID/, /^Usage: gvm debug/m],
    [['debug', 'rm', 'x'], /bad PID/, /^Usage: gvm debug/m],
  ];
  for (const [args, message, usage] of cases) {
    const r = gvm(args, { GVM_AGENT_PATH: NOOP_PRELOAD });
    const name = `gvm ${args.join(' ')}`;
    t.equal(r.status, 2, `${name}: exit 2`);
    t.match(r.stderr, new RegExp(`^gvm: [^\\n]*${message.source}`), `${name}: message`);
    t.match(r.stderr, usage, `${name}: usage`);
    t.equal(r.stdout, '', `${name}: nothing on stdout`);
  }
});

t.test('run: LD_PRELOAD, settings, exit status', async (t) => {
  const script = 'printf "%s|%s|%s|%s|%s\\n" "$LD_PRELOAD" "$GVM_MEMORY_LIMIT" "$GVM_MEMORY_MODE" "$GVM_PRIORITY" "$GVM_LOG"; exit 7';
  const env = { GVM_AGENT_PATH: NOOP_PRELOAD, LD_PRELOAD: '', GVM_MEMORY_LIMIT: '', GVM_MEMORY_MODE: '', GVM_PRIORITY: '', GVM_LOG: '' };
  const r = gvm(['run', '--memory-limit', '8G', '--memory-mode=swap', '--priority', '3', '--log', 'debug', '--', 'sh', '-c', script], env);
  t.equal(r.status, 7, 'the child\'s exit status');
  t.equal(r.stdout, `${NOOP_PRELOAD}|8589934592|swap|3|debug\n`);

  const other = path.join(ROOT, 'build', 'Release', 'gvm.node');
  const r2 = gvm(['run', 'sh', '-c', 'echo "$LD_PRELOAD"'], { ...env, LD_PRELOAD: `${other}:${NOOP_PRELOAD}` });
  t.equal(r2.status, 0);
  t.equal(r2.stdout, `${NOOP_PRELOAD}:${other}\n`, 'prepended to an existing LD_PRELOAD, not repeated');

  const r3 = gvm(['run', '--', 'sh', '-c', 'cat'], env, 'through stdin\n');
  t.equal(r3.stdout, 'through stdin\n', 'stdio is inherited');

  const r4 = gvm(['run', '--', 'sh', '-c', 'kill -TERM $$'], env);
  t.equal(r4.status, 128 + 15, '128 + signal');

  const r5 = gvm(['run', '--', 'no-such-command-gvm'], env);
  t.equal(r5.status, 127);
  t.match(r5.stderr, /gvm: cannot run no-such-command-gvm/);

  const r6 = gvm(['run', '--', 'true'], { GVM_AGENT_PATH: '/nonexistent/libgvm.so' });
  t.equal(r6.status, 1);
  t.match(r6.stderr, /cannot find the gvm agent libgvm\.so; tried:\n {2}\/nonexistent\/libgvm\.so\n.*GVM_AGENT_PATH.*\(EGVM_NOT_FOUND\)/s);
});

t.test('run --swap-prewarm: whole MiB, rounded up; bad sizes refused', async (t) => {
  const env = { GVM_AGENT_PATH: NOOP_PRELOAD, GVM_SWAP_PREWARM_MIB: '' };
  for (const [size, mib] of [['8G', '8192'], ['1.5M', '2'], ['1', '1'], ['0', '0']] as const) {
    const r = gvm(['run', '--swap-prewarm', size, '--', 'sh', '-c', 'echo "$GVM_SWAP_PREWARM_MIB"'], env);
    t.equal(r.status, 0, r.stderr);
    t.equal(r.stdout, `${mib}\n`, `${size} -> ${mib} MiB`);
  }
  for (const bad of ['-1G', 'lots', '1KB']) {
    const r = gvm(['run', '--swap-prewarm', bad, '--', 'true'], env);
    t.equal(r.status, 2, `${bad}: exit 2`);
    t.match(r.stderr, /^gvm: --swap-prewarm: /, `${bad}: says which option`);
  }
});

t.test('run forwards SIGTERM to the child', async (t) => {
  const child = spawn(process.execPath, [CLI, 'run', '--', 'sh', '-c', 'trap "echo got-term; exit 42" TERM; echo started; while :; do sleep 0.05; done'], {
    env: { ...process.env, GVM_AGENT_PATH: NOOP_PRELOAD },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('started')) resolve();
    });
  });
  child.kill('SIGTERM');
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.equal(code, 42);
  t.match(out, /got-term/);
});

t.test('ps and get over made blocks', async (t) => {
  const dir = tmpShm(t);
  const env = { GVM_SHM_DIR: dir, COLUMNS: '' };
  const empty = gvm(['ps'], env);
  t.equal(empty.status, 0);
  t.match(empty.stdout, /^ *PID +USER +GPU +MEMORY +SWAP +KERNELS +PENDING +PRIO +STATE +COMMAND\n$/);
  t.equal(gvm(['ps', '--json'], env).stdout.trim(), '[]');

  const pid = process.pid;
  liveBlock(dir, pid, {
    'gpu0.swap': 3 * 2 ** 20,
    'gpu0.peak': 2 ** 31,
    'gpu0.mode': 1,
    'gpu0.managed': 4096,
    'gpu0.host': 8192,
    'gpu0.allocs': 9,
    'gpu0.frees': 4,
    'gpu0.failures': 1,
    'gpu0.contexts': 1,
    'gpu1.present': 1,
    'gpu1.ordinal': 1,
    'gpu1.frozen': 1,
    'gpu1.priority': 2,
    'gpu1.submitted': 7,
    'gpu1.ended': 7,
    'gpu1.tsg0': '0x5c000010:1:1:0x5c000000:1024',
    'gpu1.tsg1': '0x5c000020:14:1:0x5c000000',
    'gpu1.ch0': '0x5c000011:0x5c000010:0xc86f',
    'gpu1.rm_client': 0xc1d00001,
    'gpu1.rm_device': 0x5c000000,
    'gpu1.rm_subdevice': 0x5c000001,
    'gpu1.rm_fd': 9,
    cmdline: `python ${'x'.repeat(200)}`,
  });
  const parent = process.ppid;
  makeBlock(blockFile(dir, parent), { pid: parent, start_time: startTime(parent), state: 0, cmdline: 'starting-up' });
  const dead = deadPid();
  makeBlock(blockFile(dir, dead), { pid: dead, start_time: 1 });

  const ps = gvm(['ps'], env);
  t.equal(ps.status, 0, ps.stderr);
  const lines = ps.stdout.trimEnd().split('\n');
  t.equal(lines.length, 4, 'header + 2 GPU rows + 1 row for the process without GPUs');
  const [lo, hi] = parent < pid ? [parent, pid] : [pid, parent];
  t.match(lines.slice(1).map((l) => l.trim().split(/\s+/)[0]), [String(lo), String(lo === pid ? pid : parent), String(hi)].slice(0, 1));
  const ours = lines.filter((l) => l.trim().startsWith(`${pid} `));
  t.equal(ours.length, 2);
  t.match(ours[0], /^\s*\d+\s+\S+\s+0\s+1 GiB \/ 8 GiB\s+3 MiB\s+1000\s+10\s+8\s+ready\s+python x+$/);
  t.match(ours[1], /^\s*\d+\s+\S+\s+1\s+0 B \/ 0 B\s+0 B\s+7\s+0\s+2\s+frozen\s+python x+$/);
  const starting = lines.find((l) => l.trim().startsWith(`${parent} `));
  t.match(starting, /-\s+-\s+-\s+-\s+-\s+-\s+starting\s+starting-up$/);
  t.notOk(fs.existsSync(blockFile(dir, dead)), 'ps removed the stale block');

  const narrow = gvm(['ps'], { ...env, COLUMNS: '80' });
  t.ok(narrow.stdout.split('\n').every((l) => l.length <= 80), 'COMMAND truncated to the terminal width');
  t.match(narrow.stdout, /…/);

  const json = gvm(['ps', '--json'], env);
  t.equal(json.status, 0);
  const rows = JSON.parse(json.stdout) as Record<string, unknown>[];
  t.equal(rows.length, 3);
  const row = rows.find((r) => r.pid === pid && (r.gpu as { ordinal: number } | null)?.ordinal === 0);
  t.match(row, {
    pid,
    user: String,
    command: `python ${'x'.repeat(200)}`,
    agentState: 'ready',
    state: 'ready',
    driverVersion: 13000,
    startTime: startTime(pid),
    gpu: {
      index: 0,
      ordinal: 0,
      uuid: 'GPU-6b5e1a7c-2f3d-4e8f-9a0b-1c2d3e4f5a6b',
      name: 'NVIDIA H100 80GB HBM3',
      pciBusId: '0000:41:00.0',
      totalBytes: 85899345920,
      memory: { current: 1073741824, limit: 8589934592, swapCurrent: 3 * 2 ** 20, peak: 2 ** 31, managed: 4096, host: 8192, mode: 'swap' },
      kernels: { submitted: 1000, ended: 990, pending: 10 },
      compute: { priority: 8, frozen: false },
      contexts: 1,
      allocations: { count: 9, frees: 4, failures: 1 },
    },
  });
  t.match(rows.find((r) => r.pid === parent), { gpu: null, agentState: 'starting' });

  const get = (args: string[]) => {
    const r = gvm(['get', ...args], env);
    t.equal(r.status, 0, `get ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  t.equal(get([String(pid), 'memory.current']), '1073741824\n');
  t.equal(get([String(pid), 'memory.limit']), '8589934592\n');
  t.equal(get([String(pid), 'memory.swap.current']), '3145728\n');
  t.equal(get([String(pid), 'memory.peak']), '2147483648\n');
  t.equal(get([String(pid), 'memory.mode']), 'swap\n');
  t.equal(get([String(pid), 'compute.priority']), '8\n');
  t.equal(get([String(pid), 'compute.freeze']), '0\n');
  t.equal(get([`${pid}:1`, 'compute.freeze']), '1\n');
  t.equal(get([`${pid}:1`, 'compute.priority']), '2\n');
  t.equal(get([String(pid), 'kernels.submitted']), '1000\n');
  t.equal(get([String(pid), 'kernels.ended']), '990\n');
  t.equal(get([String(pid), 'kernels.pending']), '10\n');
  t.equal(get([String(pid), 'memory.mode', '--json']), '"swap"\n');
  t.equal(get([String(pid), 'memory.limit', '--json']), '8589934592\n');
  const stat = get([`${pid}:0`, 'gcgroup.stat']).split('\n');
  t.same(stat.slice(0, 3), ['nr_submitted_kernels 1000', 'nr_ended_kernels 990', 'nr_pending_kernels 10']);
  t.ok(stat.includes('memory_current 1073741824') && stat.includes('nr_alloc_failures 1'), 'then gvm\'s own counters');
  t.match(JSON.parse(get([String(pid), 'gcgroup.stat', '--json'])), { nr_submitted_kernels: 1000, nr_pending_kernels: 10 });

  const rm = gvm(['debug', 'rm', `${pid}:1`], env);
  t.equal(rm.status, 0, rm.stderr);
  t.match(rm.stdout, /RM fd 9 {2}client 0xc1d00001 {2}device 0x5c000000 {2}subdevice 0x5c000001/);
  t.match(rm.stdout, /0x5c000010 {2}compute \(GR\) +1 {2}0x5c000000 {2}1024 us/);
  t.match(rm.stdout, /0x5c000020 {2}copy \(CE, type 14\) +1 {2}0x5c000000 {2}unknown/);
  t.match(rm.stdout, /channels: 1\n.*\n {2}0x5c000011 {2}0x5c000010 {2}0xc86f/);

  const errors: [string[], RegExp][] = [
    [['get', `${pid}:5`, 'memory.current'], /does not use GPU 5 \(EGVM_NOT_FOUND\)/],
    [['get', String(parent), 'memory.current'], /has no GPU yet \(agent state: starting\) \(EGVM_NOT_FOUND\)/],
    [['get', '2147483646', 'memory.current'], /no gvm process 2147483646.*\(EGVM_NOT_FOUND\)/],
    [['get', String(dead), 'memory.current'], /\(EGVM_NOT_FOUND\)/],
    [['debug', 'rm', '2147483646'], /\(EGVM_NOT_FOUND\)/],
  ];
  for (const [args, message] of errors) {
    const r = gvm(args, env);
    t.equal(r.status, 1, `gvm ${args.join(' ')}: exit 1`);
    t.match(r.stderr, new RegExp(`^gvm: [^\\n]*${message.source}\n$`), `gvm ${args.join(' ')}: message`);
  }
});
