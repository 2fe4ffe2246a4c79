// The fuzz corpora of test/fuzz/, replayed without clang: each harness is built with the system's
// gcc/g++ (with AddressSanitizer and UBSan when they link) around test/fuzz/replay.c, and every saved
// input, crash reproducers included, must run clean. Then small property loops over the TypeScript
// parsers and the addon's block reader: random input either parses to a value that reads back the
// same, or throws GvmError EGVM_INVALID (or the parser's own documented error), never anything else.
import { spawnSync, SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

import { GvmError, isGvmError } from '../lib/errors';
import { JsonDuplicateKeyError, JsonSyntaxError, parseJsonStrict } from '../lib/daemon/json-strict';
import { parsePolicy, PolicyFileError } from '../lib/daemon/policy-file';
import { native } from '../lib/native';
import { parseBytes } from '../lib/units';
import { liveBlock, ROOT, tmpShm } from './helpers';

const FUZZ = path.join(ROOT, 'test', 'fuzz');
const CORPUS = path.join(FUZZ, 'corpus');
const SANITIZER_OUTPUT = /AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|SUMMARY: /;

function run(cmd: string, args: string[], timeout = 300000): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { encoding: 'utf8', timeout, maxBuffer: 64 * 1024 * 1024 });
}

function have(cmd: string): boolean {
  return run(cmd, ['--version'], 30000).status === 0;
}

/** -fsanitize flags when this compiler links a sanitized program here, else none. */
function sanitizerFlags(cxx: string, dir: string): string[] {
  const src = path.join(dir, 'probe.c');
  fs.writeFileSync(src, 'int main(void) { return 0; }\n');
  const flags = ['-fsanitize=address,undefined', '-fno-sanitize-recover=undefined', '-fno-omit-frame-pointer'];
  const r = run(cxx, [...flags, src, '-o', path.join(dir, 'probe')], 60000);
  return r.status === 0 && run(path.join(dir, 'probe'), [], 30000).status === 0 ? flags : [];
}

/** Where cuda.h is: the build's choice, then $CUDA_PATH, then the default. Undefined when absent. */
function cudaInclude(): string | undefined {
  const candidates: string[] = [];
  try {
    const cache = fs.readFileSync(path.join(ROOT, 'build', 'CMakeCache.txt'), 'utf8');
    const m = /^GVM_CUDA_INCLUDE_DIR:PATH=(.*)$/m.exec(cache);
    if (m) candidates.push(m[1]!.trim());
  } catch {
    // no configured build: fall through to the usual places
  }
  if (process.env.CUDA_PATH) candidates.push(path.join(process.env.CUDA_PATH, 'include'));
  candidates.push('/usr/local/cuda/include');
  return candidates.find((d) => fs.existsSync(path.join(d, 'cuda.h')));
}

function check(t: Tap.Test, what: string, r: SpawnSyncReturns<string>): boolean {
  const ok = r.status === 0 && r.signal === null && r.error === undefined;
  t.ok(ok, `${what}${ok ? '' : `: status ${r.status} signal ${r.signal} ${r.error ?? ''}\n${r.stdout}${r.stderr}`.slice(0, 4000)}`);
  return ok;
}

interface Target {
  name: string;
  lang: 'c' | 'c++';
  sources: string[];
  flags: string[];
  libs: string[];
}

