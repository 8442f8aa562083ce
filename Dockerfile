# One image, three programs: `regmirror mirror | operator | node-agent` (the first argument).
#
#   docker build -t regmirror:dev .
#   docker build --build-arg BASE_IMAGE=my-registry/node:24-slim -t regmirror:dev .
#
# BASE_IMAGE must provide Node 24 as `node` on PATH, and npm for the build stage. The image runs
# compiled JavaScript (tsconfig.build.json): the mirror idles about 30 MB smaller than when Node
# strips the TypeScript itself at start. Written for the classic builder too (dockerd 20.10
# without BuildKit builds it): no RUN --mount, no heredocs.
ARG BASE_IMAGE=node:24-bookworm-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only (none needs an install script); TypeScript, at the version the lock
# file pins, goes to /tools: it only emits JavaScript here (type checking is the tests' job).
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=warn \
 && npm install --prefix /tools --no-audit --no-fund --loglevel=warn \
      "typescript@$(node -p "require('./package-lock.json').packages['node_modules/typescript'].version")"
COPY tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY common ./common
COPY mirror ./mirror
COPY operator ./operator
COPY node-agent ./node-agent
RUN /tools/node_modules/.bin/tsc -p tsconfig.build.json --outDir /out \
 && cp bin/regmirror.sh /out/bin/regmirror.sh

FROM ${BASE_IMAGE}
ENV NODE_ENV=production
# /app: the compiled programs, their node_modules, and package.json (the operator reads its version there).
WORKDIR /app
# The mirror's pods run as 65532 (operator/desired/deployment.ts); the name is for ps and logs.
RUN groupadd --system --gid 65532 regmirror \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin regmirror
COPY --from=build /app/node_modules ./node_modules
COPY package.json ./
COPY --from=build /out ./
# `regmirror` on PATH is what the operator's pods run (command: [regmirror]): bin/regmirror.sh, which
# execs node with the flags it documents, so node is PID 1 and gets SIGTERM itself; each program
# handles it (drains, steps down, exits). Files stay root's and read-only: the image works with
# readOnlyRootFilesystem.
RUN ln -s /app/bin/regmirror.sh /usr/local/bin/regmirror \
 && chmod 0755 /app/bin/regmirror.sh \
 && regmirror --help > /dev/null
USER 65532:65532
# mirror (registry API, /metrics), operator (/metrics, /healthz, /readyz)
EXPOSE 5000 8080
ENTRYPOINT ["regmirror"]
CMD ["--help"]
