"""bench/colocation: a latency-critical LLM server (bench/workloads/llm_server.py) beside a best-effort
training job (LoRA fine-tune or UNet diffusion), every case in one run:

  server-alone   the server by itself (plain python)
  server-agent   the server by itself under `gvm run --class latency` (the agent's own cost)
  be-alone       the best-effort job by itself
  default        both, default time-sharing
  mps            both under NVIDIA MPS (a daemon started for the case)
  gvm-priority   both under gvm run: server priority 0, best-effort 15 (static timeslices)
  gvm-auto       server --class latency, best-effort --class best-effort (the automatic policy)
  gvm-auto-swap  gvm-auto with the best-effort job memory-limited in swap mode and holding a ballast,
                 while the server grows its KV pool (so the server's growth needs the policy to move
                 best-effort memory to the host); the job pre-warms host memory for what it will lend
                 (--prewarm-gb, default the growth + 1 GiB; 0 for none)
  gvm-auto-spin  gvm-auto with GVM_POLICY_SPIN_US=1000000: the best-effort policy thread polls the board
                 while released instead of sleeping on its futex (one CPU core for a shorter hold chain;
                 not in the default list, name it with --cases)
  gvm-auto-onestop  gvm-auto with GVM_RM_STOP=disable: each hold stops the job's channels in one RM
                 control (the RM preempts them itself) instead of a disable, then a preempt per compute
                 TSG (one GSP round trip instead of two or more; not in the default list)
  Variants combine: gvm-auto-swap-onestop is gvm-auto-swap with the one-control stop.

In each two-process case both start together; once both are warm, a start file opens the server's
idle phase (the best-effort job's "server idle" throughput), then its load phase (Poisson arrivals).
Prints a table per job (--job lora|unet, or all: both in turn, the default); writes
bench/results/colocation-<job>.json and .png (latency distributions) for each.
"""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
WORK = os.path.join(ROOT, "bench", "workloads")
CLI = shlex.split(os.environ.get("GVM_CLI", "") or f"node {ROOT}/dist/cli/gvm.js")
PY = os.environ.get("PYTHON") or sys.executable
JOBS = {"lora": "lora_finetune.py", "unet": "unet_diffusion.py"}
CASES = ["server-alone", "server-agent", "be-alone", "default", "mps", "gvm-priority", "gvm-auto", "gvm-auto-swap"]
started = []  # process groups to kill at exit


def say(*a):
    print("[colocation]", *a, flush=True)


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def spawn(cmd, env, log):
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(p)
    return p


def wait_file(path, proc, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[-1] if proc.args else proc} exited with {proc.returncode} before it was ready")
        time.sleep(0.05)
    raise RuntimeError(f"not ready after {timeout} s: {path}")


def stop(proc, timeout=60):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def gvm_get(pid, key):
    r = subprocess.run(CLI + ["get", str(pid), key, "--json"], capture_output=True, text=True, timeout=30)
    return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr.strip()}


def mps(start, d):
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=f"{d}/pipe", CUDA_MPS_LOG_DIRECTORY=f"{d}/log")
    if start:
        os.makedirs(f"{d}/pipe", exist_ok=True)
        os.makedirs(f"{d}/log", exist_ok=True)
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, check=True, timeout=30)
        time.sleep(1)
    else:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=env, timeout=30)
        time.sleep(2)
    return env


