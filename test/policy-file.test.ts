// gvmd's policy file: parsing and every kind of bad input, globs, matching on facts from /proc (a fake
// /proc tree where the real one cannot be bent), first-match-wins, shares of a GPU's memory; then the
// engine over real agent processes on the fake driver and gvm-make-block stand-ins (applied settings
// read back through the library, manual changes kept, reloads, exits, refusals, late GPUs); then the
// gvmd binary: --check-policy, an invalid file at start, SIGHUP reloads (good and broken file) and the
// Prometheus counters. CI runs as root; the one FUSE case needs /dev/fuse, as test/daemon.test.ts.
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import t from 'tap';

import { Gvm, GvmGpu, isGvmError } from '../lib/index';
import { compileGlob } from '../lib/daemon/glob';
import { PolicyEngine } from '../lib/daemon/policy-apply';
import { resolveApply } from '../lib/daemon/policy-settings';
import { formatPath, loadPolicy, parsePolicy, PolicyFileError, PolicyRule } from '../lib/daemon/policy-file';
import { parseJsonStrict } from '../lib/daemon/json-strict';
import { firstMatch, ProcessFacts, readProcessFacts, ruleMatches, UserDb } from '../lib/daemon/policy-match';
import { Prog, start } from './fake-prog';
import { blockFile, deadPid, makeBlock, ROOT, serveBlock, startTime } from './helpers';

const GVMD = path.join(ROOT, 'dist', 'daemon', 'gvmd.js');
const EXAMPLE = path.join(ROOT, 'contrib', 'policy.example.json');
const GiB = 1 << 30;
const TOTAL = 80 * GiB; // the fake driver's GPUs

function tmpDir(t: Tap.Test, prefix: string, mode = 0o755): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, mode);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes a policy (an object, or raw text) to DIR/policy.json; returns the path. */
function writePolicy(dir: string, doc: unknown, name = 'policy.json'): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, typeof doc === 'string' ? doc : JSON.stringify(doc, null, 2), { mode: 0o644 });
  return file;
}

/** The PolicyFileError parsing `doc` throws (a failure when it does not throw one). */
function refusal(t: Tap.Test, doc: unknown): PolicyFileError | undefined {
  try {
    parsePolicy(typeof doc === 'string' ? doc : JSON.stringify(doc), 'policy.json');
  } catch (e) {
    if (e instanceof PolicyFileError) return e;
    t.fail(`not a PolicyFileError: ${String(e)}`);
    return undefined;
  }
  t.fail(`accepted: ${JSON.stringify(doc)}`);
  return undefined;
}

const rule = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  name: 'r',
  match: { comm: 'python3' },
  apply: { priority: 3 },
  ...over,
});
const withRule = (over: Record<string, unknown>): unknown => ({ rules: [rule(over)] });
const withMatch = (match: unknown): unknown => withRule({ match });
const withApply = (apply: unknown): unknown => withRule({ apply });

// --- the file --------------------------------------------------------------------------------------

t.test('the example file in contrib/ is valid and reads as documented', async (t) => {
  const p = loadPolicy(EXAMPLE);
  t.same(p.rules.map((r) => r.name), ['leave-root-alone', 'llm-server', 'notebooks-gpu0', 'training', 'ci']);
  t.same(p.rules[0]!.apply, {}, 'an empty apply is allowed (it shields processes from later rules)');
  t.same(p.rules[0]!.match.user, { name: 'root' });
  t.same(p.rules[1]!.apply, { class: 'latency', priority: 2 });
  t.equal(p.rules[2]!.match.gpu, 0);
  t.same(p.rules[2]!.apply.memoryLimit, { kind: 'percent', percent: 10 });
  t.same(p.rules[3]!.apply, { class: 'best-effort', priority: 15, memoryMode: 'swap', memoryLimit: { kind: 'percent', percent: 40 } });
  t.same(p.rules[4]!.apply.memoryLimit, { kind: 'bytes', bytes: 16n * BigInt(GiB) });
  t.same(p.rules.map((r) => r.index), [0, 1, 2, 3, 4]);
});

t.test('every accepted form of each key', async (t) => {
  const p = parsePolicy(
    JSON.stringify({
      version: 1,
      comment: 'top',
      rules: [
        { name: 'a', comment: 'x', match: { user: 1000 }, apply: { 'memory.limit': 1 } },
        { name: 'b.c_d-1', match: { user: '1001' }, apply: { 'memory.limit': '1.5G' } },
        { name: 'c', match: { user: 'svc_llm$' }, apply: { 'memory.limit': ' 12.5 % ', class: 'none' } },
        { name: 'd', match: { gpu: 7, exe: '*/python3', cgroup: '/**' }, apply: { 'memory.limit': '100%', 'memory.mode': 'oom' } },
      ],
    }),
    'p.json',
  );
  t.equal(p.file, 'p.json');
  t.same(p.rules[0]!.match.user, { uid: 1000 });
  t.same(p.rules[1]!.match.user, { uid: 1001 }, 'a number in a string is a uid');
  t.same(p.rules[2]!.match.user, { name: 'svc_llm$' });
  t.same(p.rules[0]!.apply.memoryLimit, { kind: 'bytes', bytes: 1n });
  t.same(p.rules[1]!.apply.memoryLimit, { kind: 'bytes', bytes: 1610612736n }, 'the CLI\'s sizes');
  t.same(p.rules[2]!.apply.memoryLimit, { kind: 'percent', percent: 12.5 });
  t.same(p.rules[3]!.apply.memoryLimit, { kind: 'percent', percent: 100 });
  t.equal(p.rules[2]!.apply.class, 'none');
  t.equal(p.rules[3]!.apply.memoryMode, 'oom');
  t.same(parsePolicy('{"rules": []}', 'e.json').rules, [], 'no rules at all is valid (gvmd then changes nothing)');
});

