#!/bin/sh
# Compiler launcher for the sanitized agent (CMAKE_C_COMPILER_LAUNCHER). real.c holds the agent's
# dlsym interposer, which the sanitizer runtime calls while it initialises, before its shadow memory
# and its interceptors exist: that one file is compiled without address/thread instrumentation and
# with real_san_prelude.h (see there). Every other file is compiled as given.
case "$*" in
  *cuda-intercept/src/real.c*)
    exec "$@" -fno-sanitize=address -fno-sanitize=thread -foptimize-sibling-calls -include "$(dirname "$0")/real_san_prelude.h" ;;
esac
exec "$@"
