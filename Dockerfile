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
EXPOSE 9090
ENTRYPOINT ["/cachesync", "run", "-config", "/configs/cachesync.yaml"]