def run_case(case, job, a, tmp):
    d = tempfile.mkdtemp(prefix=f"{case}-", dir=tmp)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if case == "mps":
        env.update(mps(True, d))
    gvm = case.startswith("gvm")
    srv_pre = be_pre = []
    srv_args, be_args = [], []
    if case == "server-agent":  # the server alone under the agent: what gvm costs it with nobody beside it
        srv_pre = CLI + ["run", "--class", "latency", "--"]
    elif case == "gvm-priority":
        srv_pre, be_pre = CLI + ["run", "--priority", "0", "--"], CLI + ["run", "--priority", "15", "--"]
    elif case.startswith("gvm-auto"):
        srv_pre = CLI + ["run", "--class", "latency", "--"]
        be_pre = CLI + ["run", "--class", "best-effort", "--idle-ms", str(a.idle_ms)]
        variant = case.split("-")[2:]  # gvm-auto-swap-onestop: both
        if "spin" in variant:
            env["GVM_POLICY_SPIN_US"] = "1000000"
        if "onestop" in variant:
            env["GVM_RM_STOP"] = "disable"
        if "swap" in variant:
            be_pre += ["--memory-mode", "swap", "--memory-limit", a.swap_limit]
            if a.prewarm_gb > 0:  # the job expects to lend the server's growth: its host memory made ahead
                be_pre += ["--swap-prewarm", f"{a.prewarm_gb}G"]
                env["GVM_SWAP_POOL_MIB"] = str(max(16384, int(a.prewarm_gb * 1024)))
            be_args = ["--ballast-gb", str(a.ballast_gb)]
            srv_args = ["--grow-cache-gb", str(a.grow_gb)]
        be_pre = be_pre + ["--"]
    srv = be = None
    res = {"case": case}
    logs = {}
    try:
        if case not in ("server-alone", "server-agent"):
            logs["be"] = open(f"{d}/be.log", "w")
            be = spawn(be_pre + [PY, os.path.join(WORK, JOBS[job]), "--ready", f"{d}/be.ready", "--out", f"{d}/be.json"] + be_args + shlex.split(a.job_args),
                       env, logs["be"])
        if case != "be-alone":
            logs["srv"] = open(f"{d}/srv.log", "w")
            srv = spawn(srv_pre + [PY, os.path.join(WORK, "llm_server.py"), "--rate", str(a.rate), "--duration-s", str(a.duration),
                                   "--idle-s", str(a.idle), "--ready", f"{d}/srv.ready", "--start-file", f"{d}/start",
                                   "--out", f"{d}/srv.json", "--linger-s", "2", "--engine", a.engine] + srv_args + shlex.split(a.server_args),
                    env, logs["srv"])
        be_ready = wait_file(f"{d}/be.ready", be, 240) if be else None
        srv_ready = wait_file(f"{d}/srv.ready", srv, 240) if srv else None
        # the hold chains of the measured phases only: the server's start-up bursts (its graph captures,
        # the job's first holds) are counted apart
        chain0 = {k: gvm_get(be_ready["pid"], k) for k in CHAIN_KEYS} if be and gvm and be_ready else {}
        open(f"{d}/start", "w").close()
        if srv:
            wait_file(f"{d}/srv.json", srv, a.idle + a.duration + 60)
            if gvm:  # the server lingers a moment after its results: read its side of the policy
                res["srv_policy"] = gvm_get(srv_ready["pid"], "policy.stat")
                res["srv_events"] = gvm_get(srv_ready["pid"], "policy.events")
            srv.wait(timeout=30)
        else:
            time.sleep(a.idle + a.duration)
        if be and gvm and be_ready:
            res["be_policy"] = gvm_get(be_ready["pid"], "policy.stat")
            res["be_events"] = gvm_get(be_ready["pid"], "policy.events")
            for k in CHAIN_KEYS:  # the chain, then its parts: the wake and the RM controls
                res["be_" + k.replace("policy.", "").replace(".", "_") + "_measured"] = chain_diff(chain0.get(k), gvm_get(be_ready["pid"], k))
            res["be_memory"] = {k: gvm_get(be_ready["pid"], k) for k in ("memory.current", "memory.swap.current")}
        if be:
            stop(be)
            be = None
    finally:
        for p in (srv, be):
            if p is not None:
                stop(p, 20)
        for f in logs.values():
            f.close()
        if case == "mps":
            mps(False, d)
    if os.path.exists(f"{d}/srv.json"):
        with open(f"{d}/srv.json") as f:
            s = json.load(f)
        ttft = [r["ttft"] * 1e3 for r in s["requests"]]
        tpot = [r["tpot"] * 1e3 for r in s["requests"]]
        res["server"] = {"completed": s["completed"], "arrivals": s["arrivals"], "engine": s.get("engine"),
                         "graph_equals_eager": (s.get("engine_check") or {}).get("graph_equals_eager"),
                         **{f"ttft_p{q}": pct(ttft, q / 100) for q in (50, 90, 99)},
                         **{f"tpot_p{q}": pct(tpot, q / 100) for q in (50, 90, 99)},
                         "itl_p99": pct([g * 1e3 for g in s["gaps"]], 0.99), "grow_ms": s["grow_ms"], "grown_gb": s["grown_gb"],
                         "ttft": ttft, "tpot": tpot}
        t_idle, t_load, t_end = s["t_idle"], s["t_load"], s["t_end"]
    else:
        t_idle = t_load = t_end = None
    if os.path.exists(f"{d}/be.json"):
        with open(f"{d}/be.json") as f:
            b = json.load(f)
        steps = b["steps"]

        def rate(lo, hi):
            # between the first and the last step that ended in the window: counting whole steps over the
            # window's own length was off by up to a step at each edge (~5 % of a 2.5 s idle phase)
            inside = [(t, s) for t, s in steps if lo < t <= hi]
            if len(inside) < 2:
                return None
            return sum(s for _, s in inside[1:]) / (inside[-1][0] - inside[0][0])

        if t_idle is not None:
            res["be"] = {"idle_sps": rate(t_idle + 0.5, t_load), "load_sps": rate(t_load, t_end)}
        else:
            res["be"] = {"alone_sps": rate(steps[3][0], steps[-1][0]) if len(steps) > 5 else None}
        res["be"].update(ballast_ok=b.get("ballast_ok"), ballast_gb=b.get("ballast_gb"), last_losses=b.get("losses"))
    res["logs"] = d
    # the agent's account of its slowest holds (wake, control lock, RM controls) and releases: the logs' folder may
    # not survive the run, so its lines travel with the results
    if os.path.exists(f"{d}/be.log"):
        with open(f"{d}/be.log", errors="replace") as f:
            slow = [line.strip() for line in f if "policy: holding GPU" in line or "policy: releasing GPU" in line]
        if slow:
            res["be_slow_holds"] = slow[-8:]
    return res


