# One image for every HemoStat agent and the dashboard; the command picks the role:
#   docker run hemostat agent monitor | hemostat dashboard | hemostat check monitor
#
# Air-gapped builds: put every wheel in deploy/wheelhouse/ (scripts/offline-images.sh does) and
# build with --build-arg PIP_NO_INDEX=1.

FROM python:3.11-slim AS build
ARG PIP_NO_INDEX=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY deploy/wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md ./
COPY agents agents
COPY shared shared
COPY dashboard dashboard
RUN pip wheel --wheel-dir /wheels --find-links /wheelhouse .

FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    HEMOSTAT_RUNBOOKS_DIR=/app/runbooks HEMOSTAT_LOG_FORMAT=json HOME=/tmp
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels hemostat \
    && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin hemostat
WORKDIR /app
COPY runbooks /app/runbooks
USER 10001
EXPOSE 8090 9090 8501
ENTRYPOINT ["hemostat"]
CMD ["status"]
