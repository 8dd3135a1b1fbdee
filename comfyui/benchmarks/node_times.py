"""Time of each node of the pack's workflows in a real ComfyUI on this machine, tiny models.

    python comfyui/benchmarks/node_times.py [--runs 3] [--out comfyui/benchmarks/results]

Starts ComfyUI 0.3.64 with the pack as the tests do (``comfyui/tests/harness.py``), runs each
workflow of ``comfyui/workflows`` ``--runs`` times, each run on another 40x56 crop of Set14's
comic (a graph without an image: another seed), so that ComfyUI runs every node again but the
loaders (it keeps their outputs), and times every node from ComfyUI's own ``executing``
messages on its websocket (the time from a node's start to the next one's). The first run loads
the models; later runs are warm. Writes ``node_times.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from PIL import Image

from common_kernels.runtime.bench import figure, machine, write_drawn_report

HERE = Path(__file__).resolve().parent
PACK = HERE.parent
sys.path.insert(0, str(PACK / "tests"))
from harness import Comfy, start, stop  # noqa: E402

WORKFLOWS = PACK / "workflows"
IMAGE = PACK.parent.parent / "shared" / "data" / "set14" / "comic.bmp"


async def node_times(comfy: Comfy, graph: dict) -> dict[str, float]:
    """Run ``graph`` once; seconds per node id, from the websocket's ``executing`` messages."""
    client = uuid.uuid4().hex
    host = comfy.url.removeprefix("http://")
    started: list[tuple[str, float]] = []
    body = {"prompt": graph, "client_id": client}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://{host}/ws?clientId={client}") as socket,
    ):
        async with session.post(f"{comfy.url}/prompt", json=body) as reply:
            reply.raise_for_status()
            prompt = (await reply.json())["prompt_id"]
        async for message in socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt:
                continue
            if event["type"] == "execution_error":
                raise RuntimeError(data["exception_message"])
            if event["type"] == "executing":
                started.append((data["node"], time.perf_counter()))
                if data["node"] is None:  # the prompt is done
                    break
    return {node: end - begin for (node, begin), (_, end) in itertools.pairwise(started)}


def varied(graph: dict, images: list[str], run: int) -> dict:
    """``graph`` with run ``run``'s image (or seed, in a graph without an image)."""
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = images[run]
        elif "seed" in node["inputs"] and not any(
            n["class_type"] == "LoadImage" for n in graph.values()
        ):
            node["inputs"]["seed"] = run
    return graph


def run(comfy: Comfy, images: list[str]) -> list[dict]:
    rows = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        graph = json.loads(path.read_text())
        times = [asyncio.run(node_times(comfy, varied(graph, images, run)))
                 for run in range(len(images))]  # fmt: skip
        for node_id, node in graph.items():
            seconds = [t[node_id] for t in times if node_id in t]
            if not seconds:
                continue
            rows.append({
                "workflow": path.stem, "node": node["class_type"], "title": node["_meta"]["title"],
                "first_s": times[0].get(node_id), "warm_s": [t.get(node_id) for t in times[1:]],
                "warm_median_s": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
            })  # fmt: skip
            print(f"{path.stem:22} {node['class_type']:24} {seconds}", flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"Node times in ComfyUI 0.3.64 (--cpu), tiny models, a {report['image']} image; "
        f"{report['machine']['cpu']}, {report['machine']['threads']} threads. First run: the "
        "model loads; warm: median of the later runs (a loader node runs once).",
        "",
        "| workflow | node | first run s | warm s |",
        "|---|---|---:|---:|",
    ]
    for row in report["rows"]:
        warm = "-" if row["warm_median_s"] is None else f"{row['warm_median_s']:.2f}"
        first = "-" if row["first_s"] is None else f"{row['first_s']:.2f}"
        lines.append(f"| {row['workflow']} | {row['node']} | {first} | {warm} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    rows = [r for r in report["rows"] if r["node"] not in ("LoadImage", "SaveImage")]
    with figure(path, figsize=(9, 0.4 * len(rows) + 1)) as (_, axes):
        places = list(range(len(rows)))
        first = [r["first_s"] or 0 for r in rows]
        warm = [r["warm_median_s"] or 0 for r in rows]
        axes.barh([y - 0.2 for y in places], first, height=0.4, label="first run")
        axes.barh([y + 0.2 for y in places], warm, height=0.4, label="warm (median)")
        axes.set_yticks(places, [f"{r['workflow']}: {r['node']}" for r in rows])
        axes.set_xlabel("seconds")
        axes.invert_yaxis()
        axes.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per workflow, >= 2")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error(f"--runs must be >= 2 (one cold, then warm), got {args.runs}")
    with tempfile.TemporaryDirectory() as folder:
        comfy = start(Path(folder))
        try:
            images = []
            for index in range(args.runs):
                crop = Path(folder) / f"example{index}.png"
                box = (60 + 8 * index, 40, 116 + 8 * index, 80)  # 40 x 56 px
                Image.open(IMAGE).convert("RGB").crop(box).save(crop)
                images.append(comfy.upload(crop))
            rows = run(comfy, images)
        finally:
            stop(comfy.process)
    import torch

    report = {"image": "40x56 px", "runs": args.runs, "rows": rows,
              "machine": machine("cpu", "fp32", torch.get_num_threads())}  # fmt: skip
    print(write_drawn_report(args.out / "node_times", report, markdown, plot))


if __name__ == "__main__":
    main()
