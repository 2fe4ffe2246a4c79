#!/usr/bin/env python3
"""Runs the launch-overhead benchmarks alternating without and with the agent (A B A B ...) and
reports the added cost per launch.

Each pair runs: launch (A), launch (B), torch_step (A), torch_step (B), where A = no agent and
B = LD_PRELOAD=<agent>. Every benchmark process prints RESULT lines that are already medians of
several repetitions; across the pairs the median again is taken, and also the median of the paired
differences (B_i - A_i), which is less sensitive to drift of the machine over the run.

Writes JSON to bench/results/launch-overhead.json and, when $OUT is set, to $OUT/launch-overhead.json
and $OUT/launch-overhead.md. Exit 1 if a run fails or the agent was not mapped into an agent run;
with --strict also when a target is missed. Normally started by bench/launch-overhead/run.sh.
"""

import argparse
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

# variant -> (unit, description, target kind)
VARIANTS = {
    "driver_burst": ("ns/launch", "cuLaunchKernel, bursts of 128 (pure host submit cost)", "launch"),
    "driver_submit": ("ns/launch", "cuLaunchKernel x N back to back, loop time only", "launch"),
    "driver_total": ("ns/launch", "cuLaunchKernel x N incl. final sync", None),
    "runtime_submit": ("ns/launch", "kernel<<<>>> x N (runtime -> cuGetProcAddress path)", "launch"),
    "runtime_total": ("ns/launch", "kernel<<<>>> x N incl. final sync", None),
    "graph_submit": ("ns/launch", "cuGraphLaunch of a 1-kernel graph x N/10", "launch"),
    "graph_total": ("ns/launch", "cuGraphLaunch x N/10 incl. final sync", None),
    "torch_step": ("ms/step", "PyTorch step: 300 elementwise + 4 small matmuls", "step"),
}
TARGET_NS = 300.0
TARGET_STEP_PCT = 1.0


def say(msg):
    print(f"[launch-overhead] {msg}", flush=True)


def strip_agent(preload):
    return " ".join(p for p in preload.replace(":", " ").split() if "libgvm" not in p)


