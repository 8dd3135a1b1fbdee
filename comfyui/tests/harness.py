"""A real ComfyUI for the node pack's tests and benchmark: ComfyUI 0.3.64's source (the vendored
tarball, or ``COMFYUI_DIR``) unpacked into a folder, the pack linked into ``custom_nodes`` (and
the tests' :mod:`tiny_sdxl` registration), tiny models written into its model folders by the
packages' own commands (and a tiny SDXL checkpoint and LoRA), and ``main.py --cpu``
started on 127.0.0.1 at a free port (:func:`start`), driven over HTTP as ComfyUI's own
``tests/execution`` do (:class:`Comfy`), stopped by its PID (:func:`stop`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import safetensors.torch
import torch
from PIL import Image

from common_kernels.runtime.browser import free_port

PACK = Path(__file__).resolve().parents[1]
REPO = PACK.parent
TARBALL = Path(os.environ.get(
    "COMFYUI_TARBALL", REPO.parent / "shared" / "vendor" / "ComfyUI-v0.3.64-a125cd8.tar.gz"
))  # fmt: skip
STARTUP_SECONDS = 300  # importing the pack's packages and ComfyUI's nodes: ~1 min on 2 cores
RUN_SECONDS = 600


def unpack(target: Path) -> Path:
    """ComfyUI's source folder: ``COMFYUI_DIR`` as it is, else the tarball unpacked here."""
    if "COMFYUI_DIR" in os.environ:
        return Path(os.environ["COMFYUI_DIR"])
    if not TARBALL.is_file():
        raise FileNotFoundError(
            f"no ComfyUI source: {TARBALL} is absent and COMFYUI_DIR is not set"
        )
    with tarfile.open(TARBALL) as archive:
        archive.extractall(target, filter="data")
    return target / "ComfyUI"


TINY_SDXL = Path(__file__).resolve().parent / "tiny_sdxl"


def write_models(models: Path) -> None:
    """The tiny models, written by the packages' commands where ComfyUI's loaders look, and
    the tiny SDXL checkpoint for ComfyUI's own loaders (:mod:`tiny_sdxl`)."""
    for folder in ("upscale_models", "open_clip", "diffusers", "checkpoints", "loras"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    commands = [
        ["semanir", "upscale-models", str(models / "upscale_models")],
        ["itaclip", "tiny-model", str(models / "open_clip" / "tiny-clip")],
        ["diffeat", "tiny-model", str(models / "diffusers" / "tiny-sd15"), "--kind", "sd15"],
        ["pixelsmith", "tiny-model", str(models / "diffusers" / "tiny-sdxl")],
    ]
    scripts = Path(sys.executable).parent  # the session's console scripts
    for name, *arguments in commands:
        done = subprocess.run([str(scripts / name), *arguments], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(arguments)} failed:\n{done.stderr}")
    root = models.parent
    writer = [sys.executable, str(TINY_SDXL / "write_checkpoint.py"), str(models / "checkpoints"),
              str(models / "loras"), str(root / "reference")]  # fmt: skip
    done = subprocess.run(writer, cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"write_checkpoint.py failed:\n{done.stderr}")


@dataclass
class Comfy:
    """A running ComfyUI: its URL, folders and server process."""

    url: str
    root: Path
    process: subprocess.Popen
    log: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def reference(self) -> Path:
        """The tiny SDXL checkpoint's weights as diffusers/transformers folders."""
        return self.root / "reference"

    def latents(self, entry: dict, node: str) -> torch.Tensor:
        """The LATENT samples a SaveLatent node of a finished run wrote."""
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
        (file,) = entry["outputs"][node]["latents"]
        path = self.output / file["subfolder"] / file["filename"]
        return safetensors.torch.load_file(path)["latent_tensor"]

    def upload(self, path: Path) -> str:
        """Upload an image as the page does; returns its name in ComfyUI's input folder."""
        with open(path, "rb") as handle:
            reply = requests.post(f"{self.url}/upload/image", files={"image": (path.name, handle)},
                                  data={"overwrite": "true"}, timeout=30)  # fmt: skip
        reply.raise_for_status()
        return reply.json()["name"]

    def submit(self, graph: dict) -> requests.Response:
        return requests.post(f"{self.url}/prompt", json={"prompt": graph,
                             "client_id": uuid.uuid4().hex}, timeout=60)  # fmt: skip

    def run(self, graph: dict) -> dict:
        """Queue ``graph`` and wait for its history entry (its status and outputs)."""
        reply = self.submit(graph)
        assert reply.status_code == 200, reply.text
        return self.wait(reply.json()["prompt_id"])

    def wait(self, prompt_id: str) -> dict:
        deadline = time.monotonic() + RUN_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            history = requests.get(f"{self.url}/history/{prompt_id}", timeout=30).json()
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {RUN_SECONDS} s")

    def images(self, entry: dict, node: str) -> list[np.ndarray]:
        """The uint8 images a SaveImage node of a finished run wrote, in order."""
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
        files = entry["outputs"][node]["images"]
        return [np.asarray(Image.open(self.output / f["subfolder"] / f["filename"]))
                for f in files]  # fmt: skip

    def error(self, entry: dict) -> dict:
        """The execution error of a failed run (node id, type, message)."""
        assert entry["status"]["status_str"] == "error", entry["status"]
        kinds = {kind: body for kind, body in entry["status"]["messages"]}
        return kinds["execution_error"]


def start(folder: Path) -> Comfy:
    """Unpack ComfyUI into ``folder`` (an empty one), add the pack and the tiny models, start
    the server and wait until it serves."""
    root = unpack(folder)
    for name, source in (("vision_kernels", PACK), ("tiny_sdxl_for_tests", TINY_SDXL)):
        link = root / "custom_nodes" / name
        if not link.exists():
            link.symlink_to(source, target_is_directory=True)
    write_models(root / "models")
    port = free_port()
    log = root / "server.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--disable-auto-launch"],
            cwd=root, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Comfy(f"http://127.0.0.1:{port}", root, process, log)
    try:
        wait_until_serving(server)
    except BaseException:
        stop(process)
        raise
    return server


def wait_until_serving(server: Comfy) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited:\n{server.log.read_text()[-5000:]}")
        try:
            if requests.get(f"{server.url}/object_info/SemanIRRestore", timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    raise TimeoutError(f"ComfyUI did not serve in {STARTUP_SECONDS} s:\n{server.log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group by its PID; SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
