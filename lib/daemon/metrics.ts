/**
 * Prometheus metrics of every process under gvm, read from the control blocks at scrape time.
 * prom-client's collect() hooks fill the metrics from one snapshot per scrape.
 */
import * as fs from 'node:fs';

import { Counter, Gauge, Registry } from 'prom-client';

import { Gvm, GvmProcess, histogramPercentile } from '../index';
import type { PolicyStats } from './policy-apply';

const LABELS = ['pid', 'gpu', 'user', 'command'] as const;

export interface MetricsOptions {
  shmDir?: string;
  /** gvmd's policy engine (--policy): its rules and applications are exported too */
  policy?: PolicyStats;
}

export interface GvmMetrics {
  registry: Registry;
  /** Reads every block once; call before each scrape (prom-client collects metrics concurrently). */
  refresh(): Promise<void>;
}

export function createMetrics(options: MetricsOptions = {}): GvmMetrics {
  const registry = new Registry();
  let snapshot: Array<{ labels: Record<(typeof LABELS)[number], string>; proc: GvmProcess; gpu: number }> = [];

  const gauge = (name: string, help: string, value: (p: GvmProcess, ordinal: number) => number): void => {
    new Gauge({
      name,
      help,
      labelNames: LABELS,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of snapshot) this.set(s.labels, value(s.proc, s.gpu));
      },
    });
  };
  const counter = (name: string, help: string, value: (p: GvmProcess, ordinal: number) => number): void => {
    new Counter({
      name,
      help,
      labelNames: LABELS,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of snapshot) this.inc(s.labels, value(s.proc, s.gpu));
      },
    });
  };

  let processCount = 0;
  const refresh = async (): Promise<void> => {
    snapshot.forEach((s) => s.proc.close());
    snapshot = [];
    const procs = await Gvm.processes({ shmDir: options.shmDir });
    processCount = procs.length;
    for (const proc of procs) {
      if (proc.gpus.length === 0) proc.close();
      for (const g of proc.gpus) {
        const command = proc.command.length > 120 ? `${proc.command.slice(0, 117)}...` : proc.command;
        snapshot.push({ proc, gpu: g.ordinal, labels: { pid: String(proc.pid), gpu: String(g.index), user: proc.user, command } });
      }
    }
  };
  new Gauge({
    name: 'gvm_processes',
    help: 'Processes running under the gvm agent',
    registers: [registry],
    collect() {
      this.set(processCount);
    },
  });
  gauge('gvm_memory_used_bytes', 'Device memory the process holds on the GPU (memory.current)', (p, o) => p.gpu(o).memory.current);
  gauge('gvm_memory_limit_bytes', 'The memory limit in force (memory.limit)', (p, o) => p.gpu(o).memory.limit);
  gauge('gvm_memory_swap_bytes', 'Device allocations living in host memory (memory.swap.current)', (p, o) => p.gpu(o).memory.swapCurrent);
  gauge('gvm_compute_priority', 'Compute priority 0..15, lower is more important', (p, o) => p.gpu(o).compute.priority);
  gauge('gvm_compute_frozen', '1 while the process is frozen on the GPU', (p, o) => (p.gpu(o).compute.frozen ? 1 : 0));
  counter('gvm_kernels_submitted_total', 'Kernels the process launched on the GPU', (p, o) => p.gpu(o).kernels.submitted);
  counter('gvm_kernels_ended_total', 'Kernels known to have finished', (p, o) => p.gpu(o).kernels.ended);
  gauge('gvm_kernels_pending', 'Kernels launched and not yet finished', (p, o) => p.gpu(o).kernels.pending);

  // the automatic policy: what it did to each process (gvm top shows the same)
  counter('gvm_bursts_total', 'Latency class: idle -> busy transitions the process published', (p, o) => p.gpu(o).policy.bursts);
  counter('gvm_holds_total', 'Best-effort class: times the policy held the process for a busier, more important one', (p, o) => p.gpu(o).policy.holds);
  counter('gvm_held_seconds_total', 'Best-effort class: time held (closed holds)', (p, o) => p.gpu(o).policy.heldMs / 1e3);
  gauge('gvm_held', '1 while the policy holds the process', (p, o) => (p.gpu(o).policy.held ? 1 : 0));
  gauge('gvm_memory_lent_bytes', 'Best-effort class in swap mode: memory moved to the host for a more important process', (p, o) => p.gpu(o).policy.memoryLent);
  counter('gvm_memory_lend_waits_total', 'Latency class: allocations that waited for memory lent by best-effort processes', (p, o) => p.gpu(o).policy.memoryWaits);
  new Gauge({
    name: 'gvm_hold_chain_seconds',
    help: "Best-effort class: from a burst's first launch to the process's work stopped (part=total), and its parts: the wake " +
      "(until its policy thread acted) and the RM controls; quantiles over the process's life, upper edges of 100-us buckets",
    labelNames: [...LABELS, 'part', 'quantile'],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of snapshot) {
        const pol = s.proc.gpu(s.gpu).policy;
        if (pol.class !== 'best-effort' || pol.holds === 0) continue;
        const parts = { total: pol.chainHistogram, wake: pol.chainParts.wakeHistogram, rm: pol.chainParts.rmHistogram };
        for (const [part, hist] of Object.entries(parts)) {
          for (const q of [0.5, 0.99]) {
            const us = histogramPercentile(hist, q);
            if (us !== null) this.set({ ...s.labels, part, quantile: String(q) }, us / 1e6);
          }
        }
      }
    },
  });

  // GPU totals, summed over the processes that see each GPU
  const perGpu = (name: string, help: string, value: (p: GvmProcess, ordinal: number) => number, once = false): void => {
    new Gauge({
      name,
      help,
      labelNames: ['gpu'],
      registers: [registry],
      collect() {
        this.reset();
        const sums = new Map<string, number>();
        for (const s of snapshot) {
          const v = value(s.proc, s.gpu);
          sums.set(s.labels.gpu, once ? v : (sums.get(s.labels.gpu) ?? 0) + v);
        }
        for (const [gpu, v] of sums) this.set({ gpu }, v);
      },
    });
  };
  perGpu('gvm_gpu_memory_total_bytes', 'The GPU\'s device memory', (p, o) => p.gpu(o).totalBytes, true);
  perGpu('gvm_gpu_memory_used_bytes', 'Device memory held by processes under gvm', (p, o) => p.gpu(o).memory.current);
  perGpu('gvm_gpu_memory_swap_bytes', 'Their allocations living in host memory', (p, o) => p.gpu(o).memory.swapCurrent);
  perGpu('gvm_gpu_processes', 'Processes under gvm using the GPU', () => 1);
  perGpu('gvm_gpu_kernels_pending', 'Kernels launched on the GPU and not yet finished, over its processes', (p, o) => p.gpu(o).kernels.pending);
  new Gauge({
    name: 'gvm_gpu_info',
    help: 'The GPU\'s name and UUID (always 1)',
    labelNames: ['gpu', 'name', 'uuid'],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of snapshot) {
        const g = s.proc.gpu(s.gpu);
        this.set({ gpu: s.labels.gpu, name: g.name, uuid: g.uuid }, 1);
      }
    },
  });
  new Gauge({
    name: 'gvm_process_info',
    help: "Where a process under gvm runs (always 1): its cgroup v2 path (a container's or pod's, to join with their metrics) and, for a process in another PID namespace, its pid there and that namespace's inode",
    labelNames: ['pid', 'cgroup', 'container_pid', 'pid_namespace'],
    registers: [registry],
    collect() {
      this.reset();
      const seen = new Set<number>();
      for (const s of snapshot) {
        if (seen.has(s.proc.pid)) continue;
        seen.add(s.proc.pid);
        const c = s.proc.container;
        this.set(
          { pid: s.labels.pid, cgroup: cgroupOf(s.proc.pid), container_pid: c ? String(c.pid) : '', pid_namespace: c ? String(c.pidNamespace) : '' },
          1,
        );
      }
    },
  });
  if (options.policy !== undefined) policyMetrics(registry, options.policy);
  return { registry, refresh };
}