def chain_diff(before, after):
    """Chain histogram buckets (lower edge us -> count) gained between two `gvm get policy.chain` reads,
    with their count and percentiles (upper bucket edges, as the agent's own percentiles are)."""
    if not isinstance(before, dict) or not isinstance(after, dict) or "error" in before or "error" in after:
        return None
    gained = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    n = sum(gained.values())

    def pct(q):
        seen = 0
        for edge in sorted(gained):
            seen += gained[edge]
            if seen >= q * n:
                return edge + 100
        return None
    return {"holds": n, "p50_us": pct(0.5) if n else None, "p99_us": pct(0.99) if n else None,
            "max_bucket_us": max(gained) if n else None, "buckets": gained}


def chain_us(v):
    """A chain percentile as the agent's 100-us histogram gives it: its top bucket (3.1 ms up) is open,
    so a percentile there is only known to be at least 3.1 ms (include/gvm/control_block.h)."""
    return f">={CHAIN_OPEN_US}" if v and v > CHAIN_OPEN_US else str(v)


CHAIN_KEYS = ("policy.chain", "policy.chain.wake", "policy.chain.rm")
CHAIN_OPEN_US = 3100  # GVM_CHAIN_BUCKETS (32) - 1 buckets of 100 us


def gpu_total_gib():
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
                       capture_output=True, text=True, timeout=30)
    return float(r.stdout.strip()) / 1024


