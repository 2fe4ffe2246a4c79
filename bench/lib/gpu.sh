# shellcheck shell=bash
# Sourced by the bench run.sh scripts (bash, from the repository root; `say` defined by the caller).
#   gvm_gpus_or_skip            exits 0 with "SKIP: ..." where no NVIDIA GPU is listed (CI), else says which
#   gvm_bench_cuda SRC BIN      the start of a CUDA bench: skip without a GPU, the agent built ($agent set),
#                               BIN built from SRC (its deps: the control block and self-command headers),
#                               bench/results/ made; exits 1 with a message on failure
#   gvm_nvcc_build SRC BIN [DEP...]
#                               builds BIN from SRC with nvcc (-O2 -std=c++17 -arch=$NVCC_ARCH, default sm_90,
#                               -I include, libcuda from the toolkit's stubs) when BIN is missing or older than
#                               SRC or a DEP, or was built for another arch; returns 1 with a message on failure

gvm_gpus_or_skip() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "SKIP: no NVIDIA GPU (nvidia-smi not found)"; exit 0
  fi
  local gpus
  if ! gpus=$(timeout 60 nvidia-smi -L 2>&1) || ! printf '%s\n' "$gpus" | grep -q '^GPU [0-9]'; then
    echo "SKIP: no NVIDIA GPU (nvidia-smi lists none: $(printf '%s' "$gpus" | head -n1))"; exit 0
  fi
  say "GPUs: $(printf '%s' "$gpus" | tr '\n' ';')"
}

gvm_nvcc_build() {
  local src=$1 bin=$2 nvcc cuda_home arch stale=0 dep
  shift 2
  nvcc=${NVCC:-$(command -v nvcc || true)}
  [ -n "$nvcc" ] || nvcc=/usr/local/cuda/bin/nvcc
  [ -x "$nvcc" ] || { say "ERROR: nvcc not found (set NVCC)"; return 1; }
  cuda_home=$(cd "$(dirname "$nvcc")/.." && pwd)
  arch=${NVCC_ARCH:-sm_90}
  mkdir -p "$(dirname "$bin")"
  if [ ! -x "$bin" ] || [ ! -f "$bin.arch" ] || [ "$(cat "$bin.arch")" != "$arch" ]; then stale=1; fi
  for dep in "$src" "$@"; do [ "$dep" -nt "$bin" ] && stale=1; done
  [ "$stale" = 1 ] || return 0
  say "building $bin with $nvcc (-arch=$arch)"
  # libcuda: the toolkit's link stub (the driver's libcuda.so.1 is the one used at run time)
  timeout 300 "$nvcc" -O2 -std=c++17 -arch="$arch" -I include -o "$bin" "$src" \
    -L"$cuda_home/lib64/stubs" -L"$cuda_home/targets/x86_64-linux/lib/stubs" -lcuda \
    || { say "ERROR: nvcc failed"; return 1; }
  echo "$arch" > "$bin.arch"
}

gvm_bench_cuda() {
  gvm_gpus_or_skip
  # shellcheck source=bench/lib/build-agent.sh
  source "$root/bench/lib/build-agent.sh"
  gvm_ensure_agent || exit 1
  gvm_nvcc_build "$1" "$2" include/gvm/control_block.h include/gvm/self_command.h || exit 1
  mkdir -p bench/results
}