t.test('every kind of bad input is EGVM_INVALID naming the file and the JSON path', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['not JSON', '{"rules": [ {"name": "a",, } ]}', /^policy\.json: is not valid JSON: expected a key in double quotes, found "," \(line 1, column 26\)$/],
    ['not JSON, later line', '{\n  "rules": [\n    oops\n  ]\n}', /^policy\.json: is not valid JSON: expected a value .*, found "o" \(line 3, column 5\)$/],
    ['a trailing comma', '{"rules": [],\n}', /^policy\.json: is not valid JSON: expected a key in double quotes, found "}" \(line 2, column 1\)$/],
    ['a comment', '{"rules": [] // none\n}', /^policy\.json: is not valid JSON: expected ',' or '}', found "\/" \(line 1, column 14\)$/],
    ['single quotes', "{'rules': []}", /^policy\.json: is not valid JSON: expected a key in double quotes, found "'" \(line 1, column 2\)$/],
    ['cut short', '{"rules": [', /^policy\.json: is not valid JSON: expected a value .*, found the end of the file \(line 1, column 12\)$/],
    ['two values', '{"rules": []} {}', /^policy\.json: is not valid JSON: expected the end of the file after the value, found "{"/],
    ['a raw tab in a string', '{"rules": [], "comment": "a\tb"}', /^policy\.json: is not valid JSON: expected a string with valid escapes/],
    ['too deep', `{"comment": ${'['.repeat(100)}`, /^policy\.json: is not valid JSON: expected at most 64 levels of nesting/],
    ['empty file', '', /^policy\.json: is not valid JSON: expected a value .*, found the end of the file \(line 1, column 1\)$/],
    ['a key twice', '{"rules": [{"name": "a", "match": {"comm": "x"}, "apply": {"priority": 2,\n "priority": 12}}]}', /^policy\.json: rules\[0\]\.apply has the key "priority" twice \(line 2, column 2\)$/],
    ['a top-level key twice', '{"rules": [], "rules": []}', /^policy\.json: the top level has the key "rules" twice/],
    ['top level an array', [], /^policy\.json: the top level must be an object with "rules", not an array$/],
    ['unknown top-level key', { rules: [], rule: [] }, /^policy\.json: rule is not a known key \(known: version, comment, rules\)$/],
    ['version 2', { version: 2, rules: [] }, /^policy\.json: version must be 1 .*, not 2$/],
    ['version as a string', { version: '1', rules: [] }, /^policy\.json: version must be 1 .*, not "1"$/],
    ['comment not a string', { comment: 3, rules: [] }, /^policy\.json: comment must be a string, not 3$/],
    ['rules missing', {}, /^policy\.json: rules is missing/],
    ['rules an object', { rules: {} }, /^policy\.json: rules must be an array of rules, not an object$/],
    ['a rule that is a string', { rules: ['x'] }, /^policy\.json: rules\[0\] must be an object with name, match and apply, not "x"$/],
    ['unknown rule key', withRule({ when: {} }), /^policy\.json: rules\[0\]\.when is not a known key \(known: name, comment, match, apply\)$/],
    ['rule comment not a string', withRule({ comment: [] }), /^policy\.json: rules\[0\]\.comment must be a string, not an array$/],
    ['name missing', withRule({ name: undefined }), /^policy\.json: rules\[0\]\.name must be 1\.\.64 letters/],
    ['name a number', withRule({ name: 7 }), /^policy\.json: rules\[0\]\.name must be .*, not 7$/],
    ['name with a space', withRule({ name: 'llm server' }), /^policy\.json: rules\[0\]\.name must be .*, not "llm server"$/],
    ['name too long', withRule({ name: 'x'.repeat(65) }), /^policy\.json: rules\[0\]\.name must be 1\.\.64/],
    ['duplicate names', { rules: [rule(), rule()] }, /^policy\.json: rules\[1\]\.name "r" is already the name of rules\[0\]$/],
    ['match missing', withRule({ match: undefined }), /^policy\.json: rules\[0\]\.match is missing$/],
    ['match an array', withMatch(['comm']), /^policy\.json: rules\[0\]\.match must be an object .*, not an array$/],
    ['empty match', withMatch({}), /^policy\.json: rules\[0\]\.match is empty: give at least one of comm, exe, user, cgroup, gpu/],
    ['unknown match key', withMatch({ command: 'x' }), /^policy\.json: rules\[0\]\.match\.command is not a known key \(known: comm, exe, user, cgroup, gpu\)$/],
    ['comm a number', withMatch({ comm: 3 }), /^policy\.json: rules\[0\]\.match\.comm must be a non-empty glob string, not 3$/],
    ['comm empty', withMatch({ comm: '' }), /^policy\.json: rules\[0\]\.match\.comm must be a non-empty glob string, not ""$/],
    ['glob: unterminated [', withMatch({ comm: 'py[th' }), /^policy\.json: rules\[0\]\.match\.comm is not a valid glob: an unterminated '\['/],
    ['glob: reversed range', withMatch({ comm: '[z-a]*' }), /^policy\.json: rules\[0\]\.match\.comm is not a valid glob: a reversed range 'z-a'/],
    ['glob: trailing backslash', withMatch({ comm: 'py\\' }), /^policy\.json: rules\[0\]\.match\.comm is not a valid glob: a trailing '\\'/],
    ['glob: empty set', withMatch({ exe: '/usr/bin/[!]' }), /^policy\.json: rules\[0\]\.match\.exe is not a valid glob: an unterminated '\['/],
    ['exe not a path', withMatch({ exe: 'python3' }), /^policy\.json: rules\[0\]\.match\.exe must be an absolute path pattern .*use comm\)$/],
    ['cgroup not a path', withMatch({ cgroup: 'system.slice' }), /^policy\.json: rules\[0\]\.match\.cgroup must be an absolute path pattern/],
    ['cgroup bad glob', withMatch({ cgroup: '/a/[b' }), /^policy\.json: rules\[0\]\.match\.cgroup is not a valid glob/],
    ['user negative', withMatch({ user: -1 }), /^policy\.json: rules\[0\]\.match\.user must be a user name or a uid 0\.\.4294967294, not -1$/],
    ['user fractional', withMatch({ user: 1.5 }), /^policy\.json: rules\[0\]\.match\.user must be a user name or a uid/],
    ['user with a space', withMatch({ user: 'no body' }), /^policy\.json: rules\[0\]\.match\.user must be a user name or a uid .*, not "no body"$/],
    ['user an object', withMatch({ user: { name: 'x' } }), /^policy\.json: rules\[0\]\.match\.user must be .*, not an object$/],
    ['gpu negative', withMatch({ gpu: -1 }), /^policy\.json: rules\[0\]\.match\.gpu must be a GPU index, an integer 0\.\.1023, not -1$/],
    ['gpu a string', withMatch({ gpu: '0' }), /^policy\.json: rules\[0\]\.match\.gpu must be a GPU index.*, not "0"$/],
    ['gpu fractional', withMatch({ gpu: 0.5 }), /^policy\.json: rules\[0\]\.match\.gpu must be a GPU index/],
    ['apply missing', withRule({ apply: undefined }), /^policy\.json: rules\[0\]\.apply is missing$/],
    ['apply a string', withApply('latency'), /^policy\.json: rules\[0\]\.apply must be an object .*, not "latency"$/],
    ['unknown apply key', withApply({ freeze: 1 }), /^policy\.json: rules\[0\]\.apply\.freeze is not a known key \(known: class, priority, memory\.mode, memory\.limit\)$/],
    ['nested memory', withApply({ memory: { limit: '8G' } }), /^policy\.json: rules\[0\]\.apply\.memory is not a known key/],
    ['class unknown', withApply({ class: 'urgent' }), /^policy\.json: rules\[0\]\.apply\.class must be one of none, latency, best-effort, not "urgent"$/],
    ['class wrong case', withApply({ class: 'Latency' }), /^policy\.json: rules\[0\]\.apply\.class must be one of/],
    ['priority 16', withApply({ priority: 16 }), /^policy\.json: rules\[0\]\.apply\.priority must be an integer 0\.\.15, not 16$/],
    ['priority -1', withApply({ priority: -1 }), /^policy\.json: rules\[0\]\.apply\.priority must be an integer 0\.\.15, not -1$/],
    ['priority 1.5', withApply({ priority: 1.5 }), /^policy\.json: rules\[0\]\.apply\.priority must be an integer 0\.\.15, not 1\.5$/],
    ['priority a string', withApply({ priority: '2' }), /^policy\.json: rules\[0\]\.apply\.priority must be an integer 0\.\.15, not "2"$/],
    ['priority null', withApply({ priority: null }), /^policy\.json: rules\[0\]\.apply\.priority must be an integer 0\.\.15, not null$/],
    ['memory.mode unknown', withApply({ 'memory.mode': 'fast' }), /^policy\.json: rules\[0\]\.apply\["memory\.mode"\] must be oom or swap, not "fast"$/],
    ['memory.limit 0', withApply({ 'memory.limit': 0 }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] must be a size .*, at least 1 byte, not 0$/],
    ['memory.limit "0"', withApply({ 'memory.limit': '0' }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] must be a size .*, at least 1 byte, not "0"$/],
    ['memory.limit negative', withApply({ 'memory.limit': -5 }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] must be a size/],
    ['memory.limit fractional bytes', withApply({ 'memory.limit': 1.5 }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] must be a size/],
    ['memory.limit "1.5"', withApply({ 'memory.limit': '1.5' }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] .*not a whole number of bytes/],
    ['memory.limit unit', withApply({ 'memory.limit': '8X' }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] .*unknown unit 'X'/],
    ['memory.limit words', withApply({ 'memory.limit': 'lots' }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] .*invalid size 'lots'/],
    ['memory.limit 150%', withApply({ 'memory.limit': '150%' }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] must be a share above 0% and at most 100%, not "150%"$/],
    ['memory.limit 0%', withApply({ 'memory.limit': '0%' }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] must be a share above 0%/],
    ['memory.limit -5%', withApply({ 'memory.limit': '-5%' }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] must be a size/],
    ['memory.limit a boolean', withApply({ 'memory.limit': true }), /^policy\.json: rules\[0\]\.apply\["memory\.limit"\] must be a size .*, not true$/],
  ];
  for (const [what, doc, re] of cases) {
    const e = refusal(t, doc);
    if (e === undefined) continue;
    t.equal(e.code, 'EGVM_INVALID', `${what}: EGVM_INVALID`);
    t.ok(isGvmError(e, 'EGVM_INVALID'), `${what}: a GvmError`);
    t.match(e.message, re, `${what}: ${e.message}`);
    t.equal(e.problems.length, 1, `${what}: exactly one problem`);
  }
});

