"""`sunfish doctor` / `sunfish.doctor()`: is this install ready to train? (The package is named diagnose so that
`sunfish.doctor` stays the function.)

One `Check` per line, ok / warn / FAIL with what to do: Python, torch and Sunfish versions, the device(s), bf16,
torch.compile's compiler, each optional extra (installed or not, and what it enables), free disk where runs go,
then an end-to-end overfit of a tiny model (diagnose/overfit.py, about 20 s on a CPU; `quick` skips it).
A missing extra is a warning unless it is named in `need`, then a FAIL; any FAIL makes `sunfish doctor` exit 1.

    import sunfish
    checks = sunfish.doctor(need=["serve"])
    assert all(c.status.value != "FAIL" for c in checks)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from sunfish.config import ConfigError
from sunfish.diagnose.checks import EXTRAS, Check, Status, bf16, compiler, devices, disk, extras, versions


def doctor(out: str | Path = "runs", *, need: Iterable[str] = (), quick: bool = False, device: str = "auto",
           on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Run the checks (see the module docstring) and return them; `on_check(check)` sees each as it is made
    (the CLI prints them), `out` is the run folder whose disk is measured, `device` where the overfit trains."""
    need = tuple(dict.fromkeys(n.strip() for n in need if n.strip()))
    unknown = [n for n in need if n not in EXTRAS]
    if unknown:
        raise ConfigError(f"unknown extra(s) {', '.join(unknown)} in --need; the extras are {', '.join(EXTRAS)}")
    checks: list[Check] = []
    stages = [versions, devices, bf16, compiler, lambda: extras(need), lambda: disk(Path(out))]
    if not quick:
        from sunfish.diagnose.overfit import overfit

        stages.append(lambda: [overfit(device)])
    for stage in stages:
        for check in stage():
            checks.append(check)
            if on_check is not None:
                on_check(check)
    return checks


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status is Status.FAIL]


__all__ = ["Check", "Status", "EXTRAS", "doctor", "failed"]