t.test('fuzz corpora replay clean (gcc build of each harness)', async (t) => {
  const cc = have('gcc') ? 'gcc' : 'cc';
  const cxx = have('g++') ? 'g++' : 'c++';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gvm-fuzz-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const san = sanitizerFlags(cc, dir);
  t.comment(san.length ? `sanitizers: ${san.join(' ')}` : 'no sanitizers link here: plain builds');
  const common = ['-g', '-O1', '-Wall', '-Wextra', '-Werror', `-I${path.join(ROOT, 'include')}`, ...san];
  const replayObj = path.join(dir, 'replay.o');
  if (!check(t, 'replay driver compiles', run(cc, [...common, '-std=c11', '-c', path.join(FUZZ, 'replay.c'), '-o', replayObj]))) return;

  const cuda = cudaInclude();
  const agentDir = path.join(ROOT, 'cuda-intercept', 'src');
  const targets: Target[] = [
    {
      name: 'block_reader',
      lang: 'c++',
      // block_owner.cc: where gvmd finds blocks by name (containers); map_guard.cc: its SIGBUS guard
      sources: [
        path.join(FUZZ, 'block_reader.cc'),
        ...['fuse_blocks.cc', 'fuse_files.cc', 'block_command.cc', 'block_owner.cc', 'map_guard.cc'].map((f) =>
          path.join(ROOT, 'native', f),
        ),
      ],
      flags: ['-std=c++17'],
      libs: [],
    },
    {
      name: 'fuse_value',
      lang: 'c++',
      sources: [path.join(FUZZ, 'fuse_value.cc'), path.join(ROOT, 'native', 'fuse_files.cc')],
      flags: ['-std=c++17'],
      libs: [],
    },
    {
      name: 'policy_rules',
      lang: 'c',
      sources: [path.join(FUZZ, 'policy_rules.c'), path.join(agentDir, 'policy_rules.c')],
      flags: ['-std=c11'],
      libs: [],
    },
  ];
  if (cuda !== undefined) {
    targets.push({
      name: 'agent_command',
      lang: 'c',
      sources: [
        path.join(FUZZ, 'agent_command.c'),
        ...fs.readdirSync(agentDir).filter((f) => f.endsWith('.c')).sort().map((f) => path.join(agentDir, f)),
      ],
      // the agent interposes dlsym and ioctl; renamed here, or they would replace the sanitizer's own
      flags: ['-std=c11', '-D_GNU_SOURCE', '-Ddlsym=gvm_fuzz_agent_dlsym', '-Dioctl=gvm_fuzz_agent_ioctl', `-I${cuda}`],
      libs: ['-ldl', '-lpthread'],
    });
  } else {
    t.comment('cuda.h not found: the agent_command corpus is not replayed (the agent cannot be built here either)');
  }

  for (const target of targets) {
    await t.test(target.name, async (t) => {
      const inputs = fs.readdirSync(path.join(CORPUS, target.name)).filter((f) => !f.startsWith('.'));
      t.ok(inputs.length > 0, `${inputs.length} saved inputs`);
      const bin = path.join(dir, `replay-${target.name}`);
      const compiler = target.lang === 'c' ? cc : cxx;
      const built = run(compiler, [...common, ...target.flags, ...target.sources, replayObj, '-o', bin, ...target.libs]);
      if (!check(t, 'harness builds', built)) return;
      const r = spawnSync(bin, [path.join(CORPUS, target.name)], {
        encoding: 'utf8',
        timeout: 120000,
        maxBuffer: 64 * 1024 * 1024,
        env: {
          ...process.env,
          ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1',
          UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
        },
      });
      check(t, 'every input ran (no abort, signal, hang)', r);
      t.notMatch(r.stderr, SANITIZER_OUTPUT, 'no sanitizer report');
      t.equal((r.stdout.match(/^replay /gm) ?? []).length, inputs.length, 'each input replayed once');
      t.match(r.stdout, /^replayed all inputs$/m);
    });
  }
});

// ---- property loops over the TypeScript parsers -------------------------------------------------

