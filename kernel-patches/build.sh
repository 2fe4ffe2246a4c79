#!/usr/bin/env bash
# Apply gvm's kernel patch series to NVIDIA's open GPU kernel modules and build
# the modules against the installed kernel headers.
set -euo pipefail

readonly PATCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly EXPECTED_VERSION="580.142"

usage() {
    cat <<EOF
Usage: $(basename "$0") [options] SRC

Apply the patches in $PATCH_DIR (0001-*.patch ...) to SRC, a source tree of
NVIDIA's open-gpu-kernel-modules at tag $EXPECTED_VERSION, and build nvidia.ko
and nvidia-uvm.ko against the installed kernel headers.

Options:
  -k, --kernel VERSION  kernel to build for: /lib/modules/VERSION/{build,source}
                        (default: the only, or newest, /lib/modules/*/build)
  -j, --jobs N          parallel jobs (default: nproc)
  -a, --all             build every module with the top-level 'make modules'
                        (also nvidia-modeset, nvidia-drm, nvidia-peermem)
  -n, --no-apply        do not apply the patches (SRC already has them)
  -W, --werror          treat compiler warnings as errors in the kernel
                        interface layer and nvidia-uvm (WARNINGS_AS_ERRORS=1)
  -h, --help            show this help

The patches are applied with 'git am' when SRC is a git work tree, else with
'patch -p1'. The build log is written to SRC/gvm-build.log.
EOF
}

die() {
    echo "build.sh: error: $*" >&2
    exit 1
}

kernel=""
jobs="$(nproc)"
build_all=0
apply=1
werror=0
src=""

while [ $# -gt 0 ]; do
    case "$1" in
        -k|--kernel) [ $# -ge 2 ] || die "$1 needs a value"; kernel="$2"; shift 2 ;;
        -j|--jobs)   [ $# -ge 2 ] || die "$1 needs a value"; jobs="$2"; shift 2 ;;
        -j*)         jobs="${1#-j}"; shift ;;
        -a|--all)    build_all=1; shift ;;
        -n|--no-apply) apply=0; shift ;;
        -W|--werror) werror=1; shift ;;
        -h|--help)   usage; exit 0 ;;
        -*)          usage >&2; die "unknown option: $1" ;;
        *)           [ -z "$src" ] || die "only one SRC may be given"; src="$1"; shift ;;
    esac
done

[ -n "$src" ] || { usage >&2; exit 2; }
[ -d "$src" ] || die "SRC '$src' is not a directory"
src="$(cd "$src" && pwd)"
[ -f "$src/version.mk" ] && [ -d "$src/kernel-open/nvidia-uvm" ] && [ -d "$src/src/nvidia" ] ||
    die "SRC '$src' does not look like open-gpu-kernel-modules (no version.mk, kernel-open/nvidia-uvm or src/nvidia)"
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs takes a positive number, not '$jobs'"

version="$(sed -n 's/^NVIDIA_VERSION = //p' "$src/version.mk")"
if [ "$version" != "$EXPECTED_VERSION" ]; then
    echo "build.sh: warning: SRC is version '$version', the series was made against $EXPECTED_VERSION" >&2
fi

# --- kernel headers ---------------------------------------------------------
if [ -z "$kernel" ]; then
    builds=(/lib/modules/*/build)
    [ -e "${builds[0]}" ] ||
        die "no kernel headers in /lib/modules/*/build (Debian: apt-get install linux-headers-amd64)"
    kernel="$(printf '%s\n' "${builds[@]}" | awk -F/ '{print $4}' | sort -V | tail -n 1)"
fi
sysout="/lib/modules/$kernel/build"
[ -f "$sysout/Makefile" ] || die "no kernel headers for '$kernel' in $sysout"
# Debian splits the headers into an output tree (build) and a source tree
# (source); NVIDIA's Makefile wants both.
if [ -d "/lib/modules/$kernel/source" ]; then
    syssrc="/lib/modules/$kernel/source"
else
    syssrc="$sysout"
fi

# --- patches ----------------------------------------------------------------
shopt -s nullglob
patches=("$PATCH_DIR"/[0-9][0-9][0-9][0-9]-*.patch)
shopt -u nullglob
series=()
for p in "${patches[@]}"; do
    case "$(basename "$p")" in
        0000-*) ;;  # the cover letter
        *) series+=("$p") ;;
    esac
done
if [ "$apply" -eq 1 ]; then
    [ ${#series[@]} -gt 0 ] || die "no patches found in $PATCH_DIR"
    if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        echo "build.sh: applying ${#series[@]} patches with git am"
        git -C "$src" -c user.name="${GIT_AUTHOR_NAME:-gvm build}" \
            -c user.email="${GIT_AUTHOR_EMAIL:-gvm-build@localhost}" \
            am --keep-cr "${series[@]}" ||
            die "git am failed; run 'git -C $src am --abort' and check that SRC is a clean $EXPECTED_VERSION tree"
    else
        echo "build.sh: applying ${#series[@]} patches with patch -p1"
        for p in "${series[@]}"; do
            patch -d "$src" -p1 --forward --batch --silent < "$p" ||
                die "patch $(basename "$p") does not apply (already applied? use --no-apply)"
        done
    fi
fi

# --- build ------------------------------------------------------------------
log="$src/gvm-build.log"
make_vars=(SYSSRC="$syssrc" SYSOUT="$sysout")
if [ "$werror" -eq 1 ]; then
    make_vars+=(WARNINGS_AS_ERRORS=1)
fi

# What the top-level Makefile does for nvidia.ko: point kernel-open at the
# freshly built nv-kernel.o.
link_nv_kernel() {
    local objs=("$src"/src/nvidia/_out/*/nv-kernel.o)
    [ -f "${objs[0]}" ] || { echo "nv-kernel.o was not built" >&2; return 1; }
    ln -sf "../../${objs[0]#"$src"/}" "$src/kernel-open/nvidia/nv-kernel.o_binary"
}

echo "build.sh: building against $kernel with $jobs jobs; log: $log"
start="$(date +%s)"
status=0
{
    if [ "$build_all" -eq 1 ]; then
        make -C "$src" -j"$jobs" modules "${make_vars[@]}"
    else
        # nv-kernel.o is the OS-agnostic part of nvidia.ko (the RM); the
        # series changes it, nvidia.ko and nvidia-uvm.ko and nothing else.
        make -C "$src/src/nvidia" -j"$jobs" &&
        link_nv_kernel &&
        make -C "$src/kernel-open" -j"$jobs" modules NV_KERNEL_MODULES="nvidia nvidia-uvm" "${make_vars[@]}"
    fi
} > "$log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - start ))

warnings="$(grep -c 'warning:' "$log" || true)"
echo "build.sh: finished in ${elapsed}s with exit status $status; compiler warnings: $warnings"
if [ "$warnings" -gt 0 ]; then
    grep 'warning:' "$log" | sort | uniq -c | sort -rn | head -n 20 >&2
fi
[ "$status" -eq 0 ] || { tail -n 30 "$log" >&2; die "build failed, see $log"; }

for ko in "$src"/kernel-open/nvidia.ko "$src"/kernel-open/nvidia-uvm.ko; do
    [ -f "$ko" ] || die "build reported success but $ko is missing"
    echo "build.sh: built $ko"
done
