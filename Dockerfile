# Sluice gateway image. Two stages: `build` installs every dependency from the lockfile (npm ci) and compiles
# dist/; the final stage holds production dependencies, dist/ and bin/ only, runs as the non-root `node` user
# under tini, and never sees the build stage's registry CA.
#   docker build -t sluice:local .                          (scripts/docker-build.sh adds the CA where needed)
#   docker run --rm -p 9080:9080 -p 9091:9091 -v $PWD/sluice.yaml:/etc/sluice/sluice.yaml:ro -e OPENAI_API_KEY sluice:local
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
# .npm-build-ca.pem (optional; the [m] glob lets the COPY match nothing): the CA bundle npm should trust, for a
# registry reached through a TLS-intercepting proxy. scripts/docker-build.sh puts it in the context for one build.
# Build stage only: the final stage copies node_modules/ and dist/ out of this one, never its files or layers.
ARG NPM_REGISTRY=""
WORKDIR /build
COPY package.json package-lock.json .npm-build-ca.pe[m] ./
RUN set -eu; \
    if [ -f .npm-build-ca.pem ]; then export npm_config_cafile="$PWD/.npm-build-ca.pem"; fi; \
    if [ -n "$NPM_REGISTRY" ]; then export npm_config_registry="$NPM_REGISTRY"; fi; \
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; \
    rm -f .npm-build-ca.pem
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build-ranks.mjs scripts/bundle.mjs ./scripts/
COPY src ./src
RUN npm run build --silent \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error \
 && find dist -name '*.map' -delete \
 # uWebSockets.js ships a binary per OS, CPU and Node ABI (~110 MB); keep the one this image loads.
 && keep="uws_linux_$(node -p process.arch)_$(node -p process.versions.modules).node" \
 && test -f "node_modules/uWebSockets.js/binaries/$keep" \
 && find node_modules/uWebSockets.js -name '*.node' ! -name "$keep" -delete

FROM ${NODE_IMAGE}
# tini as PID 1: forwards SIGTERM to node (which drains, flushes quota deltas and exits) and reaps zombies.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
ENV NODE_ENV=production SLUICE_LOG=info
WORKDIR /app
COPY --from=build /build/package.json ./package.json
COPY --from=build /build/node_modules ./node_modules
COPY --from=build /build/dist ./dist
COPY bin ./bin
COPY examples/embedded.yaml ./examples/embedded.yaml
# The default config; mount your own over it. Secrets come from the environment ($ENV://NAME in the file).
COPY deploy/docker/sluice.yaml /etc/sluice/sluice.yaml
USER node
# 9080: the gateway (listen.port); 9091: /metrics, /healthz, /readyz (admin.port).
EXPOSE 9080 9091
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9091/readyz',{signal:AbortSignal.timeout(2500)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
STOPSIGNAL SIGTERM
# --min-semi-space-size: see docs/operations.md, "Node flags".
ENTRYPOINT ["/usr/bin/tini", "--", "node", "--min-semi-space-size=8", "--max-semi-space-size=8", "/app/bin/sluice.mjs"]
CMD ["start", "--config", "/etc/sluice/sluice.yaml"]
