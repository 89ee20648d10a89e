# s3seg server for a CUDA GPU host: the inference server, and the public API (or, with S3SEG_WORKERS,
# the public API as a gateway in front of GPU workers; see docs/api.md and docs/deploy.md section 10).
#
# NOT BUILT OR RUN HERE: the machine this was written on has no Docker engine (and no GPU). The install
# steps below were rehearsed outside Docker on a plain Python 3.11 virtualenv (same files, same pip
# commands, same constraint on torch); the server command and the HEALTHCHECK command were run
# against a local server. See docs/deploy.md.
#
#   docker build -t s3seg .
#   docker run -d --gpus all -p 8000:8000 \
#       -e S3SEG_API_KEY -e HF_TOKEN -v hf-cache:/home/app/.cache/huggingface s3seg
#
# Weights are never baked into the image. Either mount them:
#   -v /models:/models:ro -e S3SEG_MODEL=/models/sam3          (a save_pretrained folder)
#   -v /models:/models:ro -e SAM3_WEIGHTS_PATH=/models/sam3.pt (Meta's official checkpoint)
# or let the server download the gated facebook/sam3 at start with -e HF_TOKEN into a mounted cache
# volume (-v hf-cache:/home/app/.cache/huggingface) so it is fetched only once.
#
# The API key comes from -e S3SEG_API_KEY. Without it `s3seg serve` refuses to listen on 0.0.0.0 and the
# container exits with "refusing to serve on 0.0.0.0 without an API key" (pass -e S3SEG_ALLOW_NO_KEY=1
# only on a private network).

# PyTorch 2.8 + CUDA 12.8 + cuDNN 9, Python 3.11 (conda in /opt/conda). Needs an NVIDIA driver that
# supports CUDA 12.8 (R570 or newer). torch >= 2.6 is required in practice: current transformers 5.x
# releases switch PyTorch off below 2.6.
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build needs (hatchling reads README.md and LICENSE from pyproject.toml).
WORKDIR /opt/s3seg
COPY pyproject.toml README.md LICENSE ./
COPY src ./src

# Install s3seg with the server, cloud (R2, Supabase, PostgreSQL) and official extras, pinning torch/torchvision to the CUDA builds the
# base image ships so pip can never swap them for other wheels.
RUN python -c "from importlib.metadata import version as v; print(f'torch=={v(\"torch\")}'); print(f'torchvision=={v(\"torchvision\")}')" \
        > /tmp/keep-torch.txt \
 && pip install -c /tmp/keep-torch.txt ".[server,cloud,official]" \
 && rm /tmp/keep-torch.txt \
 && s3seg --version

# Unprivileged user; its Hugging Face cache is the mount point for a persistent volume (a new named
# volume inherits this directory's ownership).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
 && mkdir -p /home/app/.cache/huggingface \
 && chown -R app:app /home/app/.cache
USER app
WORKDIR /home/app

ENV HF_HOME=/home/app/.cache/huggingface \
    S3SEG_HOST=0.0.0.0 \
    S3SEG_PORT=8000
EXPOSE 8000

# The model loads before the server listens (first start with HF_TOKEN also downloads ~3.5 GB), hence
# the long start period. /health needs no API key.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD python -c "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('S3SEG_PORT', '8000'), timeout=5).status == 200 else 1)"

# uvicorn drains in-flight requests for up to 30 s on SIGTERM: use `docker stop -t 35`.
CMD ["s3seg", "serve"]
