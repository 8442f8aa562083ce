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
#   --heap-growing-percent=100 the old generation is collected once it has doubled what was live,
#                              not up to 4 times as by default (manifest load: 212 MB peak with the
#                              default). Not lower: at 60 and below V8 runs a full collection about
#                              every 100 ms while a cold blob streams in (each 64 KiB from the
#                              upstream socket is a new ArrayBuffer), 0.3 s of the main thread and
#                              0.5 s of its workers per 200 MB; at 100 cold 8 clients take 0.59x
#                              distribution's time instead of 0.73x, for about 5 MB more peak.
#   MALLOC_ARENA_MAX=1         one malloc arena for every thread: about 5-15 MB less.
#   MALLOC_MMAP_THRESHOLD_=262144  allocations of 256 KiB and more get their own mapping, returned
#                              on free (a fixed threshold: glibc otherwise raises it as it goes and
#                              keeps such blocks in its heap): after manifest load 133 -> 114 MB.
here=$(dirname "$(readlink -f "$0")")
entry="$here/regmirror.js"
[ -f "$entry" ] || entry="$here/regmirror.ts"
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}"
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-262144}"
exec node --max-semi-space-size=2 --heap-growing-percent=100 "$entry" "$@"