t.test('the JSON reader gives what JSON.parse gives', async (t) => {
  const texts = [
    fs.readFileSync(EXAMPLE, 'utf8'),
    '{"a": [1, -2.5e3, 0, true, false, null, "\\u00e9\\n\\"", {}, []], "b": {"c": {"d": "\\/"}}, "__proto__": 1}',
    ' \n\t[ ] ',
    '"x"',
    '-0.0',
  ];
  for (const text of texts) t.same(parseJsonStrict(text), JSON.parse(text), text.slice(0, 40));
  t.equal(Object.getPrototypeOf(parseJsonStrict('{"__proto__": {"x": 1}}')), Object.prototype, '__proto__ stays a plain key');
  t.same(parsePolicy('\uFEFF{"rules": []}', 'bom.json').rules, [], 'a byte order mark is allowed');
});

t.test('all problems of a file are reported at once, one line each, in file order', async (t) => {
  const e = refusal(t, {
    rules: [rule({ apply: { priority: 16 } }), rule({ name: 'b', match: {} }), rule({ name: 'c', apply: { class: 'x', 'memory.limit': '0%' } })],
  });
  t.same(e?.problems, [
    'rules[0].apply.priority must be an integer 0..15, not 16',
    'rules[1].match is empty: give at least one of comm, exe, user, cgroup, gpu (to match every process: "comm": "*")',
    'rules[2].apply.class must be one of none, latency, best-effort, not "x"',
    'rules[2].apply["memory.limit"] must be a share above 0% and at most 100%, not "0%"',
  ]);
  t.equal(e?.message.split('\n').length, 4);
  t.ok(e?.message.split('\n').every((l) => l.startsWith('policy.json: rules[')), 'every line names the file');
});

t.test('reading a file: missing, a directory, too large', async (t) => {
  const dir = tmpDir(t, 'gvm-policy-');
  const missing = path.join(dir, 'nope.json');
  t.throws(() => loadPolicy(missing), { code: 'EGVM_NOT_FOUND', message: new RegExp(`^${missing}: cannot read the policy file: ENOENT`) });
  t.throws(() => loadPolicy(dir), { code: 'EGVM_IO', message: /cannot read the policy file: EISDIR/ });
  const big = writePolicy(dir, `{"rules": [], "comment": "${'x'.repeat(1 << 20)}"}`, 'big.json');
  t.throws(() => loadPolicy(big), { code: 'EGVM_INVALID', message: /big\.json: is \d+ bytes; a policy file may hold at most 1 MiB/ });
  const bad = writePolicy(dir, withApply({ priority: 16 }), 'bad.json');
  t.throws(() => loadPolicy(bad), { code: 'EGVM_INVALID', message: `${bad}: rules[0].apply.priority must be an integer 0..15, not 16` });
});

t.test('JSON paths read like jq', async (t) => {
  t.equal(formatPath(['rules', 2, 'apply', 'priority']), 'rules[2].apply.priority');
  t.equal(formatPath(['rules', 0, 'apply', 'memory.limit']), 'rules[0].apply["memory.limit"]');
  t.equal(formatPath([]), 'the top level');
});

t.test('globs: * stays in a path component, ** crosses them, sets, escapes', async (t) => {
  const yes = (p: string, s: string) => t.ok(compileGlob(p).test(s), `'${p}' matches '${s}'`);
  const no = (p: string, s: string) => t.notOk(compileGlob(p).test(s), `'${p}' does not match '${s}'`);
  yes('python*', 'python3.11');
  yes('python*', 'python');
  no('python*', 'ipython');
  no('python', 'python3');
  yes('py?hon', 'python');
  no('py?hon', 'pyhon');
  yes('/usr/bin/*', '/usr/bin/python3');
  no('/usr/bin/*', '/usr/bin/x/python3');
  no('*/python3', '/usr/bin/python3');
  yes('**/python3', '/usr/bin/python3');
  yes('/opt/**', '/opt/a/b/c');
  yes('/user.slice/**/*.scope', '/user.slice/user-1000.slice/session-3.scope');
  no('/user.slice/*.scope', '/user.slice/user-1000.slice/session-3.scope');
  yes('[jJ]upyter*', 'Jupyter-lab');
  yes('gpu[0-3]', 'gpu2');
  no('gpu[0-3]', 'gpu4');
  yes('gpu[!0-3]', 'gpu4');
  yes('gpu[^0-3]', 'gpu9');
  no('gpu[!0-3]', 'gpu1');
  no('a[!x]b', 'a/b');
  yes('[]]x', ']x');
  yes('a\\*b', 'a*b');
  no('a\\*b', 'axb');
  yes('a.b', 'a.b');
  no('a.b', 'axb');
  yes('(x)+', '(x)+');
  no('Python', 'python');
});

// --- matching ------------------------------------------------------------------------------------

const facts = (over: Partial<ProcessFacts> = {}): ProcessFacts => ({
  pid: 4242,
  startTime: 1000,
  comm: 'python3',
  exe: '/opt/llm/venv/bin/python3.11',
  uid: 1000,
  user: 'ana',
  cgroup: '/system.slice/llm-server.service',
  ...over,
});

function rulesOf(doc: unknown): PolicyRule[] {
  return parsePolicy(JSON.stringify(doc), 'p.json').rules;
}

