#!/usr/bin/env python3
"""All-reduce across GPUs under gvm (issue 8, part 2).

WORLD processes, one per GPU, started with torch.multiprocessing (no torchrun), all-reduce float32
tensors of several sizes with torch.distributed (NCCL) ITERS times each, after WARMUP untimed ones.
Every input holds small multiples of 1/256, so every sum is exact in float32 whatever order NCCL adds
in: each result is compared with the exact expected sum (computed on the GPU), and RESULT is the
sha256 of the last result of every size, identical with and without the agent unless a byte changed.

Under the agent (LD_PRELOAD=build/Release/libgvm.so, inherited by every rank) each rank also reads
its own control block ($GVM_SHM_DIR or /dev/shm/gvm, the block gvm get reads): K all-reduces of a
zero tensor with nothing else launched must add exactly K kernels on its own GPU's slot, and no
kernel may be counted on another GPU.

  python3 test/gpu/nccl_allreduce.py [--world 2] [--iters 20] [--warmup 5] [--sizes 1K,...,256M] [--out FILE]
  python3 test/gpu/nccl_allreduce.py --backend gloo --device cpu --sizes 1K,64K   # the logic, no GPU
  python3 test/gpu/nccl_allreduce.py compare BASE.json AGENT.json [BASE2.json AGENT2.json ...]

Prints one SIZE line per size (median, p10, p90 of the wall time per all-reduce in us, busbw GB/s),
GVM lines under the agent, RESULT <sha256>, and `ok`/`FAIL` lines; exit status 0 when all held.
`compare` prints the overhead table (median with / without the agent, per size) and checks that
every run's RESULT is the same; nccl_allreduce.sh runs it all.
"""
import argparse
import hashlib
import json
import os
import socket
import statistics
import struct
import sys
import time

UNITS = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
DEFAULT_SIZES = '1K,4K,16K,64K,256K,1M,4M,16M,64M,256M'
MOD = 4093  # inputs are ((i * 7 + rank * 131 + it * 17) % MOD) / 256: exact in float32, and so are sums

# control_block.h: the per-GPU slots start at 4096, 8192 bytes each; offsets of the fields read here
CB_MAGIC = 0x434D5647
CB_GPU_COUNT = 52
CB_GPU_BASE, CB_GPU_SIZE = 4096, 8192
GPU_PRESENT, GPU_CONTEXTS, GPU_MEMORY_CURRENT, GPU_SUBMITTED, GPU_ENDED = 0, 132, 136, 176, 184


def parse_size(text):
    text = text.strip().upper().rstrip('B').rstrip('I')
    unit = UNITS.get(text[-1:], 1)
    return int(text[:-1] if text[-1:] in UNITS else text) * unit


def label(n):
    for suffix, unit in (('G', 1 << 30), ('M', 1 << 20), ('K', 1 << 10)):
        if n >= unit and n % unit == 0:
            return f'{n // unit}{suffix}'
    return str(n)


def agent_loaded():
    try:
        with open('/proc/self/maps') as f:
            return 'libgvm.so' in f.read()
    except OSError:
        return False


def read_block(pid):
    """This process's gvm control block: per present GPU slot, kernels and memory; None without one."""
    path = os.path.join(os.environ.get('GVM_SHM_DIR') or '/dev/shm/gvm', str(pid))
    try:
        with open(path, 'rb') as f:
            data = f.read(CB_GPU_BASE + 16 * CB_GPU_SIZE)
    except OSError:
        return None
    if len(data) < CB_GPU_BASE or struct.unpack_from('<I', data, 0)[0] != CB_MAGIC:
        return None
    gpus = {}
    for g in range(min(struct.unpack_from('<I', data, CB_GPU_COUNT)[0], 16)):
        base = CB_GPU_BASE + g * CB_GPU_SIZE
        if struct.unpack_from('<I', data, base + GPU_PRESENT)[0]:
            gpus[g] = {
                'contexts': struct.unpack_from('<I', data, base + GPU_CONTEXTS)[0],
                'memory': struct.unpack_from('<Q', data, base + GPU_MEMORY_CURRENT)[0],
                'submitted': struct.unpack_from('<Q', data, base + GPU_SUBMITTED)[0],
                'ended': struct.unpack_from('<Q', data, base + GPU_ENDED)[0],
            }
    return gpus


def settled_block(pid, gpu, want=None, timeout=3.0):
    """This process's block once the agent has published every kernel launched so far on `gpu`: the
    event thread publishes every few ms (20 ms when idle), so two equal readings 60 ms apart with
    nothing pending (and at least `want` kernels) are final."""
    end = time.monotonic() + timeout
    last = None
    while True:
        b = read_block(pid)
        g = (b or {}).get(gpu)
        if b is None:
            return None
        if g and g['submitted'] == g['ended'] and (want is None or g['submitted'] >= want) and g == last:
            return b
        if time.monotonic() > end:
            return b
        last = g
        time.sleep(0.06)


