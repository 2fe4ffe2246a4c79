# shellcheck shell=bash
# Sourced by test/gpu/run.sh and bench/launch-overhead/run.sh (bash, from the repository root).
# gvm_ensure_agent: sets $agent to the agent's path and builds it when missing.
#   GVM_AGENT set   -> that file must exist (never built)
#   otherwise       -> build/Release/libgvm.so; if missing: cmake configure + build of target gvm;
#                      if the cmake configure fails (it also needs node + node-addon-api for the
#                      addon), compile cuda-intercept/src/*.c directly the way CMakeLists.txt does.
# Prints what it does through `say` (defined by the caller); returns 1 with a message on failure.

gvm_cuda_include() {
  local d
  for d in "${CUDA_PATH:-}/include" "${CUDA_HOME:-}/include" /usr/local/cuda/include; do
    if [ -f "$d/cuda.h" ]; then printf '%s\n' "$d"; return 0; fi
  done
  if command -v nvcc >/dev/null 2>&1; then
    d=$(cd "$(dirname "$(command -v nvcc)")/../include" 2>/dev/null && pwd) || true
    if [ -n "$d" ] && [ -f "$d/cuda.h" ]; then printf '%s\n' "$d"; return 0; fi
  fi
  return 1
}

gvm_build_agent_direct() {
  local inc out=build/Release/libgvm.so
  inc=$(gvm_cuda_include) || { say "ERROR: cuda.h not found (set CUDA_PATH)"; return 1; }
  local cc=${CC:-cc}
  local map=()
  [ -f cuda-intercept/exports.map ] && map=("-Wl,--version-script=cuda-intercept/exports.map")
  mkdir -p build/Release
  say "compiling the agent directly: $cc cuda-intercept/src/*.c -> $out (cuda.h from $inc)"
  timeout 300 "$cc" -shared -fPIC -O2 -std=c11 -D_GNU_SOURCE -fvisibility=hidden -Wall -Wextra \
    -Iinclude -I"$inc" cuda-intercept/src/*.c "${map[@]}" -ldl -lpthread -o "$out"
}

gvm_ensure_agent() {
  agent=${GVM_AGENT:-$PWD/build/Release/libgvm.so}
  if [ -f "$agent" ]; then
    say "agent: $agent ($(stat -c %s "$agent") bytes, built $(date -r "$agent" '+%F %T'))"
    return 0
  fi
  if [ -n "${GVM_AGENT:-}" ]; then
    say "ERROR: GVM_AGENT=$agent does not exist"; return 1
  fi
  say "agent $agent is missing: building it"
  local built=0
  if command -v cmake >/dev/null 2>&1; then
    if timeout 300 cmake -S . -B build -DCMAKE_BUILD_TYPE=Release; then
      if timeout 300 cmake --build build -j16 --target gvm; then
        built=1
      else
        say "ERROR: cmake --build build --target gvm failed"; return 1
      fi
    else
      say "WARNING: cmake configure failed (node/node-addon-api missing?); falling back to a direct compile"
    fi
  else
    say "WARNING: cmake not found; falling back to a direct compile"
  fi
  if [ "$built" != 1 ]; then
    gvm_build_agent_direct || { say "ERROR: compiling the agent failed"; return 1; }
  fi
  [ -f "$agent" ] || { say "ERROR: the build finished but $agent is not there"; return 1; }
  say "agent: $agent (built now)"
}
