/**
 * gvmd's policy engine: watches the control-block directory (fs.watch plus a periodic rescan, as
 * fs.watch misses events on some file systems) and gives every new process, on each GPU it uses, what
 * the first matching rule of the policy file says, through the library's command path (the one
 * `gvm set` uses; each command waits for the agent's answer).
 *
 * A process is its pid AND its start time, so a reused pid is a new process. Each (process, GPU) is
 * evaluated once; a reload (SIGHUP) evaluates every one again and sends only the settings whose
 * result changed from what gvmd applied last, so a value changed by hand in between stays. A setting
 * the reloaded rules no longer give goes back to its value from before gvmd set it, unless it was
 * changed by hand since. Processes that exit, stale blocks and refusals are logged once and skipped.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { isGvmError } from '../errors';
import { inHostPidNamespace } from '../block-files';
import { Gvm, GvmCommandResult, GvmGpu, GvmProcess } from '../index';
import { native } from '../native';
import { loadPolicy, permissionWarning, Policy } from './policy-file';
import { firstMatch, isStopped, ProcessFacts, procStat, readProcessFacts, UserDb } from './policy-match';
import { resolveApply, Setting, SETTINGS, SettingKey, SettingValue as Value } from './policy-settings';

/** Counters for the metrics endpoint (lib/daemon/metrics.ts). */
export class PolicyStats {
  /** rules in force */
  rules = 0;
  /** rule names in force, in file order */
  ruleNames: string[] = [];
  /** per rule: (process, GPU) evaluations whose settings the agent all accepted */
  readonly applied = new Map<string, number>();
  /** per rule: evaluations with a setting the agent refused or did not answer */
  readonly failed = new Map<string, number>();
  readonly reloads = { ok: 0, invalid: 0 };

  bump(map: Map<string, number>, rule: string): void {
    map.set(rule, (map.get(rule) ?? 0) + 1);
  }
}

export interface PolicyEngineOptions {
  /** The policy file (read again on reload). */
  file: string;
  /** The policy already read from it (else it is read now; an invalid file throws PolicyFileError). */
  policy?: Policy;
  shmDir: string;
  log: (line: string) => void;
  /** Milliseconds between rescans of the block directory (default 500). */
  rescanMs?: number;
  /** How long to wait for an agent's answer (default 5000; memory.limit at least 35000: swap moves). */
  timeoutMs?: number;
  users?: UserDb;
  /** /proc, for tests */
  procRoot?: string;
}

interface GpuRecord {
  /** the policy generation this GPU was last evaluated under */
  generation: number;
  /** what gvmd last applied successfully, per setting */
  applied: Map<SettingKey, Value>;
  /** each setting's value before gvmd first changed it */
  before: Map<SettingKey, Value>;
}

interface ProcessRecord {
  pid: number;
  startTime: number;
  /** its control block's file name ("<pid>", or "<pid>@<namespace>" for a container's process) */
  block: string | undefined;
  /** the name for log lines */
  label: string;
  facts?: ProcessFacts;
  factsGeneration: number;
  /** by CUDA ordinal (the command slot) */
  gpus: Map<number, GpuRecord>;
  /** every GPU it had was evaluated at least once */
  completed: boolean;
  /** a job is working on it */
  busy: boolean;
  /** exited or not manageable: nothing more to do until its block goes */
  done: boolean;
  /** "stopped, waits" was logged */
  stopLogged: boolean;
  /** the setting its agent did not answer: nothing more is sent to it (until a reload) */
  unanswered?: string;
}

/** The process is gone (exited, or its pid belongs to another process now). */
class ProcessGone extends Error {}
/** The process is stopped (SIGSTOP, ^Z, a debugger): try again once it runs. */
class ProcessStopped extends Error {}

const MAX_JOBS = 2; // each waiting command holds one of libuv's 4 pool threads

