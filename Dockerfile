# docker build -t gateway . && docker run -p 8080:8080 -e GATEWAY_SECRET=... \
#   -v $PWD/config.yaml:/etc/gateway/config.yaml -v $PWD/users.yaml:/etc/gateway/users.yaml gateway
FROM python:3.11-slim
RUN useradd --system --home /nonexistent --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/gateway /var/lib/gateway && chown gateway /var/lib/gateway
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && rm -rf /src
USER gateway
ENV GATEWAY_CONFIG=/etc/gateway/config.yaml
EXPOSE 8080
HEALTHCHECK CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/_gateway/healthz')" || exit 1
ENTRYPOINT ["gateway"]
CMD ["run"]