t.test('matching each key on injected process facts', async (t) => {
  const one = (match: unknown, f: ProcessFacts, gpu = 0): boolean => ruleMatches(rulesOf(withMatch(match))[0]!, f, gpu);
  t.ok(one({ comm: 'python*' }, facts()), 'comm glob');
  t.notOk(one({ comm: 'python*' }, facts({ comm: 'vllm' })), 'comm glob, other name');
  t.ok(one({ exe: '/opt/llm/**' }, facts()), 'exe glob');
  t.notOk(one({ exe: '/usr/bin/*' }, facts()), 'exe elsewhere');
  t.notOk(one({ exe: '**' }, facts({ exe: undefined })), 'an unreadable exe matches no exe pattern');
  t.ok(one({ user: 'ana' }, facts()), 'user by name');
  t.notOk(one({ user: 'bob' }, facts()), 'another user');
  t.ok(one({ user: 1000 }, facts()), 'user by uid');
  t.ok(one({ user: '1000' }, facts()), 'user by uid in a string');
  t.notOk(one({ user: 0 }, facts()), 'uid 0 is not ana');
  t.notOk(one({ user: '1000' }, facts({ uid: 1001, user: '1000' })), 'a numeric user name is a uid, not a name');
  t.ok(one({ cgroup: '/system.slice/*.service' }, facts()), 'cgroup glob');
  t.notOk(one({ cgroup: '/user.slice/**' }, facts()), 'another cgroup');
  t.notOk(one({ cgroup: '/**' }, facts({ cgroup: undefined })), 'no cgroup v2 path: no cgroup rule matches');
  t.ok(one({ gpu: 1 }, facts(), 1), 'gpu 1 on GPU 1');
  t.notOk(one({ gpu: 1 }, facts(), 0), 'gpu 1 on GPU 0');
  t.ok(one({ comm: 'python3', user: 'ana', gpu: 0, cgroup: '/system.slice/**', exe: '**/python3*' }, facts(), 0), 'all keys hold');
  for (const [key, value] of Object.entries({ comm: 'x', user: 'bob', gpu: 1, cgroup: '/x', exe: '/x' })) {
    const match = { comm: 'python3', user: 'ana', gpu: 0, cgroup: '/system.slice/**', exe: '**/python3*', [key]: value };
    t.notOk(one(match, facts(), 0), `one key (${key}) that does not hold is enough to miss`);
  }
});

t.test('the first matching rule wins, per GPU; an empty apply stops the search', async (t) => {
  const rules = rulesOf({
    rules: [
      { name: 'root-alone', match: { user: 'root' }, apply: {} },
      { name: 'server-gpu1', match: { comm: 'python3', gpu: 1 }, apply: { priority: 0 } },
      { name: 'server', match: { comm: 'python3' }, apply: { class: 'latency', priority: 2 } },
      { name: 'python-anything', match: { comm: 'python*' }, apply: { priority: 8 } },
      { name: 'everyone', match: { comm: '*' }, apply: { class: 'best-effort', priority: 15 } },
    ],
  });
  t.equal(firstMatch(rules, facts(), 0)?.name, 'server', 'GPU 0: the general server rule');
  t.equal(firstMatch(rules, facts(), 1)?.name, 'server-gpu1', 'GPU 1: the earlier, GPU-specific rule');
  t.equal(firstMatch(rules, facts({ comm: 'python3.11' }), 0)?.name, 'python-anything');
  t.equal(firstMatch(rules, facts({ comm: 'trainer' }), 0)?.name, 'everyone');
  t.equal(firstMatch(rules, facts({ uid: 0, user: 'root' }), 0)?.name, 'root-alone', 'root\'s processes stop at the empty rule');
  t.equal(firstMatch(rules.slice(1, 3), facts({ comm: 'bash' }), 0), undefined, 'nothing matches');
  const reversed = [...rules].reverse();
  t.equal(firstMatch(reversed, facts(), 1)?.name, 'everyone', 'order is what decides');
});

t.test('process facts from a /proc tree: name, exe, effective uid, cgroup v2, start time checked twice', async (t) => {
  const proc = tmpDir(t, 'gvm-proc-');
  const passwd = path.join(proc, 'passwd');
  fs.writeFileSync(passwd, 'root:x:0:0::/root:/bin/sh\nana:x:1000:1000::/home/ana:/bin/sh\n');
  const users = new UserDb(passwd);
  const fake = (pid: number, o: { comm?: string; state?: string; start?: number; uid?: string; cgroup?: string; exe?: string }): void => {
    const dir = path.join(proc, String(pid));
    fs.mkdirSync(dir);
    const rest = [o.state ?? 'S', ...Array.from({ length: 18 }, () => '0'), String(o.start ?? 777), '0', '0'];
    fs.writeFileSync(path.join(dir, 'stat'), `${pid} (${o.comm ?? 'x'}) ${rest.join(' ')}\n`);
    fs.writeFileSync(path.join(dir, 'comm'), `${o.comm ?? 'x'}\n`);
    fs.writeFileSync(path.join(dir, 'status'), `Name:\t${o.comm ?? 'x'}\nUid:\t${o.uid ?? '1000\t1000\t1000\t1000'}\n`);
    if (o.cgroup !== undefined) fs.writeFileSync(path.join(dir, 'cgroup'), o.cgroup);
    if (o.exe !== undefined) fs.symlinkSync(o.exe, path.join(dir, 'exe'));
  };
  fake(100, { comm: 'py (weird) 3', exe: '/opt/llm/bin/python3', cgroup: '0::/system.slice/llm.service\n' });
  t.same(readProcessFacts(100, 777, users, proc), {
    pid: 100,
    startTime: 777,
    comm: 'py (weird) 3',
    exe: '/opt/llm/bin/python3',
    uid: 1000,
    user: 'ana',
    cgroup: '/system.slice/llm.service',
  });
  t.equal(readProcessFacts(100, 778, users, proc), undefined, 'another start time: the pid is another process now');
  t.equal(readProcessFacts(101, 777, users, proc), undefined, 'no such process');
  fake(102, { state: 'Z' });
  t.equal(readProcessFacts(102, 777, users, proc), undefined, 'a zombie has exited');
  fake(103, { uid: '1000\t0\t0\t0', cgroup: '12:cpu,cpuacct:/x\n1:name=systemd:/y\n' });
  const f = readProcessFacts(103, 777, users, proc);
  t.equal(f?.uid, 0, 'the effective uid (the block owner), not the real one');
  t.equal(f?.user, 'root');
  t.equal(f?.cgroup, undefined, 'cgroup v1 only: no cgroup path');
  t.equal(f?.exe, undefined, 'an unreadable exe is left out');
  fake(104, { uid: '4321\t4321\t4321\t4321', exe: '/tmp/gone (deleted)' });
  t.equal(readProcessFacts(104, 777, users, proc)?.user, '4321', 'a uid without a name shows as the number');
  t.equal(readProcessFacts(104, 777, users, proc)?.exe, '/tmp/gone', 'a deleted executable keeps its path');

  // the real /proc, for this test process
  const me = readProcessFacts(process.pid, startTime(process.pid), new UserDb());
  t.equal(me?.comm, fs.readFileSync('/proc/self/comm', 'utf8').trim());
  t.equal(me?.exe, fs.realpathSync(process.execPath));
  t.equal(me?.uid, process.geteuid!());
  const v2 = fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'));
  t.equal(me?.cgroup, v2?.slice(3));
});

t.test('user names follow /etc/passwd as it changes', async (t) => {
  const dir = tmpDir(t, 'gvm-passwd-');
  const passwd = path.join(dir, 'passwd');
  fs.writeFileSync(passwd, 'ana:x:1000:1000::/:/bin/sh\n');
  const users = new UserDb(passwd);
  t.equal(users.name(1000), 'ana');
  t.equal(users.uid('bob'), undefined);
  fs.writeFileSync(passwd, 'ana:x:1000:1000::/:/bin/sh\nbob:x:1001:1001::/:/bin/sh\n');
  fs.utimesSync(passwd, new Date(), new Date(Date.now() + 5000));
  t.equal(users.uid('bob'), 1001, 'a user added later is found');
  t.equal(users.name(1001), 'bob');
});

