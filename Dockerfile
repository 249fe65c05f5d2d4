# Builds the cachesync daemon image used by docker-compose.yml.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /cachesync ./cmd/cachesync

FROM gcr.io/distroless/static-debian12
COPY --from=build /cachesync /cachesync
COPY configs/ /configs/
# 9090: the public API. The admin listener (9091: /metrics, /readyz,
# pprof, /admin) binds the container's loopback unless CACHESYNC_ADMIN_ADDR
# says otherwise, and is not exposed here. No admin token is in the image:
# set CACHESYNC_ADMIN_TOKEN to turn the admin endpoints on.
EXPOSE 9090
ENTRYPOINT ["/cachesync", "run", "-config", "/configs/cachesync.yaml"]