/** A small deterministic generator (mulberry32); GVM_FUZZ_SEED repeats a run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const SEED = Number(process.env.GVM_FUZZ_SEED ?? Date.now() % 1000000);
const ROUNDS = 3000;

function randomText(next: () => number, alphabet: readonly string[], maxLen: number): string {
  const n = Math.floor(next() * (maxLen + 1));
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[Math.floor(next() * alphabet.length)]!;
  return s;
}

t.test(`parseBytes: a value that reads back, or EGVM_INVALID (seed ${SEED})`, async (t) => {
  const next = rng(SEED);
  const alphabet = ['0', '1', '5', '7', '9', '.', ' ', '\t', '\n', '\0', '-', '+', 'e', 'x', 'k', 'K', 'm', 'G', 'g', 'T', 'i', 'B', 'b', 'P', '٣', '\u00a0'];
  let parsed = 0;
  for (let i = 0; i < ROUNDS; i++) {
    const text = next() < 0.2 ? `${Math.floor(next() * 1e6)}${['', 'K', 'MiB', 'g', 'T', ' tib'][Math.floor(next() * 6)]}` : randomText(next, alphabet, 24);
    let v: bigint;
    try {
      v = parseBytes(text);
    } catch (e) {
      if (!isGvmError(e, 'EGVM_INVALID')) {
        t.fail(`parseBytes(${JSON.stringify(text)}) threw ${String(e)}`);
        return;
      }
      continue;
    }
    parsed++;
    if (v < 0n || v > (1n << 63n) - 1n || parseBytes(String(v)) !== v) {
      t.fail(`parseBytes(${JSON.stringify(text)}) = ${v} does not read back`);
      return;
    }
  }
  t.ok(parsed > 0, `${parsed} of ${ROUNDS} parsed and read back; the rest were EGVM_INVALID`);
});

/** JSON-ish text: valid documents (policy-like), then a few random edits. */
function jsonish(next: () => number): string {
  const pieces = ['{', '}', '[', ']', ',', ':', '"rules"', '"name"', '"a"', '"match"', '"apply"', '"class"', '"priority"',
    '"memory.limit"', '"memory.mode"', '"comm"', '"gpu"', '"user"', '"version"', '"comment"', '1', '-0', '1e999', '0.5', '12',
    '"8G"', '"50%"', '"swap"', '"latency"', '"best-effort"', 'true', 'null', ' ', '\n', '"\\u0000"', '"\\ud800"', '"x\ty"', '\uFEFF'];
  const base = JSON.stringify({
    version: 1,
    rules: [{ name: 'r', match: { comm: 'python' }, apply: { class: 'latency', priority: 2, 'memory.limit': '8G' } }],
  });
  let s = next() < 0.5 ? base : '';
  const edits = 1 + Math.floor(next() * 6);
  for (let i = 0; i < edits; i++) {
    const at = Math.floor(next() * (s.length + 1));
    const del = next() < 0.4 ? Math.floor(next() * 4) : 0;
    s = s.slice(0, at) + pieces[Math.floor(next() * pieces.length)]! + s.slice(at + del);
  }
  return s;
}

t.test(`parseJsonStrict: JSON.parse's value or a located syntax error (seed ${SEED})`, async (t) => {
  const next = rng(SEED + 1);
  let parsed = 0;
  for (let i = 0; i < ROUNDS; i++) {
    const text = jsonish(next);
    let value: unknown;
    try {
      value = parseJsonStrict(text);
    } catch (e) {
      if (!(e instanceof JsonSyntaxError || e instanceof JsonDuplicateKeyError)) {
        t.fail(`parseJsonStrict(${JSON.stringify(text)}) threw ${String(e)}`);
        return;
      }
      if (e instanceof JsonSyntaxError && !(e.line >= 1 && e.column >= 1)) {
        t.fail(`parseJsonStrict(${JSON.stringify(text)}): error without a place: ${e.message}`);
        return;
      }
      continue;
    }
    parsed++;
    let reference: unknown;
    try {
      reference = JSON.parse(text);
    } catch (e) {
      t.fail(`parseJsonStrict accepted what JSON.parse refuses: ${JSON.stringify(text)} (${String(e)})`);
      return;
    }
    if (JSON.stringify(value) !== JSON.stringify(reference)) {
      t.fail(`parseJsonStrict(${JSON.stringify(text)}) differs from JSON.parse`);
      return;
    }
  }
  t.ok(parsed > 0, `${parsed} of ${ROUNDS} parsed like JSON.parse; the rest were syntax or duplicate-key errors`);
});

