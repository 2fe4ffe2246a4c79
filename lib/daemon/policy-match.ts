/**
 * Which rule of a policy a process gets on a GPU: the facts about a process from /proc (name,
 * executable, user, cgroup v2 path, start time), and first-match-wins over the rules.
 */
import * as fs from 'node:fs';

import { PolicyRule } from './policy-file';

/** What a rule can match on, read from /proc/<pid>. */
export interface ProcessFacts {
  pid: number;
  /** /proc/<pid>/stat field 22: with the pid, identifies the process (a reused pid has another) */
  startTime: number;
  /** /proc/<pid>/comm: the process name (at most 15 characters) */
  comm: string;
  /** the target of /proc/<pid>/exe; undefined when it cannot be read */
  exe?: string;
  /** the effective uid (the owner of its control block, the user `gvm ps` shows) */
  uid: number;
  /** the user name of uid, or the uid as a string when it has none */
  user: string;
  /** the cgroup v2 path ("0::/..." in /proc/<pid>/cgroup); undefined on a cgroup v1-only system */
  cgroup?: string;
}

/** Whether every key of the rule's match holds for the process on the GPU with machine index `gpu`. */
export function ruleMatches(rule: PolicyRule, facts: ProcessFacts, gpu: number): boolean {
  const m = rule.match;
  if (m.gpu !== undefined && m.gpu !== gpu) return false;
  if (m.comm !== undefined && !m.comm.test(facts.comm)) return false;
  if (m.exe !== undefined && (facts.exe === undefined || !m.exe.test(facts.exe))) return false;
  if (m.cgroup !== undefined && (facts.cgroup === undefined || !m.cgroup.test(facts.cgroup))) return false;
  if (m.user !== undefined) {
    if ('uid' in m.user ? m.user.uid !== facts.uid : m.user.name !== facts.user) return false;
  }
  return true;
}

/** The first rule that matches (rules are tried in file order), or undefined. */
export function firstMatch(rules: readonly PolicyRule[], facts: ProcessFacts, gpu: number): PolicyRule | undefined {
  return rules.find((r) => ruleMatches(r, facts, gpu));
}

/** uid <-> name from /etc/passwd, read again whenever the file changes (users come and go). */
export class UserDb {
  readonly #file: string;
  #mtimeMs = -1;
  #byUid = new Map<number, string>();
  #byName = new Map<string, number>();

  constructor(file = '/etc/passwd') {
    this.#file = file;
  }

  #load(): void {
    let mtimeMs: number;
    try {
      mtimeMs = fs.statSync(this.#file).mtimeMs;
    } catch {
      mtimeMs = 0;
    }
    if (mtimeMs === this.#mtimeMs) return;
    this.#mtimeMs = mtimeMs;
    this.#byUid = new Map();
    this.#byName = new Map();
    let text = '';
    try {
      text = fs.readFileSync(this.#file, 'utf8');
    } catch {
      // no passwd file: every user is a number
    }
    for (const line of text.split('\n')) {
      const f = line.split(':');
      const uid = Number(f[2]);
      if (f.length < 3 || f[0] === '' || f[2] === '' || !Number.isInteger(uid)) continue;
      if (!this.#byUid.has(uid)) this.#byUid.set(uid, f[0]!);
      if (!this.#byName.has(f[0]!)) this.#byName.set(f[0]!, uid);
    }
  }

  name(uid: number): string {
    this.#load();
    return this.#byUid.get(uid) ?? String(uid);
  }

  uid(name: string): number | undefined {
    this.#load();
    return this.#byName.get(name);
  }
}

/** From /proc/<pid>/stat: the state letter (field 3) and the start time (field 22). */
export interface ProcStat {
  state: string;
  startTime: number;
}

/** /proc/<pid>/stat, or undefined when the process is gone (a zombie counts as gone). */
export function procStat(pid: number, procRoot = '/proc'): ProcStat | undefined {
  try {
    const stat = fs.readFileSync(`${procRoot}/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const state = fields[0] ?? '';
    const startTime = Number(fields[19]);
    if (state === 'Z' || state === 'X' || !Number.isFinite(startTime)) return undefined;
    return { state, startTime };
  } catch {
    return undefined;
  }
}

/** /proc/<pid>/stat field 22, or undefined when the process is gone (a zombie counts as gone). */
export function procStartTime(pid: number, procRoot = '/proc'): number | undefined {
  return procStat(pid, procRoot)?.startTime;
}

/** Stopped by a signal (SIGSTOP, ^Z) or a debugger: its agent cannot answer until it runs again. */
export function isStopped(stat: ProcStat): boolean {
  return stat.state === 'T' || stat.state === 't';
}

function readOr(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * The facts about process `pid` whose start time is `startTime`; undefined when it is gone or the pid
 * now belongs to another process (the start time is checked before and after reading).
 */
export function readProcessFacts(pid: number, startTime: number, users: UserDb, procRoot = '/proc'): ProcessFacts | undefined {
  const dir = `${procRoot}/${pid}`;
  if (procStartTime(pid, procRoot) !== startTime) return undefined;
  const comm = readOr(`${dir}/comm`);
  const status = readOr(`${dir}/status`);
  if (comm === undefined || status === undefined) return undefined;
  let exe: string | undefined;
  try {
    exe = fs.readlinkSync(`${dir}/exe`).replace(/ \(deleted\)$/, '');
  } catch {
    exe = undefined; // a kernel thread, or not ours to read
  }
  const cgroupLine = (readOr(`${dir}/cgroup`) ?? '').split('\n').find((l) => l.startsWith('0::'));
  const uid = Number(/^Uid:\s+\d+\s+(\d+)/m.exec(status)?.[1] ?? NaN);
  if (!Number.isInteger(uid)) return undefined;
  if (procStartTime(pid, procRoot) !== startTime) return undefined;
  const facts: ProcessFacts = { pid, startTime, comm: comm.replace(/\n$/, ''), uid, user: users.name(uid) };
  if (exe !== undefined) facts.exe = exe;
  if (cgroupLine !== undefined) facts.cgroup = cgroupLine.slice(3);
  return facts;
}