t.test('shares of a GPU and limits past its size', async (t) => {
  const limit = (spec: unknown, total: number) => resolveApply(parsePolicy(JSON.stringify(withApply({ 'memory.limit': spec })), 'p').rules[0]!.apply, total);
  t.equal(limit('40%', TOTAL).values.get('memory.limit'), 32n * BigInt(GiB), '40% of 80 GiB is 32 GiB exactly');
  t.equal(limit('40%', TOTAL).notes.get('memory.limit'), '40% of 80 GiB');
  t.equal(limit('12.5%', 1000).values.get('memory.limit'), 125n);
  t.equal(limit('33.333%', 3000).values.get('memory.limit'), 999n, 'rounded down to a byte');
  t.equal(limit('100%', TOTAL).values.get('memory.limit'), BigInt(TOTAL));
  t.equal(limit('0.0001%', 100).values.get('memory.limit'), 1n, 'never 0');
  t.same(limit('40%', 0).errors, ['memory.limit 40%: the GPU\'s size is unknown']);
  t.notOk(limit('40%', 0).values.has('memory.limit'));
  t.equal(limit('100G', TOTAL).values.get('memory.limit'), BigInt(TOTAL), 'past the GPU\'s size: the GPU\'s size');
  t.equal(limit('100G', TOTAL).notes.get('memory.limit'), 'the GPU\'s size; the rule asks for 100 GiB');
  t.equal(limit('8G', TOTAL).values.get('memory.limit'), 8n * BigInt(GiB));
  t.equal(limit('8G', 0).values.get('memory.limit'), 8n * BigInt(GiB), 'bytes on a GPU of unknown size: sent as they are');
});

// --- the engine over real agents -------------------------------------------------------------------

const AGENT_ENV = { GVM_RM_ANY_DRIVER: '1' };

async function agent(t: Tap.Test, shm: string, env: NodeJS.ProcessEnv = AGENT_ENV): Promise<{ prog: Prog; pid: number }> {
  const prog = start(t, shm, 'direct', 'basic', env);
  const line = await prog.line('READY');
  return { prog, pid: (JSON.parse(line.slice(6)) as { pid: number }).pid };
}

function engine(t: Tap.Test, file: string, shm: string): { engine: PolicyEngine; log: string[] } {
  const log: string[] = [];
  const e = PolicyEngine.start({ file, shmDir: shm, log: (l) => log.push(l), rescanMs: 100, timeoutMs: 3000 });
  t.teardown(() => e.stop());
  return { engine: e, log };
}

interface Readback {
  class: string;
  priority: number;
  limit: number;
}

async function readback(pid: number, shm: string, ordinal = 0): Promise<Readback> {
  using p = await Gvm.process(pid, { shmDir: shm });
  const g: GvmGpu = p.gpu(ordinal);
  return { class: g.policy.class, priority: g.compute.priority, limit: g.memory.limit };
}

const SERVER_RULES = {
  rules: [
    { name: 'prog-gpu1', match: { comm: 'gvm-prog-*', gpu: 1 }, apply: { priority: 3 } },
    { name: 'prog', match: { comm: 'gvm-prog-*', user: 'root' }, apply: { class: 'latency', priority: 2, 'memory.limit': '25%' } },
    { name: 'others', match: { comm: 'nothing-like-it' }, apply: { priority: 1 } },
  ],
};

t.test('a process started after the engine gets its rule on each GPU; a later manual change stays', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const file = writePolicy(tmpDir(t, 'gvm-policy-'), SERVER_RULES);
  const { engine: e, log } = engine(t, file, shm);
  await e.settle();
  t.same(log, [`policy: ${file}: 3 rules in force; watching ${shm}`], 'nothing to do yet');
  const { pid } = await agent(t, shm);
  await e.settle();
  t.same(await readback(pid, shm, 0), { class: 'latency', priority: 2, limit: TOTAL / 4 }, 'GPU 0: rule prog (25% of 80 GiB)');
  t.same(await readback(pid, shm, 1), { class: 'none', priority: 3, limit: TOTAL }, 'GPU 1: the GPU-specific rule only');
  t.ok(log.includes(`policy: pid ${pid} (gvm-prog-direct) gpu 0: rule 'prog' -> class latency, priority 2, memory.limit 20 GiB (25% of 80 GiB)`), log.join('\n'));
  t.ok(log.includes(`policy: pid ${pid} (gvm-prog-direct) gpu 1: rule 'prog-gpu1' -> priority 3`));
  t.equal(e.stats.applied.get('prog'), 1);
  t.equal(e.stats.applied.get('prog-gpu1'), 1);
  t.equal(e.stats.failed.size, 0);

  // by hand, as gvm set does it
  using p = await Gvm.process(pid, { shmDir: shm });
  await p.gpu(0).setPriority(9);
  await p.gpu(0).setPolicyClass('none');
  const lines = log.length;
  for (let i = 0; i < 3; i++) await e.settle();
  await new Promise((r) => setTimeout(r, 300)); // a few periodic rescans
  t.same(await readback(pid, shm, 0), { class: 'none', priority: 9, limit: TOTAL / 4 }, 'rescans do not undo a manual change');
  t.equal(log.length, lines, 'and log nothing');
});

t.test('reload: only results that changed are sent; a setting no rule gives any more is put back', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const dir = tmpDir(t, 'gvm-policy-');
  const file = writePolicy(dir, SERVER_RULES);
  const { engine: e, log } = engine(t, file, shm);
  const { pid } = await agent(t, shm);
  await e.settle();
  t.same(await readback(pid, shm, 0), { class: 'latency', priority: 2, limit: TOTAL / 4 });
  using p = await Gvm.process(pid, { shmDir: shm });
  await p.gpu(0).setPolicyClass('best-effort'); // by hand: the class result will not change below
  await p.gpu(1).setPriority(11); // by hand: GPU 1's rule will not change below

  t.equal(e.reload(), true, 'the same file again');
  await e.settle();
  t.same(await readback(pid, shm, 0), { class: 'best-effort', priority: 2, limit: TOTAL / 4 }, 'an unchanged file changes nothing');
  t.equal((await readback(pid, shm, 1)).priority, 11);

  // priority 2 -> 4, memory.limit dropped, the class stays latency
  const edited = structuredClone(SERVER_RULES);
  edited.rules[1]!.apply = { class: 'latency', priority: 4 } as (typeof edited.rules)[1]['apply'];
  writePolicy(dir, edited);
  const mark = log.length;
  t.equal(e.reload(), true);
  await e.settle();
  t.same(
    await readback(pid, shm, 0),
    { class: 'best-effort', priority: 4, limit: TOTAL },
    'the changed priority is sent, the class changed by hand stays, the limit goes back to what it was (unlimited)',
  );
  t.equal((await readback(pid, shm, 1)).priority, 11, 'GPU 1: its rule did not change, the manual value stays');
  const after = log.slice(mark);
  t.match(after[0], new RegExp(`^policy: reloaded ${file}: 3 rules in force \\(before: 3\\)$`));
  t.ok(
    after.includes(`policy: pid ${pid} (gvm-prog-direct) gpu 0: rule 'prog' (reload) -> priority 4, memory.limit 80 GiB (restored: no rule gives it now)`),
    after.join('\n'),
  );
  t.equal(after.length, 2, 'nothing else was sent');
  t.equal(e.stats.reloads.ok, 2);

  // the rule stops matching: what it set goes back, unless changed by hand (the class was)
  writePolicy(dir, { rules: [{ name: 'others', match: { comm: 'nothing-like-it' }, apply: { priority: 1 } }] });
  t.equal(e.reload(), true);
  await e.settle();
  t.same(await readback(pid, shm, 0), { class: 'best-effort', priority: 8, limit: TOTAL }, 'priority back to the driver default it had');
  t.equal((await readback(pid, shm, 1)).priority, 11, 'GPU 1: changed by hand since, so left alone');
});

