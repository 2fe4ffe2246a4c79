// The addon against blocks written by test/tools/make-block.c.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

import { GvmError } from '../lib/errors';
import { native } from '../lib/native';
import { blockFile, DIST, liveBlock, makeBlock, nodeScript, serveBlock, startTime, tmpShm } from './helpers';

const addon = native();
const { ControlBlock } = addon;

t.test('layout() matches the ABI', async (t) => {
  // These numbers are the ABI of include/gvm/control_block.h, major version 1. They are written
  // out here on purpose: a change in the header that moves a field must fail this test.
  t.same(addon.layout(), {
    controlBlock: {
      sizeof: 135168,
      magic: 0,
      version_major: 4,
      version_minor: 6,
      size: 8,
      gpu_block_size: 12,
      pid: 16,
      uid: 20,
      start_time: 24,
      created_unix_ms: 32,
      heartbeat_ns: 40,
      agent_state: 48,
      gpu_count: 52,
      driver_version: 56,
      flags: 60,
      agent_version: 64,
      cmdline: 96,
      pid_ns: 608,
      backend: 2428,
      command: 2432,
      gpu: 4096,
    },
    command: { sizeof: 128, seq: 0, applied_seq: 4, key: 8, gpu: 12, value: 16, status: 24, message: 32 },
    gpuBlock: {
      sizeof: 8192,
      present: 0,
      ordinal: 4,
      uuid: 8,
      pci_bus_id: 24,
      name: 40,
      total_bytes: 104,
      memory_limit: 112,
      memory_mode: 120,
      priority: 124,
      frozen: 128,
      contexts: 132,
      memory_current: 136,
      memory_swap_current: 144,
      memory_peak: 152,
      managed_bytes: 160,
      host_bytes: 168,
      kernels_submitted: 176,
      kernels_ended: 184,
      alloc_count: 192,
      free_count: 200,
      alloc_failures: 208,
      updated_ns: 216,
      rm_seq: 320,
      rm_fd: 324,
      rm_client: 328,
      rm_device: 332,
      rm_subdevice: 336,
      tsg_count: 340,
      channel_count: 344,
      tsg: 352,
      channel: 1376,
    },
    tsgInfo: { sizeof: 32, handle: 0, engine_type: 4, channel_count: 8, parent: 12, timeslice_us: 16 },
    channelInfo: { sizeof: 16, handle: 0, tsg: 4, class_id: 8 },
    constants: {
      magic: 0x434d5647,
      versionMajor: 1,
      versionMinor: 4,
      maxGpus: 16,
      maxTsgs: 32,
      maxChannels: 128,
      cmdlineMax: 512,
      messageMax: 96,
    },
  });
});

