# vitdex: one image for the API (`vitdex serve`) and the workers (`vitdex worker`).
#
# PyPI's torch wheel for Linux is the CUDA build (several GB). For a CPU-only image pass
# the PyTorch CPU wheel index:  docker build --build-arg PIP_EXTRA_INDEX_URL=<cpu index> .
# For GPUs, build FROM an nvidia/cuda runtime image with Python 3.11 instead and keep the
# default wheel; see README ("Docker").
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    VITDEX_HOME=/data \
    HF_HOME=/data/hf

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY vitdex ./vitdex
# Editable, so the Alembic scripts under /app/migrations travel with the package.
RUN pip install -e '.[heif,postgres,qdrant,cluster,train]'

RUN useradd --create-home --uid 1000 vitdex && mkdir -p /data && chown vitdex /data
USER vitdex
VOLUME ["/data"]
EXPOSE 8000
CMD ["vitdex", "serve", "--host", "0.0.0.0", "--port", "8000"]