def run_proc(cmd, env, timeout):
    """Run with output captured through a temp file, in its own process group, killed on timeout."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=ROOT, start_new_session=True)
        timed_out = False
        try:
            rc = p.wait(timeout=max(1, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = p.poll()
        f.seek(0)
        text = f.read()
    return rc, timed_out, time.monotonic() - t0, text


def parse(text):
    res, agent, device = {}, None, None
    for line in text.splitlines():
        if line.startswith("RESULT "):
            d = dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", line))
            val = d.get("ns") or d.get("ms")
            if d.get("variant") and val is not None:
                res[d["variant"]] = {"value": float(val), "raw": d}
        elif line.startswith("AGENT "):
            agent = "loaded=1" in line
        elif line.startswith("DEVICE ") and device is None:
            device = line[len("DEVICE "):]
    return res, agent, device


def fmt(v, unit):
    if v is None:
        return "n/a"
    return f"{v:.1f} ns" if unit.startswith("ns") else f"{v:.3f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--launch", default=os.path.join(ROOT, "build/bench/launch"),
                    help="the built launch.cu binary")
    ap.add_argument("--agent", default=os.environ.get("GVM_AGENT",
                                                      os.path.join(ROOT, "build/Release/libgvm.so")))
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs (>= 3 recommended)")
    ap.add_argument("--n", type=int, default=200000, help="launches per repetition")
    ap.add_argument("--reps", type=int, default=5, help="repetitions inside one launch process")
    ap.add_argument("--torch-measures", type=int, default=20)
    ap.add_argument("--torch-steps", type=int, default=50, help="steps per torch measurement")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per benchmark process")
    ap.add_argument("--deadline", type=float, default=420, help="seconds for everything")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench/results/launch-overhead.json"))
    args = ap.parse_args()
    args.agent = os.path.abspath(args.agent)
    t_start = time.monotonic()

    for path, what in ((args.launch, "launch binary (bash bench/launch-overhead/run.sh builds it)"),
                       (args.agent, "agent")):
        if not os.path.isfile(path):
            say(f"ERROR: {what} not found: {path}")
            return 1

    base = dict(os.environ)
    pre = strip_agent(base.get("LD_PRELOAD", ""))
    if pre:
        base["LD_PRELOAD"] = pre
    else:
        base.pop("LD_PRELOAD", None)
    base.pop("GVM_CHECK_MEMORY", None)
    base["PYTHONDONTWRITEBYTECODE"] = "1"

    def env_for(agent):
        env = dict(base)
        if agent:
            env["LD_PRELOAD"] = " ".join(filter(None, [args.agent, base.get("LD_PRELOAD", "")]))
        return env

    benches = [("launch", [args.launch, "--n", str(args.n), "--reps", str(args.reps)])]
    if not args.skip_torch:
        benches.append(("torch_step", [sys.executable, os.path.join(HERE, "torch_step.py"),
                                       "--measures", str(args.torch_measures),
                                       "--steps-per-measure", str(args.torch_steps)]))

    values = {}  # variant -> {"without": [...], "with": [...]}
    runs, errors, device, kernels_per_step = [], [], {}, None
    schedule = [(pair, bname, cmd, agent) for pair in range(args.pairs) for bname, cmd in benches
                for agent in (False, True)]
    for pair, bname, cmd, agent in schedule:
        tag = "with" if agent else "without"
        left = args.deadline - (time.monotonic() - t_start)
        if left < 15:
            errors.append(f"deadline ({args.deadline:.0f}s) reached before pair {pair + 1} "
                          f"{bname} {tag} agent; stopped")
            say(f"ERROR: {errors[-1]}")
            break
        say(f"pair {pair + 1}/{args.pairs}: {bname} {tag} agent")
        rc, to, wall, text = run_proc(cmd, env_for(agent), min(args.timeout, left))
        res, loaded, dev = parse(text)
        if dev:
            device[bname] = dev
        run = {"pair": pair + 1, "bench": bname, "agent": agent, "rc": rc, "timed_out": to,
               "wall_s": round(wall, 2), "agent_loaded": loaded,
               "results": {k: v["value"] for k, v in res.items()},
               "output_tail": "\n".join(text.splitlines()[-30:])}
        runs.append(run)
        if rc != 0 or not res:
            errors.append(f"{bname} {tag} agent (pair {pair + 1}) failed rc={rc}"
                          f"{' (timed out)' if to else ''}")
            say(f"ERROR: {errors[-1]}; last output:\n{run['output_tail']}")
            continue
        if agent and not loaded:
            errors.append(f"{bname}: libgvm.so was not mapped in the agent run "
                          f"(pair {pair + 1}); LD_PRELOAD={env_for(True)['LD_PRELOAD']}")
            say(f"ERROR: {errors[-1]}")
        if not agent and loaded:
            errors.append(f"{bname}: libgvm.so mapped in a run without the agent")
            say(f"ERROR: {errors[-1]}")
        for k, v in res.items():
            values.setdefault(k, {"without": {}, "with": {}})[tag][pair] = v["value"]
            if k == "torch_step":
                kernels_per_step = int(v["raw"].get("kernels_per_step", 0)) or None
        say("  " + ", ".join(f"{k}={v['value']:g}" for k, v in res.items()) + f" ({wall:.1f}s)")

    table = ["| variant | without | with | added per launch (ns) | slowdown % | target |",
             "|---|---|---|---|---|---|"]
    summary = {}
    missed = []
    for name, (unit, desc, target) in VARIANTS.items():
        if name not in values:
            continue
        va, vb = values[name]["without"], values[name]["with"]
        common = sorted(set(va) & set(vb))
        if not common:
            continue
        a, b = [va[p] for p in sorted(va)], [vb[p] for p in sorted(vb)]
        ma, mb = statistics.median(a), statistics.median(b)
        paired = statistics.median([vb[p] - va[p] for p in common])
        slowdown = (mb / ma - 1) * 100 if ma else None
        if unit.startswith("ns"):
            added_ns = paired
        else:
            added_ns = paired * 1e6 / kernels_per_step if kernels_per_step else None
        met = None
        tgt = "-"
        if target == "launch":
            met = added_ns is not None and added_ns <= TARGET_NS
            tgt = f"<= {TARGET_NS:.0f} ns: {'met' if met else '**MISSED**'}"
        elif target == "step":
            met = slowdown is not None and slowdown <= TARGET_STEP_PCT
            tgt = f"<= {TARGET_STEP_PCT:g}%: {'met' if met else '**MISSED**'}"
        if met is False:
            missed.append(name)
        summary[name] = {"unit": unit, "description": desc, "without": a, "with": b,
                         "without_median": ma, "with_median": mb, "added_paired_median": paired,
                         "added_ns_per_launch": added_ns, "slowdown_pct": slowdown, "target": tgt,
                         "met": met}
        per = "n/a" if added_ns is None else f"{added_ns:+.1f}"
        sd = "n/a" if slowdown is None else f"{slowdown:+.2f}"
        table.append(f"| {name} | {fmt(ma, unit)} | {fmt(mb, unit)} | {per} | {sd} | {tgt} |")

    notes = [
        "",
        f"A/B pairs: {args.pairs}; launch: N={args.n} launches x {args.reps} repetitions per process "
        f"(graph variants N/10); "
        + ("torch_step skipped." if args.skip_torch else
           f"torch_step: {args.torch_measures} x {args.torch_steps} steps, "
           f"~{kernels_per_step or '?'} kernels/step (nominal: 1 per op; cuBLAS may add some)."),
        "without/with = median over the pairs of each process's median; added = median of the paired "
        "differences (with - without), per launch (torch_step: per kernel of the step); "
        "slowdown = with/without - 1.",
        "*_total variants include waiting for the GPU, so they mostly measure GPU throughput for "
        "empty kernels; *_submit and driver_burst are host-side costs, where an agent's cost shows.",
    ]
    out_doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device, "agent": args.agent, "launch_binary": args.launch,
        "config": {"pairs": args.pairs, "n": args.n, "reps": args.reps,
                   "torch_measures": args.torch_measures, "torch_steps": args.torch_steps,
                   "kernels_per_step": kernels_per_step},
        "targets": {"added_ns_per_launch": TARGET_NS, "torch_step_slowdown_pct": TARGET_STEP_PCT},
        "variants": summary, "missed": missed, "errors": errors, "runs": runs,
    }
    md = "\n".join(["# gvm launch overhead", "", f"- device: {device.get('launch') or device}",
                    f"- agent: `{args.agent}`", ""] + table + notes) + "\n"
    print()
    print("\n".join(table + notes))
    print()
    paths = [args.json]
    if os.environ.get("OUT"):
        paths.append(os.path.join(os.environ["OUT"], "launch-overhead.json"))
    for p in paths:
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        with open(p, "w") as f:
            json.dump(out_doc, f, indent=1)
        say(f"wrote {p}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "launch-overhead.md"), "w") as f:
            f.write(md)
    if errors:
        say(f"FAILED: {len(errors)} error(s): " + "; ".join(errors))
        return 1
    if missed:
        say(f"targets missed: {', '.join(missed)}" + (" (--strict: failing)" if args.strict else ""))
        if args.strict:
            return 1
    say(f"done in {time.monotonic() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