t.test('reads every header and GPU field', async (t) => {
  const dir = tmpShm(t);
  const file = path.join(dir, '4242');
  makeBlock(file, {
    pid: 4242,
    uid: 1234,
    start_time: 987654321,
    created_unix_ms: 1767225600123,
    heartbeat_ns: '18446744073709551615',
    state: 2,
    gpu_count: 3,
    driver: 13000,
    flags: 5,
    pid_ns: 4026532175,
    backend: 1,
    agent_version: '0.1.0-test',
    cmdline: 'python -m torch.distributed.run train.py',
    'gpu2.present': 1,
    'gpu2.ordinal': 2,
    'gpu2.uuid': 'GPU-6b5e1a7c-2f3d-4e8f-9a0b-1c2d3e4f5a6b',
    'gpu2.pci': '0000:C1:00.0',
    'gpu2.name': 'NVIDIA H200',
    'gpu2.total': 150754820096,
    'gpu2.limit': 17179869184,
    'gpu2.mode': 1,
    'gpu2.priority': 3,
    'gpu2.frozen': 1,
    'gpu2.contexts': 2,
    'gpu2.current': 4294967296,
    'gpu2.swap': 1048576,
    'gpu2.peak': 5368709120,
    'gpu2.managed': 65536,
    'gpu2.host': 131072,
    'gpu2.submitted': 123456789,
    'gpu2.ended': 123456700,
    'gpu2.allocs': 77,
    'gpu2.frees': 70,
    'gpu2.failures': 1,
    'gpu2.updated_ns': '9007199254740993',
    'gpu2.rm_seq': 4,
    'gpu2.rm_fd': 17,
    'gpu2.rm_client': 0xc1d00042,
    'gpu2.rm_device': 0x5c000000,
    'gpu2.rm_subdevice': 0x5c000001,
    'gpu2.tsg0': '0x5c000010:1:2:0x5c000000:2000',
    'gpu2.tsg1': '0x5c000020:13:1:0x5c000000:0',
    'gpu2.ch0': '0x5c000011:0x5c000010:0xc86f',
    'gpu2.ch1': '0x5c000012:0x5c000010:0xc86f',
    'gpu2.ch2': '0x5c000021:0x5c000020:0xc86f',
  });
  const cb = ControlBlock.open(file, false);
  t.teardown(() => cb.close());
  t.equal(cb.writable, false);
  t.equal(cb.path, file);
  t.same(cb.header(), {
    versionMajor: 1,
    versionMinor: 4,
    size: 135168,
    gpuBlockSize: 8192,
    pid: 4242,
    uid: 1234,
    startTime: 987654321,
    createdUnixMs: 1767225600123,
    heartbeatNs: 18446744073709551615n,
    agentState: 2,
    gpuCount: 3,
    driverVersion: 13000,
    flags: 5,
    pidNs: 4026532175,
    backend: 1,
    agentVersion: '0.1.0-test',
    cmdline: 'python -m torch.distributed.run train.py',
  });
  t.same(cb.gpu(2), {
    present: true,
    ordinal: 2,
    uuid: 'GPU-6b5e1a7c-2f3d-4e8f-9a0b-1c2d3e4f5a6b',
    pciBusId: '0000:C1:00.0',
    name: 'NVIDIA H200',
    totalBytes: 150754820096,
    memoryLimit: 17179869184,
    memoryMode: 1,
    priority: 3,
    frozen: true,
    controlMode: 0,
    contexts: 2,
    memoryCurrent: 4294967296,
    memorySwapCurrent: 1048576,
    memoryPeak: 5368709120,
    managedBytes: 65536,
    hostBytes: 131072,
    kernelsSubmitted: 123456789,
    kernelsEnded: 123456700,
    allocCount: 77,
    freeCount: 70,
    allocFailures: 1,
    updatedNs: 9007199254740993n,
  });
  t.equal(cb.gpu(0).present, false, 'other slots are absent');
  t.same(cb.rm(2), {
    fd: 17,
    client: 0xc1d00042,
    device: 0x5c000000,
    subdevice: 0x5c000001,
    tsgs: [
      { handle: 0x5c000010, engineType: 1, channelCount: 2, parent: 0x5c000000, timesliceUs: 2000 },
      { handle: 0x5c000020, engineType: 13, channelCount: 1, parent: 0x5c000000, timesliceUs: 0 },
    ],
    channels: [
      { handle: 0x5c000011, tsg: 0x5c000010, classId: 0xc86f },
      { handle: 0x5c000012, tsg: 0x5c000010, classId: 0xc86f },
      { handle: 0x5c000021, tsg: 0x5c000020, classId: 0xc86f },
    ],
  });
  t.same(cb.rm(0), { fd: 0, client: 0, device: 0, subdevice: 0, tsgs: [], channels: [] });
  for (const bad of [-1, 16, 1.5, '0', undefined]) {
    t.throws(() => cb.gpu(bad as number), { code: 'EGVM_INVALID' }, `gpu(${String(bad)})`);
    t.throws(() => cb.rm(bad as number), { code: 'EGVM_INVALID' }, `rm(${String(bad)})`);
  }
});

