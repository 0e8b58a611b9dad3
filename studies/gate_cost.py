"""What the not-dermoscopy gate costs per image, as a share of the model's own kernel time (issue 25).

``python -m studies.gate_cost [--model runtime/models/default] [--runs 20]``

The gate lives inside the exported graph (its score is the output's last column), so it cannot be
switched off at run time and timed apart. Instead ONNX Runtime's own per-node profiler times one
session of the bundle's FP32 ONNX file, and the node times are split in one run into (a) the nodes
that exist only for the gate score (the view-averaged features, Mahalanobis distance, linear probe,
sigmoid: everything not on the classifier's path to its softmax) and (b) the rest. A share measured
inside one run is not moved by a busy machine the way two wall-clock timings are. The issue's limit
is 10 % of the per-image time of the fastest accepted artifact; the gate's ops are the same few
matrix products in every format, while the backbone is what faster formats shrink, so the FP32 share
is read together with the ratio of FP32 to the fastest artifact's latency in the export report.
"""

from __future__ import annotations

import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def gate_only_nodes(graph) -> set[str]:
    """Nodes outside the classifier (``/model/``) that do not feed the classifier's probabilities."""
    producer = {out: node for node in graph.node for out in node.output}
    final = next(n for n in graph.node if graph.output[0].name in n.output)
    on_path: set[str] = set()
    stack = [final.input[0]]  # the classifier's softmax; the final Concat's other input is the gate score
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in on_path:
            continue
        on_path.add(node.name)
        stack.extend(node.input)
    return {n.name for n in graph.node
            if n.name not in on_path and not n.name.startswith("/model/") and n is not final}


def _share(times: dict[str, float], gate: set[str]) -> tuple[float, float]:
    g = sum(t for name, t in times.items() if name in gate)
    return g, sum(times.values()) - g


def onnxruntime_times(path: Path, shape: list[int], batch: int, runs: int, threads: int) -> dict[str, float]:
    """Per-node kernel time (ms, summed over ``runs``) from ONNX Runtime's profiler."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as work:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(work) / "profile")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal([batch] + shape[1:]).astype(np.float32)
        for _ in range(runs):
            sess.run(None, {sess.get_inputs()[0].name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, float] = collections.Counter()
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            times[ev["name"][:-len("_kernel_time")]] += ev["dur"] / 1e3
    return times


def openvino_compare(path: Path, nogate: Path, shape: list[int], runs: int, threads: int,
                     precision: str) -> tuple[dict[str, float], float, float]:
    """OpenVINO: per-node time of the last inference, and the median wall time of the gated graph and of
    the same graph cut before the gate, alternating in one run."""
    import openvino as ov

    core = ov.Core()
    config = {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    requests = {}
    for name, p in (("gate", path), ("nogate", nogate)):
        requests[name] = core.compile_model(core.read_model(str(p)), "CPU", config).create_infer_request()
        for _ in range(20):  # first inferences repack weights
            requests[name].infer({0: x})
    walls: dict[str, list[float]] = {"gate": [], "nogate": []}
    for i in range(runs * 5):
        for name in (("gate", "nogate") if i % 2 else ("nogate", "gate")):
            t0 = time.perf_counter()
            requests[name].infer({0: x})
            walls[name].append(time.perf_counter() - t0)
    times = {p.node_name: p.real_time.total_seconds() * 1e3 for p in requests["gate"].get_profiling_info()}
    return times, statistics.median(walls["gate"]) * 1e3, statistics.median(walls["nogate"]) * 1e3


@click.command(help=__doc__)
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=REPO / "runtime" / "models" / "default", show_default=True)
@click.option("--runs", type=int, default=20, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def main(model: Path, runs: int, threads: int) -> None:
    import onnx
    from onnx import utils

    path = model / "model.onnx"
    proto = onnx.load(str(path))
    gate = gate_only_nodes(proto.graph)
    if not gate:
        raise click.ClickException(f"{path} has no gate nodes (a model without a gate)")
    shape = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    final = next(n for n in proto.graph.node if proto.graph.output[0].name in n.output)
    click.echo(f"{path}: {len(gate)} gate-only nodes; load average {Path('/proc/loadavg').read_text().split()[:3]}")
    for batch in (1, 16):
        g, rest = _share(onnxruntime_times(path, shape, batch, max(2, runs // (1 if batch == 1 else 4)),
                                           threads), gate)
        click.echo(f"onnxruntime fp32, batch {batch:2d}: gate-only kernel time {100 * g / (g + rest):.2f} % "
                   f"of the model's ({g:.1f} of {g + rest:.1f} ms)")
    try:
        import openvino  # noqa: F401
    except ImportError:
        click.echo("openvino not installed: its figures skipped")
        return
    import openvino as ov

    precision = "bf16" if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
    with tempfile.TemporaryDirectory() as work:
        nogate = Path(work) / "nogate.onnx"
        utils.extract_model(str(path), str(nogate), [proto.graph.input[0].name], [final.input[0]])
        times, with_gate, without = openvino_compare(path, nogate, shape, runs, threads, precision)
    g, rest = _share(times, gate)
    click.echo(f"openvino {precision}, batch  1: gate-only node time {100 * g / (g + rest):.2f} % "
               f"({g:.2f} of {g + rest:.2f} ms); wall {with_gate:.2f} ms with the gate, {without:.2f} ms "
               f"cut before it ({100 * (with_gate - without) / without:+.1f} %)")
    click.echo(f"load average {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
