# syntax=docker/dockerfile:1
# The sandbox image: only the runtime student code needs (Python, torch, triton, numpy, safetensors, regex)
# and a C compiler for Triton's launcher. Nothing of the autograder is in it: the worker bind-mounts the runner
# stub read-only at /runner and the submission at /work for each grading, and hidden tests, reference_impl and
# the graders never leave the worker. Build from the repository root (the context is not used):
#   docker build -f docker/sandbox.Dockerfile -t autograder-sandbox:cpu .
#   docker build -f docker/sandbox.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t autograder-sandbox:cuda .
#   docker build -f docker/sandbox.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/rocm6.4 -t autograder-sandbox:rocm .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm

# Match the worker image's: the trusted grader and the student's code exchange tensors and compare timings.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Triton compiles a small C launcher for each kernel (into TRITON_CACHE_DIR, under the sandbox's /tmp).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# CUDA and ROCm builds of torch bring their own Triton; the CPU build does not (TRITON_INTERPRET=1 runs it).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}" numpy safetensors regex \
    && (python -c "import triton" 2>/dev/null || pip install triton)

# Mount points for the worker's binds; the root file system is read-only at run time.
RUN mkdir -p /work /runner && chmod 0755 /work /runner

USER 65534:65534
WORKDIR /work