t.test('an odd rm_seq (agent mid-update) does not return torn tables', async (t) => {
  const dir = tmpShm(t);
  const file = path.join(dir, '77');
  makeBlock(file, { pid: 77, 'gpu0.present': 1, 'gpu0.rm_seq': 3, 'gpu0.rm_client': 1 });
  const cb = ControlBlock.open(file, false);
  t.teardown(() => cb.close());
  t.throws(() => cb.rm(0), { code: 'EGVM_TIMEOUT' });
});

t.test('open errors', async (t) => {
  const dir = tmpShm(t);
  const err = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      return e as GvmError;
    }
    throw new Error('did not throw');
  };

  const missing = err(() => ControlBlock.open(path.join(dir, 'nope'), false));
  t.type(missing, GvmError, 'the addon throws the registered class');
  t.equal(missing.code, 'EGVM_NOT_FOUND');
  t.match(missing.stack, /addon\.test\.ts/, 'the stack points at the JS caller');

  makeBlock(path.join(dir, 'magic'), { magic: 0x12345678 });
  const magic = err(() => ControlBlock.open(path.join(dir, 'magic'), false));
  t.equal(magic.code, 'EGVM_VERSION');
  t.match(magic.message, /0x12345678.*expected 0x434d5647/);

  makeBlock(path.join(dir, 'major'), { major: 2, minor: 7 });
  const major = err(() => ControlBlock.open(path.join(dir, 'major'), false));
  t.equal(major.code, 'EGVM_VERSION');
  t.match(major.message, /version 2\.7, expected 1\.x/);

  makeBlock(path.join(dir, 'minor'), { minor: 9 });
  const newerMinor = ControlBlock.open(path.join(dir, 'minor'), false);
  t.equal(newerMinor.header().versionMinor, 9, 'a newer minor version is readable');
  newerMinor.close();

  makeBlock(path.join(dir, 'size'), { size: 4096 });
  t.throws(() => ControlBlock.open(path.join(dir, 'size'), false), { code: 'EGVM_VERSION', message: /size fields/ });
  makeBlock(path.join(dir, 'gpusize'), { gpu_block_size: 4096 });
  t.throws(() => ControlBlock.open(path.join(dir, 'gpusize'), false), { code: 'EGVM_VERSION' });

  makeBlock(path.join(dir, 'short'), { truncate: 100 });
  t.throws(() => ControlBlock.open(path.join(dir, 'short'), false), { code: 'EGVM_VERSION', message: /smaller than the 4096-byte header/ });
  makeBlock(path.join(dir, 'cut'), { truncate: 8192 });
  t.throws(() => ControlBlock.open(path.join(dir, 'cut'), false), { code: 'EGVM_VERSION', message: /file is 8192 bytes/ });

  fs.writeFileSync(path.join(dir, 'empty'), '');
  t.throws(() => ControlBlock.open(path.join(dir, 'empty'), false), { code: 'EGVM_VERSION' });

  t.throws(() => ControlBlock.open(dir, false), { code: 'EGVM_INVALID', message: /not a regular file/ }, 'a directory');
  t.throws(() => ControlBlock.open(dir, true), { code: 'EGVM_IO', message: /directory/ }, 'EISDIR');

  makeBlock(path.join(dir, 'target'), {});
  fs.symlinkSync(path.join(dir, 'target'), path.join(dir, 'link'));
  t.throws(() => ControlBlock.open(path.join(dir, 'link'), false), { code: 'EGVM_IO', message: /symbolic links/ }, 'O_NOFOLLOW');

  t.throws(() => ControlBlock.open(42 as unknown as string, false), { code: 'EGVM_INVALID', message: /path must be a string/ });
  t.throws(() => ControlBlock.open(path.join(dir, 'target'), 'yes' as unknown as boolean), { code: 'EGVM_INVALID' });
  t.throws(() => new (ControlBlock as unknown as new () => unknown)(), { code: 'EGVM_INVALID', message: /ControlBlock\.open/ });
});

