/**
 * gvmd's policy file (`gvmd --policy FILE`): an ordered list of rules, each with a name, what it
 * matches (process name, executable, user, cgroup, GPU) and what it applies (policy class, priority,
 * memory mode and limit). This module reads and checks a file and prints it; matching a process is
 * policy-match.ts, applying is policy-apply.ts. The format is described in docs/gvmd.md.
 *
 * Every problem is reported with the file and the JSON path of the value
 * (`policy.json: rules[2].apply.priority must be an integer 0..15, not 16`), all of them at once.
 */
import * as fs from 'node:fs';

import { fromSystemError, GvmError } from '../errors';
import { MemoryMode, POLICY_CLASSES, PolicyClass } from '../index';
import { formatBytes, parseBytes } from '../units';
import { compileGlob, Glob } from './glob';
import { JsonDuplicateKeyError, parseJsonStrict } from './json-strict';

export const POLICY_VERSION = 1;
const TOP_KEYS = ['version', 'comment', 'rules'] as const;
const RULE_KEYS = ['name', 'comment', 'match', 'apply'] as const;
export const MATCH_KEYS = ['comm', 'exe', 'user', 'cgroup', 'gpu'] as const;
export const APPLY_KEYS = ['class', 'priority', 'memory.mode', 'memory.limit'] as const;
const MAX_FILE_BYTES = 1 << 20;
const MAX_GPU_INDEX = 1023;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const USER_NAME_RE = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/;

/** A memory limit as written: bytes, or a share of the GPU's memory. */
export type MemoryLimitSpec = { kind: 'bytes'; bytes: bigint } | { kind: 'percent'; percent: number };

/** Who a rule's `user` names: a uid, or a user name looked up when a process is matched. */
export type UserSpec = { uid: number } | { name: string };

export interface PolicyMatch {
  comm?: Glob;
  exe?: Glob;
  user?: UserSpec;
  cgroup?: Glob;
  /** the machine-wide GPU index */
  gpu?: number;
}

export interface PolicyApply {
  class?: PolicyClass;
  priority?: number;
  memoryMode?: MemoryMode;
  memoryLimit?: MemoryLimitSpec;
}

export interface PolicyRule {
  name: string;
  /** its position in the file's `rules` (0-based) */
  index: number;
  match: PolicyMatch;
  apply: PolicyApply;
}

export interface Policy {
  /** the file as it was named (the prefix of every message about it) */
  file: string;
  rules: PolicyRule[];
}

/** An invalid policy file: EGVM_INVALID; `problems` lists each one (the message joins them). */
export class PolicyFileError extends GvmError {
  readonly file: string;
  readonly problems: readonly string[];

  constructor(file: string, problems: readonly string[]) {
    super(problems.map((p) => `${file}: ${p}`).join('\n'), 'EGVM_INVALID');
    this.file = file;
    this.problems = problems;
  }
}

type Path = ReadonlyArray<string | number>;

/** rules[2].apply.priority; keys that are not identifiers in brackets: rules[0].apply["memory.limit"] */
export function formatPath(path: Path): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else if (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(part)) out += out === '' ? part : `.${part}`;
    else out += `[${JSON.stringify(part)}]`;
  }
  return out === '' ? 'the top level' : out;
}

/** A value as a message shows it: strings quoted, containers by kind. */
function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  return String(value);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

class Checker {
  readonly problems: string[] = [];

  fail(path: Path, text: string): undefined {
    this.problems.push(`${formatPath(path)} ${text}`);
    return undefined;
  }

  /** Reports keys outside `known`; returns the object (or undefined when it is not one). */
  object(value: unknown, path: Path, known: readonly string[], what: string): Record<string, unknown> | undefined {
    if (!isObject(value)) return this.fail(path, `must be ${what}, not ${describe(value)}`);
    for (const key of Object.keys(value)) {
      if (!known.includes(key)) this.fail([...path, key], `is not a known key (known: ${known.join(', ')})`);
    }
    return value;
  }

  comment(value: unknown, path: Path): void {
    if (value !== undefined && typeof value !== 'string') this.fail(path, `must be a string, not ${describe(value)}`);
  }

