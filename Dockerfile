# syntax=docker/dockerfile:1
# The runas-migrate worker: sources compiled and the workflow bundle made at build time, so the
# container never runs webpack and needs no writable folder. Runs as the image's non-root user.
ARG NODE_VERSION=20.19

FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Sources are not here yet: the prepare script (a build) would fail, and no install script is needed.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run -s build && npm prune --omit=dev --ignore-scripts

FROM node:${NODE_VERSION}-bookworm-slim AS worker
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY bin ./bin
USER node
# Prometheus metrics, when RUNAS_MIGRATE_METRICS_ADDRESS asks for them (docker-compose.yml does).
EXPOSE 9464
ENTRYPOINT ["node", "--max-semi-space-size=1", "--heap-growing-percent=10", "bin/runas-migrate.js"]
CMD ["worker"]