def gpu_name():
    r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"], capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def fmt(x, n=1):
    return "-" if x is None else f"{x:.{n}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", choices=list(JOBS) + ["all"], default="all",
                    help="the best-effort job; all (the default): every case beside each job in turn, a table each")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--rate", type=float, default=1.5)
    ap.add_argument("--server-args", default="", help="more options for workloads/llm_server.py, e.g. '--max-batch 32'")
    ap.add_argument("--job-args", default="", help="more options for the best-effort job's script")
    ap.add_argument("--tag", default="", help="results go to colocation-<job>-<tag>.json/.png (a partial or trial run "
                                              "must not replace the full run's files)")
    ap.add_argument("--engine", choices=("graph", "eager"), default="graph",
                    help="the server's engine: graph (static cache, CUDA graphs: GPU-bound) or eager (CPU-bound)")
    ap.add_argument("--duration", type=float, default=12)
    # the job's steps vary 0.10-0.17 s on the H100 (same shapes): 8 s windows read 54 to 72 samples/s for the
    # same idle GPU across runs (2026-12-06), too coarse for a 95 % comparison; 20 s ones agreed within 10 %
    ap.add_argument("--idle", type=float, default=20)
    ap.add_argument("--idle-ms", type=int, default=3)
    ap.add_argument("--swap-limit", default="", help="best-effort limit in gvm-auto-swap (default: GPU size - 20 GiB)")
    ap.add_argument("--ballast-gb", type=float, default=0, help="its ballast (default: GPU size - 36 GiB)")
    ap.add_argument("--grow-gb", type=float, default=20)
    ap.add_argument("--prewarm-gb", type=float, default=-1,
                    help="gvm-auto-swap: the job's --swap-prewarm (default: the server's growth + 1 GiB; 0: none)")
    a = ap.parse_args()
    # sized from the GPU so that the best-effort job fits under its limit but the server's growth
    # does not fit beside it: the policy has to move best-effort memory to the host
    total_gib = gpu_total_gib()
    if not a.swap_limit:
        a.swap_limit = f"{int(total_gib - 20)}G"
    if not a.ballast_gb:
        a.ballast_gb = max(1, int(total_gib - 36))
    if a.prewarm_gb < 0:
        a.prewarm_gb = a.grow_gb + 1
    say(f"GPU {gpu_name()} {total_gib:.1f} GiB: best-effort limit {a.swap_limit}, ballast {a.ballast_gb} GiB, "
        f"server growth {a.grow_gb} GiB, job's swap pre-warm {a.prewarm_gb} GiB")
    tmp = tempfile.mkdtemp(prefix="gvm-coloc-", dir=os.environ.get("OUT") or None)
    for job in list(JOBS) if a.job == "all" else [a.job]:
        a.job = job
        run_job(a, total_gib, tmp)