  glob(value: unknown, path: Path, absolute: string | undefined): Glob | undefined {
    if (typeof value !== 'string' || value === '') return this.fail(path, `must be a non-empty glob string, not ${describe(value)}`);
    if (absolute !== undefined && !value.startsWith('/') && !value.startsWith('*')) {
      return this.fail(path, `must be an absolute path pattern (starting with / or *), not ${describe(value)}${absolute}`);
    }
    try {
      return compileGlob(value);
    } catch (e) {
      return this.fail(path, `is not a valid glob: ${(e as Error).message}`);
    }
  }
}

function checkUser(c: Checker, value: unknown, path: Path): UserSpec | undefined {
  if (typeof value === 'number') {
    if (Number.isInteger(value) && value >= 0 && value < 0xffffffff) return { uid: value };
    return c.fail(path, `must be a user name or a uid 0..4294967294, not ${describe(value)}`);
  }
  if (typeof value === 'string') {
    if (/^\d+$/.test(value) && Number(value) < 0xffffffff) return { uid: Number(value) };
    if (USER_NAME_RE.test(value)) return { name: value };
  }
  return c.fail(path, `must be a user name or a uid 0..4294967294, not ${describe(value)}`);
}

const PERCENT_RE = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/;

function checkLimit(c: Checker, value: unknown, path: Path): MemoryLimitSpec | undefined {
  const must = 'must be a size in bytes (a number, or a string with K, M, G or T) or a share of the GPU ("40%")';
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value) && value >= 1) return { kind: 'bytes', bytes: BigInt(value) };
    return c.fail(path, `${must}, at least 1 byte, not ${describe(value)}`);
  }
  if (typeof value !== 'string') return c.fail(path, `${must}, not ${describe(value)}`);
  const pct = PERCENT_RE.exec(value);
  if (pct !== null) {
    const percent = Number(pct[1]);
    if (percent > 0 && percent <= 100) return { kind: 'percent', percent };
    return c.fail(path, `must be a share above 0% and at most 100%, not ${describe(value)}`);
  }
  let bytes: bigint;
  try {
    bytes = parseBytes(value);
  } catch (e) {
    return c.fail(path, `${must}: ${(e as Error).message}`);
  }
  if (bytes < 1n) return c.fail(path, `${must}, at least 1 byte, not ${describe(value)}`);
  return { kind: 'bytes', bytes };
}

function checkMatch(c: Checker, value: unknown, path: Path): PolicyMatch | undefined {
  const o = c.object(value, path, MATCH_KEYS, `an object with at least one of ${MATCH_KEYS.join(', ')}`);
  if (o === undefined) return undefined;
  if (Object.keys(o).length === 0) {
    return c.fail(path, `is empty: give at least one of ${MATCH_KEYS.join(', ')} (to match every process: "comm": "*")`);
  }
  const m: PolicyMatch = {};
  if (o.comm !== undefined) m.comm = c.glob(o.comm, [...path, 'comm'], undefined);
  if (o.exe !== undefined) m.exe = c.glob(o.exe, [...path, 'exe'], ' (to match a process name use comm)');
  if (o.cgroup !== undefined) m.cgroup = c.glob(o.cgroup, [...path, 'cgroup'], ' (a cgroup v2 path, as in /proc/PID/cgroup)');
  if (o.user !== undefined) m.user = checkUser(c, o.user, [...path, 'user']);
  if (o.gpu !== undefined) {
    if (typeof o.gpu === 'number' && Number.isInteger(o.gpu) && o.gpu >= 0 && o.gpu <= MAX_GPU_INDEX) m.gpu = o.gpu;
    else c.fail([...path, 'gpu'], `must be a GPU index, an integer 0..${MAX_GPU_INDEX}, not ${describe(o.gpu)}`);
  }
  return m;
}

