#!/usr/bin/env python3
"""Would INT8 Q/DQ on attention's own products make onnxruntime's CPU provider faster? In one process.

    python tools/bench_attention.py [--batch 2] [--heads 8] [--tokens 1024] [--context 1024]
                                    [--head-dim 8,40] [--rounds 20] [--threads 0]

Weight quantization leaves attention's activation-by-activation products (Q K^T and softmax(.) V)
in float; on sd15-mini they are about half of the W8A8 model's time (docs/speed.md). This builds
the attention core alone (MatMul, scale, Softmax, MatMul) at the given shapes, once in FP32 and
once with symmetric INT8 Q/DQ (UINT8, zero point 128, as the onnxruntime target writes) on Q, K,
the probabilities and V, with ranges from the FP32 run's own |max|, and times both in rotated order
in each round. Prints, per head size, the latency ratio Q/DQ / FP32 (min / median / max over the
rounds), the kernels onnxruntime chose for the Q/DQ graph, and the relative output error.

The defaults are sd15-mini's first attention level at 32x32 latents (1,024 tokens, 8 heads of 8)
and SD 1.5's at the same latent size (8 heads of 40).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def attention_model(shape: tuple[int, int, int, int], ranges: dict[str, float] | None) -> bytes:
    """softmax(Q K^T / sqrt(d)) V over [batch*heads, tokens, d]; with INT8 Q/DQ on Q, K, P, V when ranges."""
    from onnx import TensorProto, helper, numpy_helper

    bh, tokens, context, d = shape
    nodes, inits = [], []

    def qdq(x: str) -> str:
        if ranges is None:
            return x
        inits.extend([numpy_helper.from_array(np.array(ranges[x] / 127, np.float32), f"{x}_scale"),
                      numpy_helper.from_array(np.array(128, np.uint8), f"{x}_zero_point")])
        nodes.append(helper.make_node("QuantizeLinear", [x, f"{x}_scale", f"{x}_zero_point"], [f"{x}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{x}_q", f"{x}_scale", f"{x}_zero_point"], [f"{x}_dq"]))
        return f"{x}_dq"

    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "inv_sqrt_d"))
    nodes.append(helper.make_node("MatMul", [qdq("q"), qdq("k")], ["scores"]))
    nodes.append(helper.make_node("Mul", ["scores", "inv_sqrt_d"], ["scaled"]))
    nodes.append(helper.make_node("Softmax", ["scaled"], ["p"], axis=-1))
    nodes.append(helper.make_node("MatMul", [qdq("p"), qdq("v")], ["out"]))
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("q", f, [bh, tokens, d]),
                                                   helper.make_tensor_value_info("k", f, [bh, d, context]),
                                                   helper.make_tensor_value_info("v", f, [bh, context, d])],
                              [helper.make_tensor_value_info("out", f, [bh, tokens, d]),
                               helper.make_tensor_value_info("p", f, [bh, tokens, context])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


def measure(shape: tuple[int, int, int, int], rounds: int, threads: int) -> None:
    import onnx
    import onnxruntime as ort

    bh, tokens, context, d = shape
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((bh, tokens, d), dtype=np.float32),
             "k": rng.standard_normal((bh, d, context), dtype=np.float32),
             "v": rng.standard_normal((bh, context, d), dtype=np.float32)}

    def session(model: bytes, optimized: str | None = None):
        so = ort.SessionOptions()
        so.log_severity_level = 3  # not the warning about saving an optimised model
        if threads:
            so.intra_op_num_threads = threads
        if optimized:
            so.optimized_model_filepath = optimized
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    fp32 = session(attention_model(shape, None))
    out, p = fp32.run(None, feeds)
    ranges = {**{k: float(np.abs(v).max()) for k, v in feeds.items()}, "p": float(p.max())}
    with tempfile.TemporaryDirectory() as tmp:
        opt = os.path.join(tmp, "qdq.opt.onnx")
        quant = session(attention_model(shape, ranges), opt)
        kernels = [n.op_type for n in onnx.load(opt).graph.node]
    out_q = quant.run(None, feeds)[0]
    sessions = [fp32, quant]
    times = [[], []]
    for r in range(rounds):
        for j in range(2):
            k = (j + r) % 2
            t0 = time.perf_counter()
            sessions[k].run(["out"], feeds)
            times[k].append(time.perf_counter() - t0)
    ratio = np.array(times[1]) / np.array(times[0])
    err = float(np.linalg.norm(out_q - out) / np.linalg.norm(out))
    print(f"batch*heads {bh}, tokens {tokens}, context {context}, head size {d}: FP32 {1000 * np.median(times[0]):.1f} ms, "
          f"Q/DQ {1000 * np.median(times[1]):.1f} ms; Q/DQ / FP32 = {ratio.min():.2f} / {np.median(ratio):.2f} / "
          f"{ratio.max():.2f} (min / median / max, {rounds} rounds); relative output error on these random inputs {err:.4f}")
    print(f"  onnxruntime's kernels for the Q/DQ graph: {' '.join(kernels)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1024, help="query tokens (latent height x width)")
    ap.add_argument("--context", type=int, default=1024, help="key tokens (the same for self-attention)")
    ap.add_argument("--head-dim", default="8,40", help="comma-separated head sizes")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    args = ap.parse_args()
    for d in (int(x) for x in args.head_dim.split(",")):
        measure((args.batch * args.heads, args.tokens, args.context, d), args.rounds, args.threads)


if __name__ == "__main__":
    main()
