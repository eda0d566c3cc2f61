# GPU deployment image: CUDA + TensorRT (NVIDIA's TensorRT container) + mpq-export.
#   docker build -t mpq-export .
#   docker run --gpus all --rm -v "$PWD/models:/models" mpq-export /models/unet --budget 8 -o /models/unet.mpq --build-engine yes
# The base image carries TensorRT's Python bindings, so `--build-engine` builds a .plan beside the ONNX.
FROM nvcr.io/nvidia/tensorrt:25.10-py3

WORKDIR /opt/mpq-export
COPY pyproject.toml README.md ./
COPY mpq_export ./mpq_export
COPY tools ./tools
# CPU torch is enough for exporting diffusers folders; TensorRT comes from the base image.
RUN python3 -m pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        ".[torch]" && \
    python3 -c "import tensorrt, mpq_export; print('tensorrt', tensorrt.__version__)"

ENV MPQ_EXPORT_CACHE=/models/.mpq-export-cache
ENTRYPOINT ["mpq-export"]
CMD ["--help"]