function checkApply(c: Checker, value: unknown, path: Path): PolicyApply | undefined {
  const o = c.object(value, path, APPLY_KEYS, `an object with any of ${APPLY_KEYS.join(', ')}`);
  if (o === undefined) return undefined;
  const a: PolicyApply = {};
  if (o.class !== undefined) {
    if (typeof o.class === 'string' && (POLICY_CLASSES as readonly string[]).includes(o.class)) a.class = o.class as PolicyClass;
    else c.fail([...path, 'class'], `must be one of ${POLICY_CLASSES.join(', ')}, not ${describe(o.class)}`);
  }
  if (o.priority !== undefined) {
    if (typeof o.priority === 'number' && Number.isInteger(o.priority) && o.priority >= 0 && o.priority <= 15) a.priority = o.priority;
    else c.fail([...path, 'priority'], `must be an integer 0..15, not ${describe(o.priority)}`);
  }
  const mode = o['memory.mode'];
  if (mode !== undefined) {
    if (mode === 'oom' || mode === 'swap') a.memoryMode = mode;
    else c.fail([...path, 'memory.mode'], `must be oom or swap, not ${describe(mode)}`);
  }
  if (o['memory.limit'] !== undefined) a.memoryLimit = checkLimit(c, o['memory.limit'], [...path, 'memory.limit']);
  return a;
}

/** Checks the text of a policy file; `file` names it in messages. Throws PolicyFileError. */
export function parsePolicy(text: string, file: string): Policy {
  let doc: unknown;
  try {
    doc = parseJsonStrict(text.replace(/^\uFEFF/, ''));
  } catch (e) {
    if (e instanceof JsonDuplicateKeyError) throw new PolicyFileError(file, [`${formatPath(e.path)} ${e.message}`]);
    throw new PolicyFileError(file, [`is not valid JSON: ${(e as Error).message}`]);
  }
  const c = new Checker();
  const top = c.object(doc, [], TOP_KEYS, 'an object with "rules"');
  const rules: PolicyRule[] = [];
  if (top !== undefined) {
    if (top.version !== undefined && top.version !== POLICY_VERSION) {
      c.fail(['version'], `must be ${POLICY_VERSION} (the only version this gvmd reads), not ${describe(top.version)}`);
    }
    c.comment(top.comment, ['comment']);
    if (top.rules === undefined) c.fail(['rules'], 'is missing: the file must hold "rules": [...]');
    else if (!Array.isArray(top.rules)) c.fail(['rules'], `must be an array of rules, not ${describe(top.rules)}`);
    else {
      const names = new Map<string, number>();
      top.rules.forEach((raw: unknown, index: number) => {
        const path = ['rules', index];
        const r = c.object(raw, path, RULE_KEYS, 'an object with name, match and apply');
        if (r === undefined) return;
        c.comment(r.comment, [...path, 'comment']);
        let name: string | undefined;
        if (typeof r.name !== 'string' || !NAME_RE.test(r.name)) {
          c.fail([...path, 'name'], `must be 1..64 letters, digits, '.', '_' or '-' (starting with a letter or digit), not ${describe(r.name)}`);
        } else if (names.has(r.name)) {
          c.fail([...path, 'name'], `${describe(r.name)} is already the name of rules[${names.get(r.name)}]`);
        } else {
          name = r.name;
          names.set(name, index);
        }
        const match = r.match === undefined ? c.fail([...path, 'match'], 'is missing') : checkMatch(c, r.match, [...path, 'match']);
        const apply = r.apply === undefined ? c.fail([...path, 'apply'], 'is missing') : checkApply(c, r.apply, [...path, 'apply']);
        if (name !== undefined && match !== undefined && apply !== undefined) rules.push({ name, index, match, apply });
      });
    }
  }
  if (c.problems.length > 0) throw new PolicyFileError(file, c.problems);
  return { file, rules };
}

/** Reads and checks a policy file. PolicyFileError when invalid; EGVM_NOT_FOUND / _PERMISSION / _IO when unreadable. */
export function loadPolicy(file: string): Policy {
  let text: string;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      if (size > MAX_FILE_BYTES) throw new PolicyFileError(file, [`is ${size} bytes; a policy file may hold at most 1 MiB`]);
      text = fs.readFileSync(fd, 'utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    if (e instanceof GvmError) throw e;
    throw fromSystemError(e, `${file}: cannot read the policy file`);
  }
  return parsePolicy(text, file);
}

// --- printing ---------------------------------------------------------------------------------