t.test('a broken file on reload is logged with its path; the old rules stay in force', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const dir = tmpDir(t, 'gvm-policy-');
  const file = writePolicy(dir, SERVER_RULES);
  const { engine: e, log } = engine(t, file, shm);
  fs.chmodSync(file, 0o664);
  t.equal(e.reload(), true);
  t.ok(log.includes(`policy: warning: ${file} is writable by its group: whoever can write it sets every process's class, priority and memory limit (chmod go-w)`), 'a file others may write is logged');
  writePolicy(dir, withApply({ priority: 16 }));
  t.equal(e.reload(), false);
  t.equal(e.stats.reloads.invalid, 1);
  t.equal(e.stats.reloads.ok, 1);
  t.ok(log.includes('policy: reload refused; the 3 rules loaded before stay in force:'), log.join('\n'));
  t.ok(log.includes(`policy:   ${file}: rules[0].apply.priority must be an integer 0..15, not 16`));
  fs.rmSync(file);
  t.equal(e.reload(), false, 'a missing file is refused too');
  t.ok(log.some((l) => l.includes(`${file}: cannot read the policy file: ENOENT`)));
  t.same(e.policy.rules.map((r) => r.name), ['prog-gpu1', 'prog', 'others']);
  const { pid } = await agent(t, shm);
  await e.settle();
  t.same(await readback(pid, shm, 0), { class: 'latency', priority: 2, limit: TOTAL / 4 }, 'a new process gets the old rules');
});

/** A live process of our own (sleep) whose pid a block can name; killed after the test. */
function sleeper(t: Tap.Test): { child: ChildProcess; pid: number; exited: Promise<unknown> } {
  const child = spawn('sleep', ['1000'], { stdio: 'ignore' });
  const exited = new Promise((r) => child.on('exit', r));
  t.teardown(() => void child.kill('SIGKILL'));
  return { child, pid: child.pid!, exited };
}

/** A block nobody answers (no agent behind it) for a live process. */
function silentBlock(shm: string, pid: number, extra: Record<string, number> = {}): void {
  const fields = { pid, start_time: startTime(pid), 'gpu0.present': 1, 'gpu0.total': TOTAL, 'gpu0.limit': TOTAL, 'gpu0.priority': 8, ...extra };
  makeBlock(blockFile(shm, pid), fields);
}

t.test('exits, stops, stale blocks, hung and refusing agents: each logged once and skipped, nothing crashes', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const file = writePolicy(tmpDir(t, 'gvm-policy-'), { rules: [{ name: 'all', match: { comm: '*' }, apply: { class: 'latency', priority: 2 } }] });

  const stale = deadPid(); // a block whose process is gone
  makeBlock(blockFile(shm, stale), { pid: stale, start_time: 1, 'gpu0.present': 1 });
  const dying = sleeper(t); // exits while gvmd waits for its answer
  silentBlock(shm, dying.pid);
  const hung = sleeper(t); // lives, never answers
  silentBlock(shm, hung.pid, { 'gpu1.present': 1, 'gpu1.total': TOTAL });
  const stoppedDies = await agent(t, shm);
  stoppedDies.prog.child.kill('SIGSTOP');
  const stoppedRuns = await agent(t, shm);
  stoppedRuns.prog.child.kill('SIGSTOP');
  const refusing = await agent(t, shm, {}); // without the RM path the agent refuses priorities

  const { engine: e, log } = engine(t, file, shm); // answers awaited 3 s
  const about = (pid: number) => log.filter((l) => l.startsWith(`policy: pid ${pid} `) || l.startsWith(`policy: pid ${pid}:`));
  const until = async (pid: number, re: RegExp): Promise<boolean> => {
    for (let i = 0; i < 500 && !about(pid).some((l) => re.test(l)); i++) await new Promise((r) => setTimeout(r, 10));
    return about(pid).some((l) => re.test(l));
  };
  // wait until gvmd's first command is in the dying process's mailbox (its seq, at offset 2432, moves)
  const seq = (pid: number): number => {
    const buf = Buffer.alloc(4);
    const fd = fs.openSync(blockFile(shm, pid), 'r');
    fs.readSync(fd, buf, 0, 4, 2432);
    fs.closeSync(fd);
    return buf.readUInt32LE(0);
  };
  for (let i = 0; i < 1000 && seq(dying.pid) === 0; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(seq(dying.pid), 1, 'gvmd sent the first setting and waits for its answer');
  await new Promise((r) => setTimeout(r, 200));
  const killedAt = Date.now();
  dying.child.kill('SIGKILL');
  t.ok(await until(dying.pid, /exited/), 'an exit while waiting for the answer is noticed');
  const waited = Date.now() - killedAt;
  t.ok(waited < 2000, `at once, not after the 3 s timeout (${waited} ms)`);
  t.ok(await until(stoppedDies.pid, /stopped/), 'a stopped process is noticed');
  stoppedDies.prog.child.kill('SIGKILL');
  await stoppedDies.prog.exited;
  await e.settle();
  stoppedRuns.prog.child.kill('SIGCONT');
  await new Promise((r) => setTimeout(r, 250)); // a periodic rescan
  await e.settle();
  await e.settle();

  t.same(about(stale), [`policy: pid ${stale}: its control block belongs to no live process (or cannot be read); skipped`], 'a stale block');
  t.same(about(dying.pid), [`policy: pid ${dying.pid} (sleep): exited before its policy was applied; skipped`], 'an exit during a command');
  t.same(
    about(stoppedDies.pid),
    [
      `policy: pid ${stoppedDies.pid} (gvm-prog-direct): stopped (by a signal or a debugger); its policy is applied once it runs again`,
      `policy: pid ${stoppedDies.pid} (gvm-prog-direct): exited before its policy was applied; skipped`,
    ],
    'stopped, then killed',
  );
  t.same(
    about(stoppedRuns.pid),
    [
      `policy: pid ${stoppedRuns.pid} (gvm-prog-direct): stopped (by a signal or a debugger); its policy is applied once it runs again`,
      `policy: pid ${stoppedRuns.pid} (gvm-prog-direct) gpu 0: rule 'all' -> class latency, priority 2`,
      `policy: pid ${stoppedRuns.pid} (gvm-prog-direct) gpu 1: rule 'all' -> class latency, priority 2`,
    ],
    'stopped, then continued: applied once it runs',
  );
  t.same(await readback(stoppedRuns.pid, shm), { class: 'latency', priority: 2, limit: TOTAL });
  t.same(
    about(hung.pid),
    [
      `policy: pid ${hung.pid} (sleep) gpu 0: rule 'all': not applied: class latency: process ${hung.pid} GPU 0: policy_class 1: the agent did not answer within 3000 ms (EGVM_TIMEOUT)`,
      `policy: pid ${hung.pid} (sleep) gpu 0: rule 'all': not applied: priority 2: not sent, the agent did not answer class latency on GPU 0`,
      `policy: pid ${hung.pid} (sleep) gpu 1: rule 'all': not applied: class latency: not sent, the agent did not answer class latency on GPU 0`,
      `policy: pid ${hung.pid} (sleep) gpu 1: rule 'all': not applied: priority 2: not sent, the agent did not answer class latency on GPU 0`,
    ],
    'a hung agent: one timeout, nothing more sent to it',
  );
  const refused = about(refusing.pid);
  t.equal(refused.length, 4, refused.join('\n'));
  for (const gpu of [0, 1]) {
    t.ok(refused.includes(`policy: pid ${refusing.pid} (gvm-prog-direct) gpu ${gpu}: rule 'all' -> class latency`), `GPU ${gpu}: what the agent took`);
    const re = new RegExp(
      `^policy: pid ${refusing.pid} \\(gvm-prog-direct\\) gpu ${gpu}: rule 'all': not applied: priority 2: process ${refusing.pid} GPU ${gpu}: compute_priority 2: .+ \\(EGVM_UNSUPPORTED\\)$`,
    );
    t.equal(refused.filter((l) => re.test(l)).length, 1, `GPU ${gpu}: the refusal once, with the agent's reason and code`);
  }
  t.equal((await readback(refusing.pid, shm)).class, 'latency', 'what the agent took stays');
  t.equal(e.stats.failed.get('all'), 4, 'failed: the hung agent and the refusing one, two GPUs each');
  t.equal(e.stats.applied.get('all'), 2, 'applied: the continued process on two GPUs');

  // still working afterwards
  const later = await agent(t, shm);
  await e.settle();
  t.same(await readback(later.pid, shm), { class: 'latency', priority: 2, limit: TOTAL });
  t.equal(e.stats.applied.get('all'), 4, 'both GPUs of the new process');
});

