"""The precision a run directory's numbers were made in, so that a resumed run does not mix two.

Greedy decoding in bfloat16 and in float32 (or on a CPU and a GPU) gives different responses to the same
prompt, so a cell whose steered responses are generated in one and compared with unsteered responses
generated in the other measures the dtype as much as the vector. A run directory (`generalise`) records its
numerics in config.json on the first run and refuses a resume under others: the choice of dtype follows the
CPU (`hardware.choose_dtype`), and machines of the same kind differ in avx512_bf16, so the same command can
load the model in bfloat16 on one machine and float32 on the next.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .. import results
from ..errors import SteerlabError

if TYPE_CHECKING:
    from ..models import LoadedModel

#: config.json's key for the record.
NUMERICS = "numerics"


def model_numerics(lm: "LoadedModel") -> dict[str, str]:
    """The dtype and device type a loaded model computes in."""
    return {"dtype": str(lm.model.dtype).removeprefix("torch."), "device": lm.device.type}


def expected_numerics() -> dict[str, str] | None:
    """What `models.load_model` will load in under this process's settings (STEERLAB_DTYPE, STEERLAB_DEVICE),
    read without loading anything; None under a device map (the load decides the placement)."""
    from ..hardware import choose_device, choose_dtype, detect

    if os.environ.get("STEERLAB_DEVICE_MAP"):
        return None
    machine = detect()
    device = choose_device(os.environ.get("STEERLAB_DEVICE") or "cpu", machine)
    requested = os.environ.get("STEERLAB_DTYPE") or "float32"
    return {"dtype": choose_dtype(requested, device, machine).name, "device": device.split(":")[0]}


def recorded_numerics(out: Path) -> dict[str, str] | None:
    """The run directory's numerics: config.json's record, or for a directory written before the record, the
    dtype its first OOD stage's machine block names (None where nothing says)."""
    cfg = out / "config.json"
    if cfg.is_file():
        rec = json.loads(cfg.read_text()).get(NUMERICS)
        if rec:
            return dict(rec)
    for path in sorted(out.glob("*/seed*/ood_*/ood.json")):
        machine = results.read_json(path).get("machine", {})
        if machine.get("dtype") in ("float32", "bfloat16", "float16"):
            return {"dtype": machine["dtype"], "device": (machine.get("device") or "cpu").split(":")[0]}
    return None


def check_numerics(out: Path, numerics: dict[str, str] | None) -> None:
    """Refuse to add to `out` in other numerics than its cells were made in (one line naming both and the fix)."""
    rec = recorded_numerics(out) if numerics is not None else None
    if rec is not None and rec != numerics:
        raise SteerlabError(
            f"{out} was run in {rec['dtype']} on {rec['device']}, this run would compute in {numerics['dtype']} on "
            f"{numerics['device']}: responses differ between the two, so the cells would not compare. Resume with "
            f"--dtype {rec['dtype']}{'' if rec['device'] == numerics['device'] else ' --device ' + rec['device']} "
            "(or STEERLAB_DTYPE) or use another directory")
