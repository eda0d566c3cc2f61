# GPU deployment image: CUDA + TensorRT (NVIDIA's TensorRT container) + mpq-export.
#   docker build -t mpq-export .
#   docker run --gpus all --rm -v "$PWD/models:/models" mpq-export /models/unet --budget 8 -o /models/unet.mpq --build-engine yes
# The GPU tests (engines built and compared with onnxruntime through Polygraphy):
#   docker build --target test -t mpq-export-test . && docker run --gpus all --rm mpq-export-test
# The base image carries TensorRT's Python bindings, so `--build-engine` builds a .plan beside the ONNX.
FROM nvcr.io/nvidia/tensorrt:25.10-py3 AS base

WORKDIR /opt/mpq-export
COPY pyproject.toml README.md ./
COPY mpq_export ./mpq_export
COPY tools ./tools
# CPU torch is enough for exporting diffusers folders; TensorRT comes from the base image.
RUN python3 -m pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        ".[torch]" && \
    python3 -c "import tensorrt, mpq_export; print('tensorrt', tensorrt.__version__)"
ENV MPQ_EXPORT_CACHE=/models/.mpq-export-cache

# pytest and the tests, for `pytest -m gpu` against this image's TensorRT
FROM base AS test
COPY tests ./tests
COPY calib_data ./calib_data
RUN python3 -m pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[torch,test]"
ENV MPQ_EXPORT_CACHE=/tmp/mpq-export-cache
ENTRYPOINT ["python3", "-m", "pytest", "-q", "-m", "gpu", "tests"]
CMD []

# the default image: the mpq-export command
FROM base AS runtime
ENTRYPOINT ["mpq-export"]
CMD ["--help"]
