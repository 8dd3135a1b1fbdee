"""SemanIR, ITACLIP, Pixelsmith and diffeat as ComfyUI nodes: each node a thin skin over its
package's public API (``pip install semanir itaclip pixelsmith diffeat``).

Loading the pack registers SemanIR with spandrel, so the core "Load Upscale Model" node loads
SemanIR files too.
"""

from __future__ import annotations

import semanir

from . import host, nodes_diffeat, nodes_itaclip, nodes_pixelsmith, nodes_semanir

semanir.register_spandrel()  # before any "Load Upscale Model" runs
host.register_folders()

PACKS = (nodes_semanir, nodes_itaclip, nodes_pixelsmith, nodes_diffeat)
NODE_CLASS_MAPPINGS = {name: node for pack in PACKS for name, node in pack.NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: shown for pack in PACKS for name, shown in pack.NAMES.items()}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