t.test('a process in start-up waits; a GPU that appears later gets its rule then', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const file = writePolicy(tmpDir(t, 'gvm-policy-'), { rules: [{ name: 'sleepers', match: { comm: 'sleep' }, apply: { priority: 5 } }] });
  const { pid } = sleeper(t);
  const block = blockFile(shm, pid);
  const gpu = (i: number) => ({ [`gpu${i}.name`]: `GPU ${i}`, [`gpu${i}.total`]: TOTAL, [`gpu${i}.limit`]: TOTAL, [`gpu${i}.priority`]: 8 });
  // a stand-in agent that answers priority commands: still starting, GPU 1 not there yet
  await serveBlock(t, block, { pid, start_time: startTime(pid), state: 0, gpu_count: 2, 'gpu0.present': 1, ...gpu(0), ...gpu(1) });
  const poke = (offset: number) => {
    const fd = fs.openSync(block, 'r+');
    fs.writeSync(fd, Buffer.from([1, 0, 0, 0]), 0, 4, offset);
    fs.closeSync(fd);
  };
  const { engine: e, log } = engine(t, file, shm);
  await e.settle();
  t.equal((await readback(pid, shm, 0)).priority, 8, 'an agent still starting gets nothing yet');
  poke(48); // agent_state = ready
  await e.settle();
  await new Promise((r) => setTimeout(r, 250));
  await e.settle();
  t.equal((await readback(pid, shm, 0)).priority, 5, 'applied once it is ready');
  t.ok(log.includes(`policy: pid ${pid} (sleep) gpu 0: rule 'sleepers' -> priority 5`), log.join('\n'));
  poke(4096 + 8192); // gpu[1].present = 1
  await new Promise((r) => setTimeout(r, 250)); // the periodic rescan finds it
  await e.settle();
  t.equal((await readback(pid, shm, 1)).priority, 5, 'GPU 1 got the rule when it appeared');
  t.ok(log.includes(`policy: pid ${pid} (sleep) gpu 1: rule 'sleepers' -> priority 5`));
  t.equal(log.filter((l) => l.includes(`pid ${pid} `)).length, 2, 'GPU 0 was not sent again');
});

// --- gvmd ----------------------------------------------------------------------------------------

t.test('gvmd --check-policy prints the rules (exit 0) or why not (exit 2), without root', async (t) => {
  const dir = tmpDir(t, 'gvm-policy-');
  const run = (file: string, asNobody = false) =>
    spawnSync(asNobody ? 'setpriv' : process.execPath, [
      ...(asNobody ? ['--reuid', '65534', '--regid', '65534', '--clear-groups', process.execPath] : []),
      GVMD,
      '--check-policy',
      file,
    ], { encoding: 'utf8', timeout: 30000 });
  const good = run(EXAMPLE);
  t.equal(good.status, 0, good.stderr);
  t.equal(good.stderr, '');
  t.match(good.stdout, new RegExp(`^${EXAMPLE}: valid, 5 rules \\(the first rule that matches a process on a GPU applies\\)\n`));
  t.match(good.stdout, /^ +2\. llm-server\n +match +exe "\/opt\/llm\/venv\/bin\/python3\*" and cgroup "\/system\.slice\/llm-server\.service"\n +apply +class latency, priority 2$/m);
  t.match(good.stdout, /^ +4\. training\n.*\n +apply +class best-effort, priority 15, memory\.mode swap, memory\.limit 40% of the GPU$/m);
  t.match(good.stdout, /user root \(uid 0\)/, 'user names are looked up');
  t.match(good.stdout, /warnings:\n  rules\[4\]\.match\.user: there is no user 'ci' now/);
  const copy = writePolicy(dir, JSON.parse(fs.readFileSync(EXAMPLE, 'utf8')), 'example.json');
  const nobody = run(copy, true);
  t.equal(nobody.status, 0, `as nobody: ${nobody.stderr}`);
  t.notMatch(good.stdout, /writable/, 'a file only its owner may write gets no warning');
  fs.chmodSync(copy, 0o666);
  t.match(run(copy).stdout, new RegExp(`warnings:\n  ${copy} is writable by its group and every user: whoever can write it sets every process's`));
  const shadow = writePolicy(dir, { rules: [rule(), rule({ name: 'again' })] }, 'shadow.json');
  t.match(run(shadow).stdout, /rules\[1\] \('again'\) never applies: rule 'r' matches the same processes first/);

  const bad = writePolicy(dir, { rules: [rule({ apply: { priority: 16 } }), rule({ name: 'x', match: {} })] }, 'bad.json');
  const r = run(bad);
  t.equal(r.status, 2, 'invalid: exit 2');
  t.equal(r.stdout, '');
  t.equal(
    r.stderr,
    `gvmd: ${bad}: rules[0].apply.priority must be an integer 0..15, not 16\n` +
      `gvmd: ${bad}: rules[1].match is empty: give at least one of comm, exe, user, cgroup, gpu (to match every process: "comm": "*")\n`,
  );
  const missing = run(path.join(dir, 'missing.json'));
  t.equal(missing.status, 2, 'unreadable: exit 2');
  t.match(missing.stderr, /missing\.json: cannot read the policy file: ENOENT/);
});

interface Gvmd {
  child: ChildProcess;
  port: number;
  log: string[];
  exited: Promise<number | null>;
}

async function gvmd(t: Tap.Test, args: string[]): Promise<Gvmd> {
  const child = spawn(process.execPath, [GVMD, '--metrics-port', '0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log: string[] = [];
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  });
  const port = await new Promise<number>((resolve, reject) => {
    readline.createInterface({ input: child.stderr! }).on('line', (l) => {
      log.push(l);
      const m = /metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(l);
      if (m) resolve(Number(m[1]));
    });
    void exited.then((code) => reject(new Error(`gvmd exited ${code}: ${log.join(' | ')}`)));
    setTimeout(() => reject(new Error(`gvmd did not start: ${log.join(' | ')}`)), 15000);
  });
  return { child, port, log, exited };
}

