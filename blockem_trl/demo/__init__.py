"""The end-to-end BLOCK-EM experiment behind ``blockem demo``: misalign, discover, block, compare, report.

- `DemoConfig`: every setting, with the `quick` / `default` presets and YAML recipes (`DemoConfig.from_yaml`).
- `run_demo` / `DemoPipeline`: run or resume the stages; `DemoComponents` injects a model, SAE, judge or data.
- `write_adapter_card` / `push_adapter_to_hub`: the model card of a trained adapter and its upload.
"""

from .config import DemoConfig, DomainConfig
from .data import DomainData
from .hub import push_adapter_to_hub, render_adapter_card, write_adapter_card
from .pipeline import DemoComponents, DemoPipeline, run_demo

__all__ = [
    "DemoComponents",
    "DemoConfig",
    "DemoPipeline",
    "DomainConfig",
    "DomainData",
    "push_adapter_to_hub",
    "render_adapter_card",
    "run_demo",
    "write_adapter_card",
]