def run_job(a, total_gib, tmp):
    """Every case beside one best-effort job (a.job): prints its table, saves its JSON and plot."""
    results = []
    for case in a.cases.split(","):
        say(f"{a.job}: {case}")
        t0 = time.monotonic()
        try:
            r = run_case(case, a.job, a, tmp)
        except Exception as e:  # one broken case must not lose the others
            r = {"case": case, "error": str(e)}
            say(f"  ERROR {e}")
        r["wall_s"] = round(time.monotonic() - t0, 1)
        results.append(r)
        brief = {k: v for k, v in r.get("server", {}).items() if k not in ("ttft", "tpot", "grow_ms")}
        say(f"  {r['wall_s']} s server={brief} be={r.get('be')} policy={r.get('be_policy')}")
        save(a, total_gib, results, with_plot=False)  # a run cut short by its time limit keeps its cases

    by = {r["case"]: r for r in results}
    alone = by.get("server-alone", {}).get("server", {})
    be_alone = (by.get("be-alone", {}).get("be") or {}).get("alone_sps")
    default_idle = (by.get("default", {}).get("be") or {}).get("idle_sps")
    print(f"\n### {a.job}: server ({a.engine} engine) at {a.rate} req/s beside {a.job} ({gpu_name()})\n")
    print("| case | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | p99 TTFT / alone | p99 TPOT / alone | BE idle-phase samples/s | BE under load samples/s (share of alone) | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, b = r.get("server", {}), r.get("be") or {}
        rt = s.get("ttft_p99") / alone["ttft_p99"] if s.get("ttft_p99") and alone.get("ttft_p99") else None
        rp = s.get("tpot_p99") / alone["tpot_p99"] if s.get("tpot_p99") and alone.get("tpot_p99") else None
        share = f"{fmt(b.get('load_sps'))} ({fmt(100 * b['load_sps'] / be_alone, 0)} %)" if b.get("load_sps") is not None and be_alone else fmt(b.get("load_sps"))
        idle = b.get("idle_sps") if "idle_sps" in b else b.get("alone_sps")
        notes = []
        if r.get("error"):
            notes.append("ERROR " + r["error"][:60])
        if r.get("be_policy") and "holds" in r["be_policy"]:
            p = r["be_policy"]
            notes.append(f"holds {p['holds']}, chain p50/p99 {chain_us(p['chain_p50_us'])}/{chain_us(p['chain_p99_us'])} us"
                         f" (max {p.get('chain_max_us', 0)}), lent {p['memory_lent'] / 2**30:.1f} GiB")
            m = r.get("be_chain_measured")
            if m and m["holds"]:
                notes.append(f"measured phases: {m['holds']} holds, chain p50/p99 {chain_us(m['p50_us'])}/{chain_us(m['p99_us'])} us")
                for part in ("wake", "rm"):
                    pm = r.get(f"be_chain_{part}_measured")
                    if pm and pm["holds"]:
                        notes.append(f"{part} p50/p99 {chain_us(pm['p50_us'])}/{chain_us(pm['p99_us'])} us")
        if r.get("be_slow_holds"):
            for kind in ("holding", "releasing"):  # the slowest of each, as the agent logs each new slowest
                said = [line for line in r["be_slow_holds"] if f"policy: {kind} GPU" in line]
                if said:
                    notes.append(said[-1].split("policy: ", 1)[-1])
        if b.get("ballast_gb"):
            notes.append(f"ballast {b['ballast_gb']:.0f} GiB {'intact' if b.get('ballast_ok') else 'CORRUPT'}")
        if s.get("grown_gb"):
            notes.append(f"server grew {s['grown_gb']:.0f} GiB (slowest step {max(s['grow_ms']):.0f} ms)")
        if r.get("srv_policy") and r["srv_policy"].get("memory_waits"):
            notes.append(f"server allocations that waited for lent memory: {r['srv_policy']['memory_waits']}")
        if s.get("graph_equals_eager") is False:
            notes.append("server graphs DIFFER from eager")
        if s and s.get("completed") != s.get("arrivals"):
            notes.append(f"{s.get('completed')}/{s.get('arrivals')} done")
        print(f"| {r['case']} | {fmt(s.get('ttft_p50'))} | {fmt(s.get('ttft_p99'))} | {fmt(s.get('tpot_p50'))} | {fmt(s.get('tpot_p99'))} | "
              f"{fmt(rt, 2)} | {fmt(rp, 2)} | {fmt(idle)} | {share} | {'; '.join(notes)} |")
    if default_idle:
        auto_idle = (by.get("gvm-auto", {}).get("be") or {}).get("idle_sps")
        if auto_idle:
            print(f"\nbest-effort while the server idles, gvm-auto vs default: {100 * auto_idle / default_idle:.1f} %")
    for base in ("default", "mps"):
        b, g = by.get(base, {}).get("server", {}), by.get("gvm-auto", {}).get("server", {})
        if b.get("ttft_p99") and g.get("ttft_p99"):
            print(f"gvm-auto vs {base}: p99 TTFT {b['ttft_p99'] / g['ttft_p99']:.1f}x better, p99 TPOT {b['tpot_p99'] / g['tpot_p99']:.1f}x better")

    save(a, total_gib, results, with_plot=True)


def save(a, total_gib, results, with_plot):
    out = {"job": a.job, "gpu": gpu_name(), "gpu_gib": total_gib, "swap_limit": a.swap_limit, "ballast_gb": a.ballast_gb,
           "grow_gb": a.grow_gb, "prewarm_gb": a.prewarm_gb, "rate": a.rate, "engine": a.engine, "duration_s": a.duration,
           "idle_s": a.idle, "idle_ms": a.idle_ms, "cases_asked": a.cases.split(","), "results": results}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    name = f"colocation-{a.job}" + (f"-{a.tag}" if a.tag else "")
    for dest in filter(None, [os.path.join(ROOT, "bench", "results"), os.environ.get("OUT")]):
        with open(os.path.join(dest, f"{name}.json"), "w") as f:
            json.dump(out, f, indent=1)
        if not with_plot:
            continue
        try:
            plot(results, a.job, os.path.join(dest, f"{name}.png"))
        except Exception as e:  # the numbers matter more than the picture
            say(f"plot failed: {e}")


def plot(results, job, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.get("server", {}).get("ttft")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, key, title in ((axes[0], "ttft", "time to first token (ms)"), (axes[1], "tpot", "time per output token (ms)")):
        ax.boxplot([r["server"][key] for r in rows], whis=(1, 99), showfliers=True)
        ax.set_xticks(range(1, len(rows) + 1), [r["case"] for r in rows], rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_title(f"{title}, whiskers p1..p99")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"LLM server beside {job}: latency per case")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in started:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
