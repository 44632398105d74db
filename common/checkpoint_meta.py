"""What a checkpoint file holds, read without torch (the CLI plans jobs without importing it).

``torch.save`` writes a zip whose ``<name>/data.pkl`` pickles the saved dict; tensors in it are
references to other members of the zip. This reads that pickle with an unpickler that builds no
class at all (every global becomes a stand-in that returns None, persistent ids load as None),
so it runs no code from the file, and returns the plain values: the spec dict among them.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

from medq.common.errors import SpecError


class _Inert(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return lambda *args, **kwargs: None

    def persistent_load(self, pid):
        return None


def _contents(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            data = _Inert(archive.open(name)).load()
    except Exception as exc:  # a foreign zip or pickle can fail in many ways; none is a checkpoint
        raise SpecError(f"{path}: not a medq checkpoint ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
        raise SpecError(f"{path}: not a medq checkpoint (no spec inside)")
    return data


def checkpoint_spec(path: Path) -> dict[str, Any]:
    """The ``spec`` dict stored in a medq checkpoint; SpecError for a file that is not one."""
    return _contents(Path(path))["spec"]


def checkpoint_kind(path: Path) -> str | None:
    """The job kind (model family) a checkpoint records, None for one written before checkpoints
    kept it. (Its ``kind`` says which kind of file it is: a resumable "last" or "weights".)"""
    kind = _contents(Path(path)).get("job_kind")
    return kind if isinstance(kind, str) else None


def checkpoint_value(path: Path, name: str) -> Any:
    """A plain value stored beside the spec (``val_loss``, ``epoch``); None when it is absent."""
    return _contents(Path(path)).get(name)
