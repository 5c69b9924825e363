# The bulwark binary in a small Debian image. Used by docker-compose.yml; build with
#   docker build -t bulwark .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin bulwark

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/bulwark --create-home bulwark
COPY --from=build /src/target/release/bulwark /usr/local/bin/bulwark
USER bulwark
# Two malloc arenas: under 32 concurrent pushes glibc's default (eight per core) peaked at
# 91-104 MiB, two arenas at 76-79 MiB, no slower (docs/OPERATIONS.md, Memory).
ENV BULWARK_DATA_DIR=/var/lib/bulwark \
    BULWARK_LISTEN=0.0.0.0:5000 \
    MALLOC_ARENA_MAX=2
VOLUME /var/lib/bulwark
EXPOSE 5000
ENTRYPOINT ["bulwark"]
CMD ["serve"]
