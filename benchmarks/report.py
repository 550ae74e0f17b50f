"""What every benchmark prints first, and where its output is kept: benchmarks/results/<machine>_<name>.txt.

A speed without its hardware is not a figure: the header names the CPU model and its bf16
capability (or the GPU and its compute capability), torch, and the data.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import config
from helpers.machinery.device import hardware

RESULTS = Path(__file__).resolve().parent / "results"


class Report:
    """Lines printed as they come and kept, to be saved under the machine's name with --save."""

    def __init__(self, device: torch.device):
        self.hardware, self.lines = hardware(device), []
        self(f"hardware: {self.hardware}; torch {torch.__version__}; data: {config.data_label()}")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, name: str) -> Path:
        path = RESULTS / f"{self.hardware.slug}_{name}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")
        print(f"\nsaved {path.relative_to(RESULTS.parents[1])}")
        return path
