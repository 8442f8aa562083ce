# One image, three programs: `regmirror mirror | operator | node-agent` (the first argument).
#
#   docker build -t regmirror:dev .
#   docker build --build-arg BASE_IMAGE=my-registry/node:24-slim -t regmirror:dev .
#
# BASE_IMAGE must provide Node 24 as `node` on PATH, and npm for the dependency stage; Node 24
# runs the TypeScript sources as they are (type stripping), so there is no compile step. Written
# for the classic builder too (dockerd 20.10 without BuildKit builds it): no RUN --mount, no heredocs.
ARG BASE_IMAGE=node:24-bookworm-slim

FROM ${BASE_IMAGE} AS dependencies
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only. None of them needs an install script.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=warn

FROM ${BASE_IMAGE}
ENV NODE_ENV=production
# Node refuses to strip types from files under node_modules, so the app lives in /app, with its
# dependencies in /app/node_modules beside it.
WORKDIR /app
# The mirror's pods run as 65532 (operator/desired/deployment.ts); the name is for ps and logs.
RUN groupadd --system --gid 65532 regmirror \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin regmirror
COPY --from=dependencies /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY common ./common
COPY mirror ./mirror
COPY operator ./operator
COPY node-agent ./node-agent
# `regmirror` on PATH is what the operator's pods run (command: [regmirror]). sh execs node, so
# node is PID 1 and gets SIGTERM itself; each program handles it (drains, steps down, exits).
# Files stay root's and read-only: the image works with readOnlyRootFilesystem.
RUN printf '#!/bin/sh\nexec node /app/bin/regmirror.ts "$@"\n' > /usr/local/bin/regmirror \
 && chmod 0755 /usr/local/bin/regmirror \
 && regmirror --help > /dev/null
USER 65532:65532
# mirror (registry API, /metrics), operator (/metrics, /healthz, /readyz)
EXPOSE 5000 8080
ENTRYPOINT ["regmirror"]
CMD ["--help"]