t.test('a closed handle throws EGVM_CLOSED', async (t) => {
  const dir = tmpShm(t);
  const file = liveBlock(dir);
  const cb = ControlBlock.open(file, true);
  t.equal(cb.closed, false);
  cb.close();
  cb.close();
  t.equal(cb.closed, true, 'close is idempotent');
  t.throws(() => cb.header(), { code: 'EGVM_CLOSED' });
  t.throws(() => cb.gpu(0), { code: 'EGVM_CLOSED' });
  t.throws(() => cb.rm(0), { code: 'EGVM_CLOSED' });
  t.throws(() => cb.command(0, 0, 0n, 100), { code: 'EGVM_CLOSED' });
});

t.test("a block file shrunk by its owner while mapped: an error, not a SIGBUS that kills the reader", async (t) => {
  const dir = tmpShm(t);
  const file = liveBlock(dir);
  // in a child: before the guard, this killed the process (gvmd, root, reading every user's blocks)
  const r = nodeScript(`
    const fs = require('fs');
    const { Gvm, GvmError } = require(${JSON.stringify(DIST)});
    (async () => {
      const p = await Gvm.process(${process.pid}, { shmDir: ${JSON.stringify(dir)} });
      const before = p.gpus[0].memory.limit;
      fs.truncateSync(${JSON.stringify(file)}, 4096); // the header page stays, the GPU pages go
      const codes = [];
      for (const read of [() => p.gpus[0].memory.current, () => p.pid, () => p.gpus[0].memory.current]) {
        try { read(); codes.push('ok'); } catch (e) { codes.push(e instanceof GvmError ? e.code : String(e)); }
      }
      console.log(JSON.stringify({ before, codes }));
    })();
  `);
  t.equal(r.status, 0, `the reader survived (signal ${r.signal}): ${r.stderr}`);
  const out = JSON.parse(r.stdout) as { before: number; codes: string[] };
  t.ok(out.before > 0, 'it read the block before');
  t.same(out.codes, ['EGVM_IO', 'EGVM_IO', 'EGVM_IO'], 'every read after the shrink is EGVM_IO, the first one included');
});

t.test('a SIGBUS sent with kill still ends the process, and the guard stays for real faults', async (t) => {
  const dir = tmpShm(t);
  const file = liveBlock(dir);
  const script = (sendFirst: boolean) => `
    const fs = require('fs');
    const { Gvm } = require(${JSON.stringify(DIST)});
    (async () => {
      const p = await Gvm.process(${process.pid}, { shmDir: ${JSON.stringify(dir)} });
      p.gpus[0].memory.limit; // the guard is installed with the first mapping
      ${sendFirst ? "process.kill(process.pid, 'SIGBUS'); await new Promise((r) => setTimeout(r, 200)); console.log('survived kill -BUS');" : ''}
      fs.truncateSync(${JSON.stringify(file)}, 4096);
      try { p.gpus[0].memory.current; console.log('read ok'); } catch (e) { console.log('read threw ' + e.code); }
    })();`;
  const sent = nodeScript(script(true));
  t.equal(sent.signal, 'SIGBUS', 'kill -BUS ends the process as it would without gvm (the guard only takes faults)');
  t.notMatch(sent.stdout, /survived/);
  const fault = nodeScript(script(false));
  t.equal(fault.signal, null, fault.stderr);
  t.match(fault.stdout, /read threw EGVM_IO/, 'a real fault is still absorbed');
});

t.test('processStartTime', async (t) => {
  t.equal(addon.processStartTime(process.pid), startTime(process.pid));
  t.equal(addon.processStartTime(0x7ffffffe), null, 'no such process');
  t.throws(() => addon.processStartTime(-1), { code: 'EGVM_INVALID' });
});

