#!/usr/bin/env python3
"""Runs every GPU workload twice, without and with libgvm.so preloaded, and compares.

A case passes when both runs exit 0, print a RESULT hash, the hashes are bit-identical, and the agent
was really mapped into the agent run. Memory and kernel counters are reported, never failed on;
a gvm memory.current further than 2 MiB + 1% from the allocator's reserved bytes is flagged.

Writes <out>/gpu-suite.md (the table), <out>/gpu-suite.json (everything, incl. log tails) and
<out>/gpu-suite-logs/<case>-<without|with>.log; <out> is $OUT, else build/gpu-suite.
Normally started by test/gpu/run.sh, which builds the agent first.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
MIB = 2**20


class Case:
    def __init__(self, name, script, args=(), alloc_conf=None, what=""):
        self.name, self.script, self.args, self.alloc_conf, self.what = (
            name, script, list(args), alloc_conf, what)


CASES = [
    Case("train_default", "train_loop.py", what="transformer + AdamW, bf16 autocast, native allocator"),
    Case("train_expandable", "train_loop.py", alloc_conf="expandable_segments:True",
         what="same, expandable segments (cuMemCreate/cuMemMap)"),
    Case("train_async", "train_loop.py", alloc_conf="backend:cudaMallocAsync",
         what="same, cudaMallocAsync backend (stream-ordered pools)"),
    Case("cuda_graph", "cuda_graph.py", what="CUDAGraph whole-step capture + make_graphed_callables"),
    Case("cuda_graph_async", "cuda_graph.py", args=["--steps", "100", "--parts", "ac"],
         alloc_conf="backend:cudaMallocAsync",
         what="whole-step + inference graphs with cudaMallocAsync (graph memory nodes)"),
    Case("generate", "generate.py", what="LlamaForCausalLM greedy generate, 64 tokens"),
]
QUICK_ARGS = {"train_loop.py": ["--steps", "12"], "cuda_graph.py": ["--steps", "20"],
              "generate.py": ["--new-tokens", "16"]}


def say(msg):
    print(f"[gpu-suite] {msg}", flush=True)


def fmt_mib(b):
    return "n/a" if b is None else f"{b / MIB:.1f} MiB"


def fmt_signed_mib(b):
    return "n/a" if b is None else f"{b / MIB:+.1f} MiB"


def strip_agent(preload):
    return " ".join(p for p in preload.replace(":", " ").split() if "libgvm" not in p)


def run_proc(cmd, env, log_path, timeout):
    """Run cmd in its own session with output to log_path; kill the whole group on timeout."""
    t0 = time.monotonic()
    with open(log_path, "w") as f:
        f.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        f.flush()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=ROOT, start_new_session=True)
        timed_out = False
        try:
            rc = p.wait(timeout=max(1, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = p.poll()
    wall = time.monotonic() - t0
    with open(log_path, errors="replace") as f:
        text = f.read()
    return rc, timed_out, wall, text


def kv(line):
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", line))


def as_int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def parse_log(text):
    r = {"pid": None, "result": None, "agent_loaded": None, "memcheck": None, "kernels": None,
         "kernels_ended": None, "compute_s": None, "cli_errors": [], "fail": [], "warnings": 0,
         "error_line": None}
    for line in text.splitlines():
        if line.startswith("PID ") and r["pid"] is None:
            r["pid"] = as_int(line.split()[1])
        elif line.startswith("RESULT "):
            r["result"] = line.split()[1]
        elif line.startswith("AGENT "):
            r["agent_loaded"] = kv(line).get("loaded") == "1"
        elif line.startswith("MEMCHECK "):
            d = kv(line)
            r["memcheck"] = {k: (as_int(v) if k not in ("source", "label", "shm") else v)
                             for k, v in d.items()}
            r["memcheck"]["shm"] = as_int(d.get("shm")) if d.get("shm", "").isdigit() else d.get("shm")
        elif line.startswith("KERNELS "):
            r["kernels"] = as_int(line.split()[1])
            r["kernels_ended"] = as_int(kv(line).get("ended"))
        elif line.startswith("TIME "):
            try:
                r["compute_s"] = float(kv(line).get("compute_s"))
            except (TypeError, ValueError):
                pass
        elif line.startswith("GVMCLI_ERROR") or line.startswith("GVMBLOCK_ERROR"):
            r["cli_errors"].append(line)
        elif line.startswith("FAIL:"):
            r["fail"].append(line)
        elif "Warning" in line:
            r["warnings"] += 1
        if re.search(r"(Error|Exception|FAIL:|Segmentation fault|Aborted|core dumped)", line) and \
                not line.startswith(("GVMCLI_ERROR", "GVMBLOCK_ERROR")):
            r["error_line"] = line.strip()[:240]
    return r


def tail(text, n=60):
    return "\n".join(text.splitlines()[-n:])


class Suite:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(os.environ.get("OUT") or os.path.join(ROOT, "build", "gpu-suite"))
        self.logs = os.path.join(self.out, "gpu-suite-logs")
        os.makedirs(self.logs, exist_ok=True)
        self.t_start = time.monotonic()
        self.rows = []
        self.meta = {}
        base = dict(os.environ)
        pre = strip_agent(base.get("LD_PRELOAD", ""))
        if pre:
            base["LD_PRELOAD"] = pre
        else:
            base.pop("LD_PRELOAD", None)
        for k in ("GVM_CHECK_MEMORY", "PYTORCH_CUDA_ALLOC_CONF"):
            base.pop(k, None)
        base.update(CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONHASHSEED="0", PYTHONUNBUFFERED="1",
                    PYTHONDONTWRITEBYTECODE="1",
                    HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                    GVM_CLI=args.cli)
        self.base_env = base

    def remaining(self):
        return self.args.deadline - (time.monotonic() - self.t_start)

    def env_for(self, case, agent):
        env = dict(self.base_env)
        if case.alloc_conf:
            env["PYTORCH_CUDA_ALLOC_CONF"] = case.alloc_conf
        if agent:
            env["LD_PRELOAD"] = " ".join(filter(None, [self.args.agent, env.get("LD_PRELOAD", "")]))
            env["GVM_CHECK_MEMORY"] = "1"
        return env

    def run_one(self, case, agent, tag):
        cmd = [sys.executable, os.path.join(HERE, case.script)] + case.args
        if self.args.quick:
            cmd += QUICK_ARGS.get(case.script, [])
        timeout = min(self.args.timeout, self.remaining())
        log_path = os.path.join(self.logs, f"{case.name}-{tag}.log")
        say(f"{case.name}: run {tag} agent (timeout {timeout:.0f}s) -> {log_path}")
        rc, timed_out, wall, text = run_proc(cmd, self.env_for(case, agent), log_path, timeout)
        r = parse_log(text)
        r.update(rc=rc, timed_out=timed_out, wall_s=round(wall, 2), log=log_path,
                 log_tail=tail(text, 200))
        ok = rc == 0 and r["result"] is not None
        r["ok"] = ok
        if agent and r["pid"] and rc == 0:
            shm = os.path.join(os.environ.get("GVM_SHM_DIR", "/dev/shm/gvm"), str(r["pid"]))
            r["block_left_behind"] = os.path.exists(shm)
        status = "ok" if ok else ("TIMED OUT" if timed_out else f"FAILED rc={rc}")
        say(f"{case.name}: {tag} agent {status} in {wall:.1f}s"
            + (f" result={r['result'][:16]}" if r["result"] else ""))
        if not ok:
            say(f"--- last lines of {log_path} ---\n{tail(text, 40)}\n--- end ---")
        for e in r["cli_errors"]:
            say(f"{case.name}: {e}")
        return r

    def run_case(self, case):
        row = {"case": case.name, "what": case.what, "script": case.script,
               "alloc_conf": case.alloc_conf or "default", "notes": []}
        if self.remaining() < 30:
            row.update(status="not run", identical=False)
            row["notes"].append(f"not run: suite deadline ({self.args.deadline}s) reached")
            say(f"{case.name}: SKIPPED, suite deadline reached")
            return row
        r0 = self.run_one(case, False, "without")
        r1 = self.run_one(case, True, "with") if self.remaining() > 10 else None
        row["without"], row["with"] = r0, r1
        if r1 is None:
            row["notes"].append("agent run not started: suite deadline reached")
        identical = bool(r1 and r0["ok"] and r1["ok"] and r0["result"] == r1["result"])
        row["identical"] = identical
        if r1 and r1["ok"] and not r1["agent_loaded"]:
            row["notes"].append("libgvm.so was NOT mapped in the agent run (LD_PRELOAD ignored?)")
        if r1 and r0["ok"] and r1["ok"] and not identical and self.remaining() > 30:
            say(f"{case.name}: hashes differ; re-running without the agent to tell agent from "
                "workload nondeterminism")
            r0b = self.run_one(case, False, "without-repeat")
            row["without_repeat"] = r0b
            if r0b["ok"] and r0b["result"] != r0["result"]:
                row["notes"].append("the workload is nondeterministic even without the agent")
            elif r0b["ok"]:
                row["notes"].append("without-agent runs agree with each other: the agent changed results")
        for tag, r in (("without", r0), ("with", r1)):
            if r and not r["ok"]:
                row["notes"].append(f"{tag}-agent run failed (rc={r['rc']}"
                                    f"{', timed out' if r['timed_out'] else ''})"
                                    + (f": {r['error_line']}" if r["error_line"] else ""))
        if r1 and r1.get("block_left_behind"):
            row["notes"].append("control block still in GVM_SHM_DIR after the process exited")
        if r1 and r1["cli_errors"]:
            first = r1["cli_errors"][0].split(": ", 1)[-1]
            row["notes"].append(f"{len(r1['cli_errors'])} gvm CLI error(s), first: {first[:160]}")
        passed = identical and bool(r1 and r1["agent_loaded"])
        row["status"] = "pass" if passed else "FAIL"

        mc = (r1 or {}).get("memcheck") or {}
        gvm, reserved, delta = mc.get("gvm"), mc.get("reserved"), mc.get("driver_delta")
        row["memory"] = {"gvm": gvm, "reserved": reserved, "driver_delta": delta,
                         "allocated": mc.get("allocated"), "shm": mc.get("shm"),
                         "source": mc.get("source"), "label": mc.get("label"),
                         "reserved_without_agent": ((r0.get("memcheck") or {}).get("reserved"))}
        if gvm is not None and reserved is not None:
            diff = gvm - reserved
            limit = 2 * MIB + reserved // 100
            row["memory"].update(diff=diff, diff_limit=limit, flagged=abs(diff) > limit)
            if abs(diff) > limit:
                row["notes"].append(
                    f"gvm memory.current differs from reserved by {fmt_signed_mib(diff)} "
                    f"(> 2 MiB + 1%)" + (" - expected for cudaMallocAsync pools"
                                         if "cudaMallocAsync" in (case.alloc_conf or "") else ""))
        elif r1 and r1["ok"]:
            row["notes"].append("no gvm memory.current reading (CLI and control block both failed)")
        if mc.get("source") == "shm":
            row["notes"].append("memory.current shown is read from the control block (CLI failed)")
        if isinstance(mc.get("shm"), int) and isinstance(gvm, int) and mc.get("source") == "cli" \
                and mc["shm"] != gvm:
            row["notes"].append(f"CLI ({gvm}) and control block ({mc['shm']}) disagree")
        row["kernels"] = {"submitted": (r1 or {}).get("kernels"),
                          "ended": (r1 or {}).get("kernels_ended")}
        say(f"{case.name}: {row['status']}" + (f" ({'; '.join(row['notes'])})" if row["notes"] else ""))
        return row

    def table(self):
        hdr = ("| case | identical? | gvm memory.current | allocator reserved | driver delta | diff | "
               "kernels | time without / with agent | notes |")
        lines = [hdr, "|" + "---|" * 9]
        for row in self.rows:
            m = row.get("memory") or {}
            r0, r1 = row.get("without") or {}, row.get("with") or {}
            ident = "yes" if row.get("identical") else "**NO**"
            if row.get("status") == "not run":
                ident = "not run"
            diff = fmt_signed_mib(m.get("diff"))
            if m.get("flagged"):
                diff = f"⚠ {diff}"
            gvm = fmt_mib(m.get("gvm")) + (" (shm)" if m.get("source") == "shm" else "")
            k = row.get("kernels") or {}
            kern = "n/a" if k.get("submitted") is None else str(k["submitted"])

            def t(r):
                if not r.get("wall_s"):
                    return "-"
                c = f" ({r['compute_s']:.1f})" if r.get("compute_s") is not None else ""
                return f"{r['wall_s']:.1f}s{c}"

            notes = "; ".join(row.get("notes") or []).replace("|", "/")
            lines.append(f"| {row['case']} | {ident} | {gvm} | {fmt_mib(m.get('reserved'))} | "
                         f"{fmt_mib(m.get('driver_delta'))} | {diff} | {kern} | "
                         f"{t(r0)} / {t(r1)} | {notes} |")
        return "\n".join(lines)

    def write(self, final=False):
        passed = sum(1 for r in self.rows if r.get("status") == "pass")
        failed = len(self.rows) - passed
        md = [f"# gvm GPU compatibility suite{'' if final else ' (in progress)'}", "",
              f"- GPU: {self.meta.get('gpu', '?')}", f"- torch: {self.meta.get('torch', '?')}",
              f"- agent: `{self.args.agent}`", f"- CLI: `{self.args.cli}` ({self.meta.get('cli', '?')})",
              f"- date: {self.meta.get('date')}", "",
              self.table(), "",
              "identical? = RESULT sha256 of the workload's outputs equal with and without the agent. "
              "gvm memory.current = `gvm get PID memory.current` in the agent run at a checkpoint after "
              "warm-up (after torch.cuda.synchronize()); allocator reserved = "
              "torch.cuda.memory_reserved() at that point; driver delta = used bytes from "
              "cudaMemGetInfo minus the figure right after context creation (includes kernel code, "
              "cuBLAS, graph memory and other processes); diff = gvm - reserved, ⚠ when beyond "
              "2 MiB + 1% of reserved. kernels = `gvm get PID kernels.submitted` at the checkpoint. "
              "time = process wall time (GPU part in parentheses).", "",
              f"{passed} passed, {failed} failed"]
        with open(os.path.join(self.out, "gpu-suite.md"), "w") as f:
            f.write("\n".join(md) + "\n")
        doc = {"final": final, "meta": self.meta, "agent": self.args.agent, "cli": self.args.cli,
               "passed": passed, "failed": failed, "cases": self.rows}
        with open(os.path.join(self.out, "gpu-suite.json"), "w") as f:
            json.dump(doc, f, indent=1, default=str)
        return passed, failed

    def preflight(self):
        self.meta["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            self.meta["gpu"] = q.stdout.strip().splitlines()[0] if q.stdout.strip() else "?"
        except (OSError, subprocess.TimeoutExpired) as e:
            self.meta["gpu"] = f"? ({e})"
        say(f"GPU: {self.meta['gpu']}")
        if not os.path.isfile(self.args.agent):
            say(f"ERROR: agent {self.args.agent} does not exist (run test/gpu/run.sh, which builds it)")
            return False
        say("pre-warm: importing torch and transformers, creating a CUDA context (no agent)")
        code = ("import torch, transformers; assert torch.cuda.is_available(), 'no CUDA for torch'; "
                "torch.zeros(1, device='cuda'); "
                "print('torch', torch.__version__, 'cuda', torch.version.cuda, "
                "'transformers', transformers.__version__, torch.cuda.get_device_name(0))")
        log_path = os.path.join(self.logs, "prewarm.log")
        rc, to, wall, text = run_proc([sys.executable, "-c", code], self.base_env, log_path,
                                      min(180, self.remaining()))
        if rc != 0:
            say(f"ERROR: PyTorch pre-warm failed (rc={rc}, timed out={to}):\n{tail(text, 30)}")
            return False
        self.meta["torch"] = text.strip().splitlines()[-1]
        say(f"pre-warm ok in {wall:.1f}s: {self.meta['torch']}")
        # CLI smoke test (report only)
        cmd = shlex.split(self.args.cli) + ["ps", "--json"]
        env = dict(self.base_env)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
            self.meta["cli"] = f"`gvm ps --json` rc={p.returncode}"
            if p.returncode != 0:
                lines = [ln.strip() for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
                pick = next((ln for ln in lines if "rror" in ln), lines[-1] if lines else "")
                say(f"WARNING: `{' '.join(cmd)}` exited {p.returncode}: {pick[:300]}")
                say("WARNING: workloads will fall back to reading the control block directly")
            else:
                say(f"CLI ok: `{' '.join(cmd)}`")
        except (OSError, subprocess.TimeoutExpired) as e:
            self.meta["cli"] = f"unusable: {e}"
            say(f"WARNING: gvm CLI unusable ({e}); workloads will read the control block directly")
        return True

    def main(self):
        cases = CASES
        if self.args.only:
            want = set(",".join(self.args.only).split(","))
            unknown = want - {c.name for c in CASES}
            if unknown:
                say(f"ERROR: unknown case(s) {sorted(unknown)}; known: {[c.name for c in CASES]}")
                return 2
            cases = [c for c in CASES if c.name in want]
        say(f"output: {self.out}; cases: {', '.join(c.name for c in cases)}; "
            f"deadline {self.args.deadline}s, per-run timeout {self.args.timeout}s")
        if not self.preflight():
            self.write(final=True)
            return 1
        for case in cases:
            self.rows.append(self.run_case(case))
            self.write()
        passed, failed = self.write(final=True)
        print()
        print(self.table())
        print()
        say(f"wrote {os.path.join(self.out, 'gpu-suite.md')} and gpu-suite.json "
            f"({time.monotonic() - self.t_start:.0f}s)")
        print(f"suite: {passed} passed, {failed} failed", flush=True)
        return 0 if failed == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default=os.environ.get("GVM_AGENT",
                                                      os.path.join(ROOT, "build/Release/libgvm.so")))
    ap.add_argument("--cli", default=os.environ.get(
        "GVM_CLI", "node " + os.path.join(ROOT, "dist/cli/gvm.js")),
        help="command that runs the gvm CLI (default: node <repo>/dist/cli/gvm.js)")
    ap.add_argument("--only", action="append", help="comma-separated case names")
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke test)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per workload run")
    ap.add_argument("--deadline", type=float, default=420, help="seconds for the whole suite")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()
    args.agent = os.path.abspath(args.agent)
    if args.list:
        for c in CASES:
            print(f"{c.name:18} {c.script:14} {c.alloc_conf or 'default':28} {c.what}")
        return 0
    return Suite(args).main()


if __name__ == "__main__":
    sys.exit(main())