t.test(`parsePolicy: a policy, or PolicyFileError EGVM_INVALID (seed ${SEED})`, async (t) => {
  const next = rng(SEED + 2);
  let parsed = 0;
  for (let i = 0; i < ROUNDS; i++) {
    const text = jsonish(next);
    try {
      const p = parsePolicy(text, 'fuzz.json');
      parsed++;
      if (!Array.isArray(p.rules)) {
        t.fail(`parsePolicy(${JSON.stringify(text)}) gave no rules array`);
        return;
      }
    } catch (e) {
      if (!(e instanceof PolicyFileError) || !isGvmError(e, 'EGVM_INVALID') || e.problems.length === 0) {
        t.fail(`parsePolicy(${JSON.stringify(text)}) threw ${String(e)}`);
        return;
      }
    }
  }
  t.ok(parsed > 0, `${parsed} of ${ROUNDS} were policies; the rest PolicyFileError`);
});

// ---- the addon's block reader (native/control_block.cc) over mutated block files ---------------

t.test(`ControlBlock.open over corrupt files: readable, or a GvmError (seed ${SEED})`, async (t) => {
  const { ControlBlock } = native();
  const dir = tmpShm(t);
  const good = fs.readFileSync(liveBlock(dir));
  const next = rng(SEED + 3);
  const file = path.join(dir, 'fuzzed');
  const codes = new Set<string>();
  let opened = 0;
  for (let i = 0; i < 400; i++) {
    const cut = next();
    const length = cut < 0.2 ? Math.floor(next() * 8192) : cut < 0.3 ? good.length + Math.floor(next() * 8192) : good.length;
    const bytes = Buffer.alloc(length);
    good.copy(bytes, 0, 0, Math.min(length, good.length));
    const edits = Math.floor(next() * 12);
    for (let e = 0; e < edits; e++) {
      // mostly the header and GPU 0's block, where the reader's checks are
      const at = next() < 0.7 ? Math.floor(next() * 4096 + 4096 * Math.floor(next() * 3)) : Math.floor(next() * length);
      if (at < length) bytes[at] = Math.floor(next() * 256);
    }
    fs.writeFileSync(file, bytes);
    let cb;
    try {
      cb = ControlBlock.open(file, next() < 0.5);
    } catch (e) {
      if (!(e instanceof GvmError) || !['EGVM_VERSION', 'EGVM_INVALID'].includes(e.code)) {
        t.fail(`open of a corrupt block threw ${String(e)}`);
        return;
      }
      codes.add(e.code);
      continue;
    }
    opened++;
    try {
      cb.header();
      for (let g = 0; g < 16; g++) {
        cb.gpu(g);
        cb.policy(g);
        cb.rm(g);
      }
    } catch (e) {
      // the RM tables may look mid-rewrite forever (rm_seq odd): that is a timeout, said as such
      if (!isGvmError(e, 'EGVM_TIMEOUT')) {
        t.fail(`reading an opened block threw ${String(e)}`);
        return;
      }
    } finally {
      cb.close();
    }
  }
  t.ok(opened > 0 && codes.size > 0, `${opened} opened and read; refused with ${[...codes].join(', ')}`);

  // a FIFO named like a block, readable but not writable by us (so gvm falls back to read-only):
  // the open must not wait for a writer (that hung gvm ps); a child, so a hang fails instead of stalling
  const fifo = path.join(dir, 'fifo');
  const made = spawnSync('mkfifo', ['-m', '0444', fifo]);
  if (made.status !== 0) {
    t.comment('mkfifo unavailable: FIFO case not checked');
    return;
  }
  const addonPath = path.join(ROOT, 'build', 'Release', 'gvm.node');
  const code = `const { ControlBlock } = require(${JSON.stringify(addonPath)});
    try { ControlBlock.open(${JSON.stringify(fifo)}, false); console.log('opened'); } catch (e) { console.log('refused ' + e.code); }`;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 20000 });
  t.equal(r.signal, null, `no hang opening a FIFO read-only ${r.stderr}`);
  t.match(r.stdout, /^refused EGVM_INVALID$/m, 'refused as not a regular file');
});
