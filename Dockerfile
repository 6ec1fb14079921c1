# docker build -t gateway .   How to run it (volumes, environment, compose): docs/docker.md
FROM python:3.11-slim
# A fixed uid, so a host folder mounted as the state volume can be given to it.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home /nonexistent --shell /usr/sbin/nologin gateway \
 && mkdir -p /var/lib/gateway && chown gateway:gateway /var/lib/gateway
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && rm -rf /src
# Read-only to the gateway: secrets come from the environment, the users file is mounted.
COPY docker/config.yaml /etc/gateway/config.yaml
USER gateway
WORKDIR /var/lib/gateway
ENV GATEWAY_CONFIG=/etc/gateway/config.yaml
# What the gateway writes (the assertion key): keep it across restarts and upgrades.
VOLUME /var/lib/gateway
EXPOSE 8080
HEALTHCHECK CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/_gateway/healthz')" || exit 1
ENTRYPOINT ["gateway"]
CMD ["run"]
