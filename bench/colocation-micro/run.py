"""bench/colocation-micro: a latency-critical process beside a GPU-saturating one, both under gvm,
in one run: alone, default sharing, best-effort at priority 12 and 15, latency-critical at 0, and
best-effort frozen; then the latency side's requests as one CUDA graph, alone and beside priority
15 (how much of the interference is the launch gaps a time-sliced neighbour runs in). Prints a table;
writes bench/results/colocation-micro.json (and $OUT).
Usage: run.py [--seconds S]: how long the latency-critical side measures in each case (default 6:
600 requests, so p99 is the 6th slowest; the two "alone" runs differed 2x at p99 on the H100)."""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLI = shlex.split(os.environ.get("GVM_CLI", f"node {ROOT}/dist/cli/gvm.js"))
PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))
FLOP_PER_MATMUL = 2 * 8192**3


def gvm(*args, check=True):
    r = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"gvm {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def start(script, *args):
    p = subprocess.Popen(CLI + ["run", "--", PY, os.path.join(HERE, script), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    if not line.startswith("PID"):
        p.kill()
        raise RuntimeError(f"{script} did not start: {line}{p.stdout.read()}")
    return p, int(line.split()[1])


def stop(p, pid):
    """gvm run passes SIGTERM on to its child; SIGKILL would only end gvm run and orphan the child."""
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def wait_line(p, prefix, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        line = p.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line
    raise RuntimeError(f"no {prefix} line")


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def lo_rate(log, t0, t1):
    pts = []
    with open(log) as f:
        for line in f:
            t, n = line.split()
            pts.append((float(t), int(n)))
    inside = [(t, n) for t, n in pts if t0 <= t <= t1]
    if len(inside) < 2:
        return 0.0
    (ta, na), (tb, nb) = inside[0], inside[-1]
    return (nb - na) * FLOP_PER_MATMUL / (tb - ta) / 1e12


def run_case(name, tmp, seconds, with_lo=True, with_hi=True, lo_prio=None, hi_prio=None, lo_frozen=False, hi_graph=False):
    lo = lo_pid = None
    lo_log = os.path.join(tmp, f"{name}-lo.log")
    applied = {}
    try:
        if with_lo:
            lo, lo_pid = start("lo.py", "--log", lo_log, "--seconds", str(max(60, seconds + 40)))
            wait_line(lo, "READY")
            if lo_prio is not None:
                gvm("set", str(lo_pid), "compute.priority", str(lo_prio))
                applied["lo_priority"] = int(gvm("get", str(lo_pid), "compute.priority"))
            time.sleep(1.0)
        result = {"case": name}
        if with_hi:
            out = os.path.join(tmp, f"{name}-hi.json")
            hi, hi_pid = start("hi.py", "--out", out, "--seconds", str(seconds), *(["--graph"] if hi_graph else []))
            if hi_prio is not None:
                gvm("set", str(hi_pid), "compute.priority", str(hi_prio))
                applied["hi_priority"] = int(gvm("get", str(hi_pid), "compute.priority"))
            if lo_frozen:
                gvm("freeze", str(lo_pid))
                applied["lo_frozen"] = int(gvm("get", str(lo_pid), "compute.freeze"))
            hi.wait(timeout=seconds + 120)
            with open(out) as f:
                h = json.load(f)
            lat = h["latencies_ms"]
            result.update(hi_p50=pct(lat, 0.5), hi_p99=pct(lat, 0.99), hi_max=max(lat), hi_n=len(lat))
            t0, t1 = h["start"], h["stop"]
            if lo_frozen:
                gvm("thaw", str(lo_pid))
        else:
            t0 = time.time()
            time.sleep(seconds)
            t1 = time.time()
        if with_lo:
            time.sleep(0.3)
            result["lo_tflops"] = lo_rate(lo_log, t0, t1)
        result["applied"] = applied
        return result
    finally:
        if lo is not None:
            stop(lo, lo_pid)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="measuring time of each case")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gvm-coloc-")
    cases = [
        ("hi alone", dict(with_lo=False)),
        ("lo alone", dict(with_hi=False)),
        ("both, default", {}),
        ("lo priority 12", dict(lo_prio=12)),
        ("lo priority 15", dict(lo_prio=15)),
        ("hi priority 0", dict(hi_prio=0)),
        ("hi 0, lo 15", dict(hi_prio=0, lo_prio=15)),
        ("lo frozen", dict(lo_frozen=True)),
        # the same requests as one CUDA graph: what is left of the interference without launch gaps
        ("hi graphed alone", dict(with_lo=False, hi_graph=True)),
        ("hi graphed, lo 15", dict(hi_graph=True, lo_prio=15)),
        ("hi alone (again)", dict(with_lo=False)),
    ]
    results = []
    for name, kw in cases:
        print(f"[colocation-micro] {name} ...", flush=True)
        r = run_case(name.replace(" ", "-").replace(",", "").replace("(", "").replace(")", ""), tmp, a.seconds, **kw)
        r["case"] = name
        results.append(r)
        print(f"[colocation-micro] {json.dumps(r)}", flush=True)  # a run cut short still leaves its cases
    by = {r["case"]: r for r in results}
    default_lo = by["both, default"].get("lo_tflops") or float("nan")
    print("\n| case | hi p50 ms | hi p99 ms | hi max ms | lo TFLOP/s | lo vs default | settings applied |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        f = lambda k: f"{r[k]:.2f}" if k in r else "-"
        rel = f"{100 * r['lo_tflops'] / default_lo:.1f}%" if "lo_tflops" in r and "hi_p50" in r else "-"
        print(f"| {r['case']} | {f('hi_p50')} | {f('hi_p99')} | {f('hi_max')} | {f('lo_tflops')} | {rel} | {r['applied'] or ''} |")
    alone_p99 = min(by["hi alone"]["hi_p99"], by["hi alone (again)"]["hi_p99"])
    p15 = by["lo priority 15"]
    ok_lat = p15["hi_p99"] <= 1.5 * alone_p99
    ok_thr = p15["lo_tflops"] >= 0.97 * default_lo
    print(f"\ntarget: lo at priority 15 keeps hi p99 within 1.5x of alone: {p15['hi_p99']:.2f} vs {alone_p99:.2f} ms "
          f"({p15['hi_p99'] / alone_p99:.2f}x): {'met' if ok_lat else 'MISSED'}")
    g_alone, g15 = by["hi graphed alone"].get("hi_p99"), by["hi graphed, lo 15"].get("hi_p99")
    if g_alone and g15:
        print(f"graphed requests: lo at priority 15 puts hi p99 at {g15:.2f} vs {g_alone:.2f} ms alone ({g15 / g_alone:.2f}x)")
    print(f"target: lo throughput at priority 15 within 3% of default: {p15['lo_tflops']:.0f} vs {default_lo:.0f} TFLOP/s "
          f"({100 * p15['lo_tflops'] / default_lo:.1f}%): {'met' if ok_thr else 'MISSED'}")
    doc = {"seconds": a.seconds, "results": results, "targets": {"hi_p99_ratio": p15["hi_p99"] / alone_p99, "lo_share_of_default":
                                           p15["lo_tflops"] / default_lo, "met": ok_lat and ok_thr}}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    for d in [os.path.join(ROOT, "bench", "results"), os.environ.get("OUT")]:
        if d:
            with open(os.path.join(d, "colocation-micro.json"), "w") as f:
                json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