t.test('commands', async (t) => {
  const dir = tmpShm(t);
  const file = blockFile(dir, process.pid);
  const agent = await serveBlock(t, file, { pid: process.pid, 'gpu0.present': 1, 'gpu0.limit': 100, 'gpu0.priority': 8 });
  const cb = ControlBlock.open(file, true);
  t.teardown(() => cb.close());

  const ping = await cb.command(0, 0, 0n, 2000);
  t.match(ping, { status: 0, message: '' });
  t.type(ping.seq, 'number');

  const limit = await cb.command(1, 0, 8n << 30n, 2000);
  t.equal(limit.status, 0);
  t.equal(limit.seq, ping.seq + 1, 'seq counts commands');
  t.equal(cb.gpu(0).memoryLimit, 8 * 2 ** 30, 'the agent applied it and the mapping shows it');

  const prio = await cb.command(3, 0, 99n, 2000);
  t.same(prio, { status: 1, message: 'priority 99 out of range 0..15', seq: limit.seq + 1 }, 'INVALID with a message');
  t.equal((await cb.command(4, 0, 1n, 2000)).status, 2, 'UNSUPPORTED');
  t.equal((await cb.command(1, 5, 1n, 2000)).status, 3, 'NO_GPU');
  t.equal((await cb.command(3, 0, 2n, 2000)).status, 0);
  t.equal(cb.gpu(0).priority, 2);

  // Numbers are accepted for values too; bad arguments are EGVM_INVALID.
  t.equal((await cb.command(1, 0, 4096, 2000)).status, 0);
  t.throws(() => cb.command(1, 0, -1n, 2000), { code: 'EGVM_INVALID' });
  t.throws(() => cb.command(1, 0, 1n << 64n, 2000), { code: 'EGVM_INVALID' });
  t.throws(() => cb.command(1, 16, 1n, 2000), { code: 'EGVM_INVALID' });
  t.throws(() => cb.command(-1, 0, 1n, 2000), { code: 'EGVM_INVALID' });

  // Many at once on one handle (they share an fd, so the addon serialises them itself).
  const many = await Promise.all(Array.from({ length: 20 }, () => cb.command(0, 0, 0n, 5000)));
  t.ok(many.every((r) => r.status === 0), '20 concurrent pings');
  t.equal(new Set(many.map((r) => r.seq)).size, 20, 'each got its own seq');

  // A second handle on the same block (another open file description): flock serialises.
  const other = ControlBlock.open(file, true);
  const both = await Promise.all([cb.command(0, 0, 0n, 5000), other.command(0, 0, 0n, 5000)]);
  t.ok(both.every((r) => r.status === 0));
  other.close();

  const rounds = 100;
  const start = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) await cb.command(0, 0, 0n, 2000);
  const us = Number(process.hrtime.bigint() - start) / 1000 / rounds;
  t.comment(`info: ping round trip ${us.toFixed(1)} us on average over ${rounds} (not asserted)`);

  // close() while a command waits: the mapping stays until the worker is done.
  agent.kill('SIGTERM');
  await new Promise((r) => agent.once('exit', r));
  const pending = cb.command(0, 0, 0n, 300);
  cb.close();
  t.equal((await pending).status, 6, 'TIMEOUT once the agent is gone, even though the handle was closed meanwhile');
  t.throws(() => cb.header(), { code: 'EGVM_CLOSED' });
});

t.test('TIMEOUT when no agent answers; read-only handles cannot send', async (t) => {
  const dir = tmpShm(t);
  const file = liveBlock(dir);
  const cb = ControlBlock.open(file, true);
  t.teardown(() => cb.close());
  const start = Date.now();
  const r = await cb.command(0, 0, 0n, 200);
  const took = Date.now() - start;
  t.equal(r.status, 6);
  t.match(r.message, /did not answer within 200 ms/);
  t.ok(took >= 190 && took < 5000, `waited about the timeout (${took} ms)`);
  const ro = ControlBlock.open(file, false);
  t.throws(() => ro.command(0, 0, 0n, 100), { code: 'EGVM_PERMISSION', message: /read-only/ });
  ro.close();
});