export function describeLimit(spec: MemoryLimitSpec): string {
  return spec.kind === 'percent' ? `${spec.percent}% of the GPU` : formatBytes(spec.bytes);
}

export function describeUser(user: UserSpec, lookup?: (name: string) => number | undefined): string {
  if ('uid' in user) return `uid ${user.uid}`;
  if (lookup === undefined) return user.name;
  const uid = lookup(user.name);
  return uid === undefined ? `${user.name} (no such user now)` : `${user.name} (uid ${uid})`;
}

export function describeMatch(m: PolicyMatch, lookup?: (name: string) => number | undefined): string {
  const parts: string[] = [];
  if (m.comm !== undefined) parts.push(`comm ${JSON.stringify(m.comm.source)}`);
  if (m.exe !== undefined) parts.push(`exe ${JSON.stringify(m.exe.source)}`);
  if (m.user !== undefined) parts.push(`user ${describeUser(m.user, lookup)}`);
  if (m.cgroup !== undefined) parts.push(`cgroup ${JSON.stringify(m.cgroup.source)}`);
  if (m.gpu !== undefined) parts.push(`on GPU ${m.gpu}`);
  return parts.join(' and ');
}

export function describeApply(a: PolicyApply): string {
  const parts: string[] = [];
  if (a.class !== undefined) parts.push(`class ${a.class}`);
  if (a.priority !== undefined) parts.push(`priority ${a.priority}`);
  if (a.memoryMode !== undefined) parts.push(`memory.mode ${a.memoryMode}`);
  if (a.memoryLimit !== undefined) parts.push(`memory.limit ${describeLimit(a.memoryLimit)}`);
  return parts.length === 0 ? 'nothing (the process is left as it is, and no later rule applies)' : parts.join(', ');
}

/** Things that are valid but probably not meant: unknown users, rules an earlier rule hides. */
export function policyWarnings(policy: Policy, lookup: (name: string) => number | undefined): string[] {
  const out: string[] = [];
  const seen = new Map<string, string>();
  for (const r of policy.rules) {
    const where = `rules[${r.index}]`;
    if (r.match.user !== undefined && 'name' in r.match.user && lookup(r.match.user.name) === undefined) {
      out.push(`${where}.match.user: there is no user '${r.match.user.name}' now; the rule matches once there is`);
    }
    const key = describeMatch(r.match);
    const earlier = seen.get(key);
    if (earlier !== undefined) out.push(`${where} ('${r.name}') never applies: rule '${earlier}' matches the same processes first`);
    else seen.set(key, r.name);
  }
  return out;
}

/** A warning when others than the owner may write the file: whoever can, steers every process. */
export function permissionWarning(file: string): string | undefined {
  let mode: number;
  try {
    mode = fs.statSync(file).mode;
  } catch {
    return undefined;
  }
  const who = [mode & 0o020 ? 'its group' : '', mode & 0o002 ? 'every user' : ''].filter((w) => w !== '').join(' and ');
  if (who === '') return undefined;
  return `${file} is writable by ${who}: whoever can write it sets every process's class, priority and memory limit (chmod go-w)`;
}

/** The rules as `gvmd --check-policy` prints them; `extra`: more warnings (see permissionWarning). */
export function formatPolicy(policy: Policy, lookup?: (name: string) => number | undefined, extra: readonly string[] = []): string {
  const n = policy.rules.length;
  const lines = [`${policy.file}: valid, ${n} rule${n === 1 ? '' : 's'} (the first rule that matches a process on a GPU applies)`];
  const width = String(n).length;
  for (const r of policy.rules) {
    lines.push(`${String(r.index + 1).padStart(width + 2)}. ${r.name}`);
    lines.push(`${' '.repeat(width + 4)}match  ${describeMatch(r.match, lookup)}`);
    lines.push(`${' '.repeat(width + 4)}apply  ${describeApply(r.apply)}`);
  }
  const warnings = [...extra, ...(lookup === undefined ? [] : policyWarnings(policy, lookup))];
  if (warnings.length > 0) lines.push('warnings:', ...warnings.map((w) => `  ${w}`));
  return `${lines.join('\n')}\n`;
}