export class PolicyEngine {
  readonly stats = new PolicyStats();
  readonly #o: Required<Omit<PolicyEngineOptions, 'policy' | 'procRoot'>> & { procRoot: string };
  #policy: Policy;
  #generation = 1;
  readonly #procs = new Map<string, ProcessRecord>();
  /** block files skipped as stale or unreadable (each logged once), by name */
  readonly #skipped = new Set<string>();
  readonly #queue: Array<{ proc: GvmProcess; rec: ProcessRecord }> = [];
  #running = 0;
  #scanning: Promise<void> | undefined;
  #again = false;
  #soon: NodeJS.Timeout | undefined;
  #interval: NodeJS.Timeout | undefined;
  #watcher: fs.FSWatcher | undefined;
  #listError: string | undefined;
  #stopped = false;

  private constructor(options: PolicyEngineOptions, policy: Policy) {
    this.#o = {
      file: options.file,
      shmDir: options.shmDir,
      log: options.log,
      rescanMs: options.rescanMs ?? 500,
      timeoutMs: options.timeoutMs ?? 5000,
      users: options.users ?? new UserDb(),
      procRoot: options.procRoot ?? '/proc',
    };
    this.#policy = policy;
    this.#setStats(policy);
  }

  /** Reads the policy (unless given), starts watching and scans at once. Throws PolicyFileError. */
  static start(options: PolicyEngineOptions): PolicyEngine {
    const engine = new PolicyEngine(options, options.policy ?? loadPolicy(options.file));
    const n = engine.#policy.rules.length;
    engine.#log(`${options.file}: ${rules(n)} in force; watching ${options.shmDir}`);
    engine.#warnPermissions();
    engine.#interval = setInterval(() => {
      engine.#watch();
      void engine.#scan();
    }, engine.#o.rescanMs);
    engine.#interval.unref();
    engine.#watch();
    void engine.#scan();
    return engine;
  }

  get policy(): Policy {
    return this.#policy;
  }

  /**
   * Reads the file again. Valid: its rules replace the old ones and every process is evaluated again
   * (true). Invalid or unreadable: logged, and the old rules stay in force (false).
   */
  reload(): boolean {
    let next: Policy;
    try {
      next = loadPolicy(this.#o.file);
    } catch (e) {
      this.stats.reloads.invalid++;
      this.#log(`reload refused; the ${rules(this.#policy.rules.length)} loaded before stay in force:`);
      for (const line of (e as Error).message.split('\n')) this.#log(`  ${line}`);
      return false;
    }
    const was = this.#policy.rules.length;
    this.#policy = next;
    this.#generation++;
    this.#setStats(next);
    this.stats.reloads.ok++;
    this.#log(`reloaded ${this.#o.file}: ${rules(next.rules.length)} in force (before: ${was})`);
    this.#warnPermissions();
    void this.#scan();
    return true;
  }

  /** Scans now and resolves once every resulting application finished (for tests and tools). */
  async settle(): Promise<void> {
    await this.#scan();
    while (this.#running > 0 || this.#queue.length > 0 || this.#scanning !== undefined) {
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Stops watching; applications in flight finish on their own. */
  stop(): void {
    this.#stopped = true;
    clearInterval(this.#interval);
    clearTimeout(this.#soon);
    this.#watcher?.close();
    this.#watcher = undefined;
    for (const { proc, rec } of this.#queue.splice(0)) {
      proc.close();
      rec.busy = false;
    }
  }

  #warnPermissions(): void {
    const warning = permissionWarning(this.#o.file);
    if (warning !== undefined) this.#log(`warning: ${warning}`);
  }

  #log(line: string): void {
    this.#o.log(`policy: ${line}`);
  }

  #setStats(policy: Policy): void {
    this.stats.rules = policy.rules.length;
    this.stats.ruleNames = policy.rules.map((r) => r.name);
  }

  /** fs.watch on the block directory, (re)started when it is missing or failed. */
  #watch(): void {
    if (this.#watcher !== undefined || this.#stopped) return;
    try {
      const w = fs.watch(this.#o.shmDir, { persistent: false }, () => this.#scanSoon(20));
      w.on('error', () => {
        w.close();
        if (this.#watcher === w) this.#watcher = undefined; // the rescan keeps going; retried on the next tick
      });
      this.#watcher = w;
    } catch {
      // no directory yet (no agent ran): the periodic rescan covers it, and the next tick tries again
    }
  }

  #scanSoon(ms: number): void {
    if (this.#soon !== undefined || this.#stopped) return;
    this.#soon = setTimeout(() => {
      this.#soon = undefined;
      void this.#scan();
    }, ms);
    this.#soon.unref();
  }

  /** One scan at a time; a request during a scan runs another right after it. Never rejects. */
  #scan(): Promise<void> {
    if (this.#scanning !== undefined) {
      this.#again = true;
      return this.#scanning;
    }
    this.#scanning = (async () => {
      try {
        do {
          this.#again = false;
          if (this.#stopped) break;
          try {
            await this.#scanOnce();
          } catch (e) {
            this.#log(`scan failed: ${(e as Error).message}`); // not expected; the next scan tries again
          }
        } while (this.#again);
      } finally {
        this.#scanning = undefined;
      }
    })();
    return this.#scanning;
  }

  async #scanOnce(): Promise<void> {
    const names = await blockNames(this.#o.shmDir);
    let procs: GvmProcess[];
    try {
      procs = await Gvm.processes({ shmDir: this.#o.shmDir });
      this.#listError = undefined;
    } catch (e) {
      const text = isGvmError(e) ? `${e.message} (${e.code})` : String(e);
      if (text !== this.#listError) this.#log(`cannot list the processes: ${text}; retrying`);
      this.#listError = text;
      return;
    }
    // the block files of the processes known (those that exited are reported by their own log line)
    const known = new Set([...this.#procs.values()].map((r) => r.block));
    const seen = new Set<string>();
    for (const proc of procs) {
      let rec: ProcessRecord | undefined;
      try {
        const key = `${proc.pid}:${proc.startTime}`;
        seen.add(key);
        const file = proc._blockFile();
        const block = file === undefined ? undefined : path.basename(file);
        known.add(block);
        rec = this.#procs.get(key);
        if (rec === undefined) {
          rec = {
            pid: proc.pid,
            startTime: proc.startTime,
            block,
            label: commandName(proc.command),
            factsGeneration: 0,
            gpus: new Map(),
            completed: false,
            busy: false,
            done: false,
            stopLogged: false,
          };
          this.#procs.set(key, rec);
        }
        if (rec.busy || rec.done || this.#stopped || !this.#needsWork(rec, proc)) rec = undefined;
      } catch {
        rec = undefined; // the handle failed under us: the next scan sees it again
      }
      if (rec === undefined) {
        proc.close();
        continue;
      }
      rec.busy = true;
      this.#queue.push({ proc, rec });
    }
    for (const [key, rec] of this.#procs) {
      if (seen.has(key) || rec.busy) continue;
      this.#procs.delete(key);
      if (!rec.done && !rec.completed) this.#gone(rec); // exited while starting or stopped
    }
    for (const [name, pid] of names) {
      if (known.has(name) || this.#skipped.has(name)) continue;
      this.#skipped.add(name);
      this.#log(`pid ${pid}: its control block belongs to no live process (or cannot be read); skipped`);
    }
    for (const name of this.#skipped) if (!names.has(name)) this.#skipped.delete(name);
    this.#pump();
  }

  #needsWork(rec: ProcessRecord, proc: GvmProcess): boolean {
    if (rec.factsGeneration !== this.#generation || !rec.completed) return true;
    return proc.gpus.some((g) => rec.gpus.get(g.ordinal)?.generation !== this.#generation);
  }

  #pump(): void {
    while (this.#running < MAX_JOBS && this.#queue.length > 0) {
      const { proc, rec } = this.#queue.shift()!;
      this.#running++;
      void this.#work(proc, rec).finally(() => {
        proc.close();
        rec.busy = false;
        this.#running--;
        this.#pump();
      });
    }
  }

  /** Nothing more for this process; said once, and only when nothing was applied yet. */
  #gone(rec: ProcessRecord): void {
    if (rec.done) return;
    rec.done = true;
    if (!rec.completed) this.#log(`pid ${rec.pid} (${rec.label}): exited before its policy was applied; skipped`);
  }

  #waiting(rec: ProcessRecord): void {
    if (rec.stopLogged) return;
    rec.stopLogged = true;
    this.#log(`pid ${rec.pid} (${rec.label}): stopped (by a signal or a debugger); its policy is applied once it runs again`);
  }

  /** Whether the process still runs (same pid, same start time), and whether it is stopped. */
  #state(rec: ProcessRecord): 'gone' | 'stopped' | 'running' {
    const stat = procStat(rec.pid, this.#o.procRoot);
    if (stat === undefined || stat.startTime !== rec.startTime) return 'gone';
    return isStopped(stat) ? 'stopped' : 'running';
  }

  async #work(proc: GvmProcess, rec: ProcessRecord): Promise<void> {
    try {
      const agentState = proc.agentState;
      if (agentState === 'starting') {
        // its GPUs and control thread come within milliseconds; one stuck there waits for the rescans
        if (Date.now() - proc.createdAt.getTime() < 5000) this.#scanSoon(100);
        return;
      }
      if (agentState === 'exited') {
        rec.done = true; // on its way out
        return;
      }
      if (agentState !== 'ready') {
        rec.done = true;
        this.#log(`pid ${rec.pid} (${rec.label}): its agent is ${agentState} and takes no settings; skipped`);
        return;
      }
      const state = this.#state(rec);
      if (state === 'gone') throw new ProcessGone();
      if (state === 'stopped') throw new ProcessStopped();
      if (rec.factsGeneration !== this.#generation) {
        const facts = readProcessFacts(rec.pid, rec.startTime, this.#o.users, this.#o.procRoot);
        if (facts === undefined) throw new ProcessGone();
        rec.facts = facts;
        rec.label = facts.comm;
        rec.factsGeneration = this.#generation;
        delete rec.unanswered; // a reload tries a silent agent again
      }
      for (const g of proc.gpus) {
        if (rec.done || this.#stopped) return;
        const record = rec.gpus.get(g.ordinal);
        if (record?.generation === this.#generation) continue;
        await this.#evaluate(rec, g, record);
      }
      rec.completed = true;
    } catch (e) {
      if (e instanceof ProcessStopped) return this.#waiting(rec);
      if (e instanceof ProcessGone || this.#state(rec) === 'gone') return this.#gone(rec);
      rec.done = true;
      const text = isGvmError(e) ? `${e.message} (${e.code})` : String(e);
      this.#log(`pid ${rec.pid} (${rec.label}): cannot apply its policy: ${text}; skipped`);
    }
  }

  /** Evaluates the rules for one GPU of a process and sends what changed from what gvmd applied last. */
  async #evaluate(rec: ProcessRecord, g: GvmGpu, previous: GpuRecord | undefined): Promise<void> {
    const record: GpuRecord = previous ?? { generation: 0, applied: new Map(), before: new Map() };
    rec.gpus.set(g.ordinal, record);
    const fresh = record.generation === 0; // never evaluated to the end (else: a reload)
    const generation = this.#generation;
    const index = g.index;
    const rule = firstMatch(this.#policy.rules, rec.facts!, index);
    const wanted = resolveApply(rule?.apply ?? {}, g.totalBytes);

    const sends: Array<{ setting: Setting; value: Value; restore: boolean }> = [];
    for (const setting of SETTINGS) {
      const value = wanted.values.get(setting.key);
      if (value !== undefined) {
        if (record.applied.get(setting.key) !== value) sends.push({ setting, value, restore: false });
        continue;
      }
      const mine = record.applied.get(setting.key);
      if (mine === undefined) continue;
      // the rules no longer give it: put back what was there before, unless someone changed it since
      const before = record.before.get(setting.key);
      record.applied.delete(setting.key);
      record.before.delete(setting.key);
      if (before !== undefined && before !== mine && setting.read(g) === mine) sends.push({ setting, value: before, restore: true });
    }

    const who = `pid ${rec.pid} (${rec.label}) gpu ${index}`;
    const ruleText = `${rule === undefined ? 'no rule matches' : `rule '${rule.name}'`}${fresh ? '' : ' (reload)'}`;
    const done: string[] = [];
    const failures = [...wanted.errors];
    for (const { setting, value, restore } of sends) {
      if (rec.done || this.#stopped) return;
      if (rec.unanswered !== undefined) {
        failures.push(`${setting.show(value)}: not sent, the agent did not answer ${rec.unanswered}`);
        continue;
      }
      if (!restore && !record.before.has(setting.key)) record.before.set(setting.key, setting.read(g));
      const timeoutMs = Math.max(this.#o.timeoutMs, setting.minTimeoutMs);
      try {
        await this.#send(rec, setting.send(g, value, { timeoutMs }));
      } catch (e) {
        const state = e instanceof ProcessGone ? 'gone' : this.#state(rec);
        if (state === 'gone') throw new ProcessGone();
        if (isGvmError(e, 'EGVM_TIMEOUT')) {
          if (state === 'stopped') throw new ProcessStopped(); // what it took so far stays recorded
          rec.unanswered = `${setting.show(value)} on GPU ${index}`;
        }
        failures.push(`${setting.show(value)}: ${isGvmError(e) ? `${e.message} (${e.code})` : String(e)}`);
        continue;
      }
      if (!restore) record.applied.set(setting.key, value);
      const note = wanted.notes.get(setting.key);
      done.push(`${setting.show(value)}${restore ? ' (restored: no rule gives it now)' : note !== undefined ? ` (${note})` : ''}`);
    }
    record.generation = generation;

    if (done.length > 0) this.#log(`${who}: ${ruleText} -> ${done.join(', ')}`);
    else if (fresh && failures.length === 0) this.#log(`${who}: ${rule === undefined ? ruleText : `${ruleText} -> nothing to apply`}`);
    for (const f of failures) this.#log(`${who}: ${ruleText}: not applied: ${f}`);
    if (rule !== undefined && (sends.some((s) => !s.restore) || wanted.errors.length > 0)) {
      this.stats.bump(failures.length > 0 ? this.stats.failed : this.stats.applied, rule.name);
    }
  }

  /** Waits for a command, giving up as soon as the process is gone (the library waits its timeout). */
  async #send(rec: ProcessRecord, command: Promise<GvmCommandResult>): Promise<GvmCommandResult> {
    command.catch(() => undefined); // answered after we stopped waiting: nobody needs it
    let timer: NodeJS.Timeout | undefined;
    const gone = new Promise<never>((_, reject) => {
      timer = setInterval(() => {
        if (this.#state(rec) === 'gone') reject(new ProcessGone());
      }, 100);
    });
    try {
      return await Promise.race([command, gone]);
    } finally {
      clearInterval(timer);
    }
  }
}

function rules(n: number): string {
  return `${n} rule${n === 1 ? '' : 's'}`;
}

/**
 * The block files in `dir` this process can judge, by name, with the pid each names: all of them on
 * the host; in a container, those of its own PID namespace (another container's are not ours).
 */
async function blockNames(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  let entries: string[];
  try {
    entries = await fs.promises.readdir(dir);
  } catch {
    return out;
  }
  const host = inHostPidNamespace();
  const self = native().pidNamespace();
  for (const name of entries) {
    const b = native().parseBlockName(name);
    if (b !== null && (host || b.ns === self)) out.set(name, b.pid);
  }
  return out;
}

/** "python3 serve.py --port 80" -> "python3": a name for log lines until /proc says better. */
function commandName(cmdline: string): string {
  const first = cmdline.split(' ')[0] ?? '';
  return first.slice(first.lastIndexOf('/') + 1) || '?';
}