t.test('garbage collection unmaps the block', async (t) => {
  const dir = tmpShm(t);
  const file = liveBlock(dir);
  const r = nodeScript(
    `
    const fs = require('fs');
    const { Gvm } = require(${JSON.stringify(DIST)});
    const mapped = () => fs.readFileSync('/proc/self/maps', 'utf8').includes(${JSON.stringify(file)});
    (async () => {
      let p = await Gvm.process(${process.pid}, { shmDir: ${JSON.stringify(dir)} });
      const before = mapped();
      p = null;
      for (let i = 0; i < 10 && mapped(); i++) {
        global.gc();
        await new Promise((r) => setImmediate(r));
      }
      console.log(JSON.stringify({ before, after: mapped() }));
    })();
    `,
    { args: ['--expose-gc'] },
  );
  t.equal(r.status, 0, r.stderr);
  t.same(JSON.parse(r.stdout), { before: true, after: false });
});

t.test('worker threads each get their own addon instance', async (t) => {
  const dir = tmpShm(t);
  const file = liveBlock(dir);
  const r = nodeScript(`
    const { Worker } = require('worker_threads');
    const { Gvm } = require(${JSON.stringify(DIST)});
    const code = \`
      const { parentPort } = require('worker_threads');
      const { Gvm, GvmError } = require(${JSON.stringify(DIST)});
      Gvm.process(${process.pid}, { shmDir: ${JSON.stringify(dir)} }).then(async (p) => {
        const pid = p.pid;
        p.close();
        let code;
        try { p.pid } catch (e) { code = e instanceof GvmError && e.code; }
        const left = await Gvm.process(${process.pid}, { shmDir: ${JSON.stringify(dir)} }); // left open at exit
        parentPort.postMessage({ pid, code, limit: left.gpus[0].memory.limit });
      });
    \`;
    (async () => {
      const results = await Promise.all([1, 2, 3].map(() => new Promise((resolve, reject) => {
        const w = new Worker(code, { eval: true });
        w.once('message', (m) => { resolve(m); w.terminate(); });
        w.once('error', reject);
      })));
      const p = await Gvm.process(${process.pid}, { shmDir: ${JSON.stringify(dir)} });
      console.log(JSON.stringify({ results, main: p.pid }));
    })();
  `);
  t.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.equal(out.main, process.pid);
  t.same(out.results, Array(3).fill({ pid: process.pid, code: 'EGVM_CLOSED', limit: 8589934592 }));
});

t.test('a 0600 block of another user is EGVM_PERMISSION for a non-root reader', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root to chown the block and to switch the reader to nobody');
    return;
  }
  const dir = tmpShm(t);
  const file = liveBlock(dir, process.pid, { uid: 4242 });
  fs.chownSync(file, 4242, 4242);
  fs.chmodSync(file, 0o600);
  const r = nodeScript(`
    try {
      process.setgid('nogroup');
    } catch {
      process.setgid(65534);
    }
    process.setuid('nobody');
    let lib;
    try {
      lib = require(${JSON.stringify(DIST)});
      lib.Gvm.processes; // loaded
      require(${JSON.stringify(path.join(path.dirname(DIST), 'native.js'))}).native();
    } catch (e) {
      console.log(JSON.stringify({ cannotLoad: String(e) }));
      process.exit(0);
    }
    (async () => {
      const out = { uid: process.getuid() };
      try {
        await lib.Gvm.process(${process.pid}, { shmDir: ${JSON.stringify(dir)} });
        out.process = 'opened';
      } catch (e) {
        out.process = e.code;
        out.isGvmError = e instanceof lib.GvmError;
      }
      out.list = (await lib.Gvm.processes({ shmDir: ${JSON.stringify(dir)} })).length;
      console.log(JSON.stringify(out));
    })();
  `);
  t.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  if (out.cannotLoad !== undefined) {
    t.skip(`nobody cannot load gvm from ${path.dirname(DIST)} here: ${out.cannotLoad}`);
    return;
  }
  t.not(out.uid, 0, 'the reader is not root');
  t.equal(out.process, 'EGVM_PERMISSION');
  t.equal(out.isGvmError, true);
  t.equal(out.list, 0, 'processes() skips it instead of failing');
  t.ok(fs.existsSync(file), 'and leaves it alone');
  t.equal(os.userInfo().uid, 0);
});
