#!/bin/sh
# How regmirror is started in its image (/usr/local/bin/regmirror), by `npm start` and by the
# benchmark: compiled JavaScript when it sits next to this file (the image and the benchmark build
# it with tsconfig.build.json), else the TypeScript sources as they are.
#
# Memory settings, measured on the mirror under the benchmark's load (bench/profiling.md has the
# runs); throughput is unchanged except manifests (about 20% fewer requests per second, still more
# than 15 times distribution's):
#   --max-semi-space-size=1    V8's young generation stays at 1 MiB per semi-space instead of
#                              growing to 16 MiB and more while blobs stream: peak 195 -> 141 MB at
#                              2 MiB. 1 rather than 2: each 64 KiB the upstream socket delivers is a
#                              new ArrayBuffer, freed only by the next young collection; twice as
#                              many collections hold half as many, and cold fills peaked at 109-115
#                              MB instead of 120-143 (same fills, alternating runs).
#   --heap-growing-percent=100 the old generation is collected once it has doubled what was live,
#                              not up to 4 times as by default (manifest load: 212 MB peak with the
#                              default). Not lower: at 60 and below V8 runs a full collection about
#                              every 100 ms while a cold blob streams in (each 64 KiB from the
#                              upstream socket is a new ArrayBuffer), 0.3 s of the main thread and
#                              0.5 s of its workers per 200 MB; at 100 cold 8 clients take 0.59x
#                              distribution's time instead of 0.73x, for about 5 MB more peak.
#   --no-allocation-site-pretenuring  under manifest load V8 decided that one allocation site's
#                              objects live long (all of them were alive at a young collection,
#                              --trace-pretenuring) and allocated them in the old generation, where
#                              they died a little later and waited for a full collection: manifest
#                              load peaked at 131-141 MB with it, 125-126 without (same load,
#                              alternating runs), same requests per second.
#   MALLOC_ARENA_MAX=1         one malloc arena for every thread: about 5-15 MB less.
#   MALLOC_MMAP_THRESHOLD_=262144  allocations of 256 KiB and more get their own mapping, returned
#                              on free (a fixed threshold: glibc otherwise raises it as it goes and
#                              keeps such blocks in its heap): after manifest load 133 -> 114 MB.
here=$(dirname "$(readlink -f "$0")")
entry="$here/regmirror.js"
[ -f "$entry" ] || entry="$here/regmirror.ts"
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}"
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-262144}"
exec node --max-semi-space-size=1 --heap-growing-percent=100 --no-allocation-site-pretenuring "$entry" "$@"
