"""The host's GPUs as NVML sees them (nvidia-ml-py): utilisation, memory, temperature, power.

No NVML (no driver, no GPU, the package missing) means no GPUs, never an error; a reading a
device does not support is left out. NVML numbers devices as the driver does and ignores
CUDA_VISIBLE_DEVICES, so ``index`` is the number `medq worker --gpus` takes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger("medq.gpus")
_lock = threading.Lock()
_state = {"nvml": None, "tried": False}


@dataclass(frozen=True)
class GpuReading:
    index: int
    model: str
    uuid: str = ""
    utilization: float | None = None  # 0..1 of the last sample period
    memory_used: int | None = None  # bytes
    memory_total: int | None = None  # bytes
    temperature: float | None = None  # degrees Celsius
    power: float | None = None  # watts
    driver: str = ""


def _nvml():
    """The initialised pynvml module, or None (tried once per process)."""
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                import pynvml

                pynvml.nvmlInit()
                _state["nvml"] = pynvml
            except Exception as exc:  # no driver, no device, no package: no GPUs
                log.debug("NVML unavailable: %s", exc)
        return _state["nvml"]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpus() -> list[GpuReading]:
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        count = nvml.nvmlDeviceGetCount()
        driver = _text(nvml.nvmlSystemGetDriverVersion())
    except Exception as exc:
        log.debug("NVML could not count devices: %s", exc)
        return []
    readings = []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            model = _text(nvml.nvmlDeviceGetName(handle))
        except Exception as exc:
            log.debug("NVML device %d: %s", index, exc)
            continue

        def read(fn, *args):
            try:
                return fn(handle, *args)
            except Exception:  # NVMLError_NotSupported and friends: that reading is absent
                return None

        util = read(nvml.nvmlDeviceGetUtilizationRates)
        memory = read(nvml.nvmlDeviceGetMemoryInfo)
        power = read(nvml.nvmlDeviceGetPowerUsage)  # milliwatts
        readings.append(GpuReading(
            index=index, model=model, uuid=_text(read(nvml.nvmlDeviceGetUUID) or ""),
            utilization=util.gpu / 100.0 if util is not None else None,
            memory_used=int(memory.used) if memory is not None else None,
            memory_total=int(memory.total) if memory is not None else None,
            temperature=read(nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU),
            power=power / 1000.0 if power is not None else None,
            driver=driver,
        ))
    return readings