async function logLine(d: Gvmd, re: RegExp, from = 0, ms = 10000): Promise<string> {
  const end = Date.now() + ms;
  for (;;) {
    const found = d.log.slice(from).find((l) => re.test(l));
    if (found !== undefined) return found;
    if (Date.now() > end) throw new Error(`no log line ${re}: ${d.log.join(' | ')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function metric(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

t.test('gvmd refuses to start on an invalid policy file (exit 2), before mounting anything', async (t) => {
  const dir = tmpDir(t, 'gvm-policy-');
  const mount = tmpDir(t, 'gvm-mnt-');
  const bad = writePolicy(dir, withApply({ class: 'urgent' }));
  const r = spawnSync(process.execPath, [GVMD, '--mount', mount, '--no-metrics', '--policy', bad], { encoding: 'utf8', timeout: 30000 });
  t.equal(r.status, 2, 'exit 2, like a bad option');
  t.equal(r.stderr, `gvmd: ${bad}: rules[0].apply.class must be one of none, latency, best-effort, not "urgent"\n`);
  t.not(spawnSync('mountpoint', ['-q', mount]).status, 0, 'nothing was mounted');
  const missing = spawnSync(process.execPath, [GVMD, '--no-mount', '--no-metrics', '--policy', path.join(dir, 'none.json')], { encoding: 'utf8' });
  t.equal(missing.status, 2);
  t.match(missing.stderr, /none\.json: cannot read the policy file: ENOENT/);
  t.equal(spawnSync(process.execPath, [GVMD, '--policy'], { encoding: 'utf8' }).status, 2, '--policy without a file');
});

t.test('gvmd --policy: new processes get their rule; SIGHUP reloads a good file and keeps the rules on a broken one', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const dir = tmpDir(t, 'gvm-policy-');
  const file = writePolicy(dir, SERVER_RULES);
  const d = await gvmd(t, ['--no-mount', '--shm-dir', shm, '--policy', file]);
  t.ok(d.log.includes(`gvmd: policy: ${file}: 3 rules in force; watching ${shm}`), d.log.join('\n'));
  const { pid } = await agent(t, shm);
  await logLine(d, new RegExp(`^gvmd: policy: pid ${pid} \\(gvm-prog-direct\\) gpu 0: rule 'prog' -> class latency, priority 2, memory\\.limit 20 GiB \\(25% of 80 GiB\\)$`));
  await logLine(d, new RegExp(`^gvmd: policy: pid ${pid} \\(gvm-prog-direct\\) gpu 1: rule 'prog-gpu1' -> priority 3$`));
  t.same(await readback(pid, shm, 0), { class: 'latency', priority: 2, limit: TOTAL / 4 }, 'read back through the library');
  let m = await scrape(d.port);
  t.equal(metric(m, 'gvm_policy_rules'), 3);
  t.equal(metric(m, 'gvm_policy_rule_applied_total', '{rule="prog"}'), 1);
  t.equal(metric(m, 'gvm_policy_rule_applied_total', '{rule="prog-gpu1"}'), 1);
  t.equal(metric(m, 'gvm_policy_rule_applied_total', '{rule="others"}'), 0, 'unused rules show at 0');
  t.equal(metric(m, 'gvm_policy_rule_failed_total', '{rule="prog"}'), 0);
  t.match(m, /# TYPE gvm_policy_rule_applied_total counter/);

  // an edited file: SIGHUP sends the changed result only
  const edited = structuredClone(SERVER_RULES);
  edited.rules[1]!.apply = { class: 'latency', priority: 6, 'memory.limit': '25%' };
  writePolicy(dir, edited);
  let mark = d.log.length;
  d.child.kill('SIGHUP');
  await logLine(d, new RegExp(`^gvmd: policy: reloaded ${file}: 3 rules in force \\(before: 3\\)$`), mark);
  await logLine(d, new RegExp(`^gvmd: policy: pid ${pid} \\(gvm-prog-direct\\) gpu 0: rule 'prog' \\(reload\\) -> priority 6$`), mark);
  t.same(await readback(pid, shm, 0), { class: 'latency', priority: 6, limit: TOTAL / 4 });

  // a broken file: logged with why, the rules stay, gvmd keeps running
  writePolicy(dir, '{"rules": [ {"name": "x" ');
  mark = d.log.length;
  d.child.kill('SIGHUP');
  await logLine(d, /^gvmd: policy: reload refused; the 3 rules loaded before stay in force:$/, mark);
  const why = await logLine(d, /is not valid JSON/, mark);
  t.match(why, new RegExp(`^gvmd: policy:   ${file}: is not valid JSON: .*\\(line 1, column \\d+\\)$`));
  const second = await agent(t, shm);
  await logLine(d, new RegExp(`^gvmd: policy: pid ${second.pid} \\(gvm-prog-direct\\) gpu 0: rule 'prog' -> class latency, priority 6, memory\\.limit 20 GiB`), mark);
  t.same(await readback(second.pid, shm, 0), { class: 'latency', priority: 6, limit: TOTAL / 4 }, 'the rules of the last good file');
  t.equal(d.child.exitCode, null, 'still running');
  m = await scrape(d.port);
  t.equal(metric(m, 'gvm_policy_reloads_total', '{result="ok"}'), 1);
  t.equal(metric(m, 'gvm_policy_reloads_total', '{result="invalid"}'), 1);
  t.equal(metric(m, 'gvm_policy_rule_applied_total', '{rule="prog"}'), 3, 'first process, its reload, the second process');

  // a process that exits at once does not trouble it
  const quick = start(t, shm, 'direct', 'exit-early', AGENT_ENV);
  await quick.exited;
  const third = await agent(t, shm);
  await logLine(d, new RegExp(`^gvmd: policy: pid ${third.pid} \\(gvm-prog-direct\\) gpu 0: rule 'prog' ->`));
  d.child.kill('SIGTERM');
  t.equal(await d.exited, 0, 'SIGTERM: a clean exit');
  t.ok(d.log.includes('gvmd: stopped'));
});

t.test('SIGHUP no longer stops gvmd: with a mount and no policy it logs and keeps serving', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const mount = tmpDir(t, 'gvm-mnt-');
  t.teardown(() => void spawnSync('fusermount3', ['-uz', mount]));
  const d = await gvmd(t, ['--mount', mount, '--shm-dir', shm]);
  const mark = d.log.length;
  d.child.kill('SIGHUP');
  await logLine(d, /^gvmd: SIGHUP: no --policy file to read again; nothing changes$/, mark);
  t.equal(d.child.exitCode, null, 'still running');
  t.same(fs.readdirSync(mount).sort(), ['gpus', 'processes'], 'still serving the tree');
  d.child.kill('SIGINT');
  t.equal(await d.exited, 0, 'SIGINT: a clean exit');
  t.ok(d.log.includes(`gvmd: unmounted ${mount}`));
  t.not(spawnSync('mountpoint', ['-q', mount]).status, 0, 'unmounted');
});

t.test('a policy with a FUSE mount: the tree shows what the policy applied', async (t) => {
  const shm = tmpDir(t, 'gvm-shm-', 0o1777);
  const mount = tmpDir(t, 'gvm-mnt-');
  t.teardown(() => void spawnSync('fusermount3', ['-uz', mount]));
  const file = writePolicy(tmpDir(t, 'gvm-policy-'), SERVER_RULES);
  const d = await gvmd(t, ['--mount', mount, '--shm-dir', shm, '--policy', file]);
  const { pid } = await agent(t, shm);
  await logLine(d, new RegExp(`^gvmd: policy: pid ${pid} \\(gvm-prog-direct\\) gpu 0: rule 'prog' ->`));
  t.equal(fs.readFileSync(`${mount}/processes/${pid}/0/compute.priority`, 'utf8'), '2\n');
  t.equal(fs.readFileSync(`${mount}/processes/${pid}/0/memory.limit`, 'utf8'), `${TOTAL / 4}\n`);
  fs.writeFileSync(`${mount}/processes/${pid}/0/compute.priority`, '7\n'); // by hand, through the tree
  await new Promise((r) => setTimeout(r, 1200)); // two periodic rescans
  t.equal(fs.readFileSync(`${mount}/processes/${pid}/0/compute.priority`, 'utf8'), '7\n', 'not overwritten');
});

