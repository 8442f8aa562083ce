#!/bin/sh
# How regmirror is started in its image (/usr/local/bin/regmirror), by `npm start` and by the
# benchmark: compiled JavaScript when it sits next to this file (the image and the benchmark build
# it with tsconfig.build.json), else the TypeScript sources as they are.
#
# Memory settings, measured on the mirror under the benchmark's load (bench/profiling.md has the
# runs); throughput is unchanged except manifests (about 20% fewer requests per second, still more
# than 15 times distribution's):
#   --max-semi-space-size=2    V8's young generation stays at 2 MiB per semi-space instead of
#                              growing to 16 MiB and more while blobs stream: peak 195 -> 141 MB.
#   --heap-growing-percent=20  the old generation is collected when it has grown 20% past what was
#                              live, not up to 4 times: peak after manifest load 212 -> 159 MB.
#   MALLOC_ARENA_MAX=1         one malloc arena for every thread: about 5-15 MB less.
#   MALLOC_MMAP_THRESHOLD_=262144  allocations of 256 KiB and more get their own mapping, returned
#                              on free (a fixed threshold: glibc otherwise raises it as it goes and
#                              keeps such blocks in its heap): after manifest load 133 -> 114 MB.
here=$(dirname "$(readlink -f "$0")")
entry="$here/regmirror.js"
[ -f "$entry" ] || entry="$here/regmirror.ts"
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}"
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-262144}"
exec node --max-semi-space-size=2 --heap-growing-percent=20 "$entry" "$@"