/** The cgroup v2 path of a process ("0::/..." in /proc/<pid>/cgroup), '' when unknown. */
function cgroupOf(pid: number): string {
  try {
    const line = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
    return line === undefined ? '' : line.slice(3);
  } catch {
    return '';
  }
}

/** The policy file's engine: rules in force, applications and failures per rule, reloads. */
function policyMetrics(registry: Registry, stats: PolicyStats): void {
  new Gauge({
    name: 'gvm_policy_rules',
    help: 'Rules of the policy file in force',
    registers: [registry],
    collect() {
      this.set(stats.rules);
    },
  });
  const perRule = (name: string, help: string, counts: ReadonlyMap<string, number>): void => {
    new Counter({
      name,
      help,
      labelNames: ['rule'],
      registers: [registry],
      collect() {
        this.reset();
        // every rule in force shows, at 0 until it is used; rules dropped by a reload keep their count
        for (const rule of stats.ruleNames) this.inc({ rule }, 0);
        for (const [rule, n] of counts) this.inc({ rule }, n);
      },
    });
  };
  perRule('gvm_policy_rule_applied_total', 'Process GPUs a rule was applied to, every setting accepted', stats.applied);
  perRule('gvm_policy_rule_failed_total', 'Process GPUs where a setting of the rule was refused or not answered', stats.failed);
  new Counter({
    name: 'gvm_policy_reloads_total',
    help: 'Reloads of the policy file (SIGHUP): ok, or invalid (the rules before stay in force)',
    labelNames: ['result'],
    registers: [registry],
    collect() {
      this.reset();
      this.inc({ result: 'ok' }, stats.reloads.ok);
      this.inc({ result: 'invalid' }, stats.reloads.invalid);
    },
  });
}