def inputs(torch, numel, rank, it, device):
    i = torch.arange(numel, dtype=torch.int64, device=device)
    return ((i * 7 + (rank * 131 + it * 17)) % MOD).to(torch.float32).div_(256.0)


def expected(torch, numel, world, it, device):
    i = torch.arange(numel, dtype=torch.int64, device=device)
    total = torch.zeros(numel, dtype=torch.int64, device=device)
    for r in range(world):
        total += (i * 7 + (r * 131 + it * 17)) % MOD
    return total.to(torch.float32).div_(256.0)


def rank_main(rank, args, port, queue):
    import torch
    import torch.distributed as dist

    cuda = args.device == 'cuda'
    device = torch.device('cuda', rank) if cuda else torch.device('cpu')
    if cuda:
        torch.cuda.set_device(device)
    kwargs = {'device_id': device} if cuda else {}
    dist.init_process_group(args.backend, init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=args.world, **kwargs)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def barrier():
        if cuda:
            dist.barrier(device_ids=[rank])
        else:
            dist.barrier()

    sizes, digest, exact, bad = [], hashlib.sha256(), True, []
    for nbytes in args.sizes:
        numel = max(1, nbytes // 4)
        times = []
        for it in range(args.warmup + args.iters):
            x = inputs(torch, numel, rank, it, device)
            sync()
            barrier()
            t0 = time.perf_counter()
            dist.all_reduce(x)
            sync()
            dt = time.perf_counter() - t0
            if it >= args.warmup:
                times.append(dt)
            if not torch.equal(x, expected(torch, numel, args.world, it, device)):
                exact = False
                bad.append(f'{label(nbytes)} iteration {it}')
        if rank == 0:
            digest.update(f'{label(nbytes)}:'.encode())
            digest.update(x.cpu().numpy().tobytes())
        med = statistics.median(times)
        q = statistics.quantiles(times, n=10) if len(times) >= 2 else [med] * 9
        sizes.append({'bytes': nbytes, 'median_us': med * 1e6, 'p10_us': q[0] * 1e6, 'p90_us': q[-1] * 1e6,
                      # ring all-reduce moves 2 (n-1)/n of the buffer per rank (nccl-tests' busbw)
                      'busbw_gbs': nbytes * 2 * (args.world - 1) / args.world / med / 1e9})
        del x

    # gvm's count of this rank's kernels: K all-reduces of zeros, nothing else launched meanwhile
    gvm = None
    if cuda and agent_loaded():
        zeros = torch.zeros(256, dtype=torch.float32, device=device)
        sync()
        barrier()
        sync()
        before = settled_block(os.getpid(), rank)
        k = args.count_kernels
        for _ in range(k):
            dist.all_reduce(zeros)
        sync()
        after = settled_block(os.getpid(), rank, want=((before or {}).get(rank) or {}).get('submitted', 0) + k)
        if before is not None and after is not None:
            gvm = {'pid': os.getpid(), 'gpu': rank, 'allreduces': k,
                   'counted': after[rank]['submitted'] - before[rank]['submitted'],
                   'gpus': {str(g): v for g, v in after.items()}}
        else:
            gvm = {'pid': os.getpid(), 'gpu': rank, 'error': 'no control block (agent not started?)'}
    queue.put({'rank': rank, 'pid': os.getpid(), 'agent': agent_loaded(), 'exact': exact, 'bad': bad[:5],
               'sizes': sizes, 'result': digest.hexdigest() if rank == 0 else None, 'gvm': gvm})
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(args):
    import torch
    import torch.multiprocessing as mp

    if args.device == 'cuda':
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < args.world:
            print(f'SKIP: {n} CUDA device(s) visible to PyTorch, the run needs {args.world}')
            return 0
    ctx = mp.get_context('spawn')
    queue = ctx.SimpleQueue()
    port = free_port()
    mp.start_processes(rank_main, args=(args, port, queue), nprocs=args.world, join=True, start_method='spawn')
    ranks = sorted((queue.get() for _ in range(args.world)), key=lambda r: r['rank'])
    fails = 0

    def check(ok, text):
        nonlocal fails
        fails += not ok
        print(('ok   ' if ok else 'FAIL ') + text)

    print(f'{args.backend} all-reduce, {args.world} ranks, {args.iters} timed iterations (+{args.warmup}), '
          f'agent {"loaded in every rank" if all(r["agent"] for r in ranks) else "not loaded" if not any(r["agent"] for r in ranks) else "in some ranks only"}')
    print('SIZE      median_us     p10_us     p90_us  busbw_GB/s')
    r0 = ranks[0]
    for s in r0['sizes']:
        print(f'{label(s["bytes"]):>6} {s["median_us"]:>12.1f} {s["p10_us"]:>10.1f} {s["p90_us"]:>10.1f} {s["busbw_gbs"]:>11.2f}')
    for r in ranks:
        check(r['exact'], f'rank {r["rank"]}: every result equals the exact sum' + (f' (wrong: {", ".join(r["bad"])})' if r['bad'] else ''))
    if args.expect_agent is not None:
        want = args.expect_agent == 'yes'
        check(all(r['agent'] == want for r in ranks), f'the agent is {"" if want else "not "}mapped in every rank')
    for r in ranks:
        g = r['gvm']
        if g is None:
            continue
        if 'error' in g:
            check(False, f'rank {r["rank"]} (pid {r["pid"]}): {g["error"]}')
            continue
        own = g['gpus'].get(str(r['rank']), {})
        others = {k: v['submitted'] for k, v in g['gpus'].items() if k != str(r['rank'])}
        print(f'GVM rank {r["rank"]} pid {r["pid"]}: ' + '; '.join(
            f'GPU {k}: {v["submitted"]} kernels, {v["memory"] / 2**20:.0f} MiB, {v["contexts"]} context(s)' for k, v in sorted(g['gpus'].items())))
        check(g['counted'] == g['allreduces'], f'rank {r["rank"]}: {g["allreduces"]} all-reduces counted as {g["counted"]} kernels on GPU {r["rank"]}')
        check(own.get('submitted', 0) > 0 and all(v == 0 for v in others.values()),
              f'rank {r["rank"]}: kernels on its own GPU only ({own.get("submitted", 0)} there, others {others})')
    print(f'RESULT {r0["result"]}')
    out = {'backend': args.backend, 'world': args.world, 'iters': args.iters, 'agent': all(r['agent'] for r in ranks),
           'result': r0['result'], 'exact': all(r['exact'] for r in ranks), 'sizes': r0['sizes'],
           'gvm': [r['gvm'] for r in ranks], 'failures': fails}
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(out, f, indent=1)
    print(f'{fails} failure(s)')
    return 1 if fails else 0


def compare(files):
    runs = []
    for path in files:
        with open(path) as f:
            runs.append(json.load(f))
    fails = 0

    def check(ok, text):
        nonlocal fails
        fails += not ok
        print(('ok   ' if ok else 'FAIL ') + text)

    base = [r for r in runs if not r['agent']]
    agent = [r for r in runs if r['agent']]
    check(bool(base) and bool(agent), f'{len(base)} run(s) without the agent, {len(agent)} with it')
    results = {r['result'] for r in runs}
    check(len(results) == 1 and None not in results, f'every run gave the same RESULT ({", ".join(sorted(map(str, results)))})')
    check(all(r['exact'] and r['failures'] == 0 for r in runs), 'every run: exact sums, all its checks held')
    if not base or not agent:
        return 1

    def median_of(rs, i):
        return statistics.median(r['sizes'][i]['median_us'] for r in rs)

    print('SIZE    without_us   with_us  overhead  busbw_without  busbw_with (GB/s)')
    table = []
    for i, s in enumerate(base[0]['sizes']):
        b, a = median_of(base, i), median_of(agent, i)
        bw_b = statistics.median(r['sizes'][i]['busbw_gbs'] for r in base)
        bw_a = statistics.median(r['sizes'][i]['busbw_gbs'] for r in agent)
        table.append({'bytes': s['bytes'], 'without_us': b, 'with_us': a, 'overhead_pct': (a / b - 1) * 100})
        print(f'{label(s["bytes"]):>6} {b:>11.1f} {a:>9.1f} {(a / b - 1) * 100:>+8.1f}% {bw_b:>14.2f} {bw_a:>11.2f}')
    print(f'median overhead over the sizes: {statistics.median(t["overhead_pct"] for t in table):+.1f}%')
    return 1 if fails else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == 'compare':
        return compare(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--backend', default='nccl', choices=['nccl', 'gloo'])
    p.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    p.add_argument('--world', type=int, default=2)
    p.add_argument('--iters', type=int, default=20)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--sizes', default=DEFAULT_SIZES, help='comma-separated byte counts, K/M/G suffixes')
    p.add_argument('--count-kernels', type=int, default=100, help='all-reduces whose kernels gvm must count exactly')
    p.add_argument('--expect-agent', choices=['yes', 'no'], help='fail unless the agent is (not) mapped in every rank')
    p.add_argument('--out', help='JSON results')
    args = p.parse_args()
    args.sizes = [parse_size(s) for s in args.sizes.split(',') if s.strip()]
    if args.backend == 'nccl' and args.device != 'cuda':
        p.error('nccl needs --device cuda')
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
