"""Storing a job's DICOM outputs on a PACS with STOW-RS (``--send-to``), one file at a time.

``store_file`` posts one written object and reads the PACS's answer (PS3.18 store response):
the instance among the referenced ones is accepted, with a warning reason kept if there is one;
a failure reason, or an HTTP error after the client's retries (``dicomweb.PacsClient``), is a
PacsError whose message the ledger keeps (``store/sends.py``). The file on disk stays either way.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from medq.common.inference.dicomweb import PacsClient, PacsError


def _instances(answer, sequence: str) -> dict[str, object]:
    items = answer.get(sequence) or []
    return {str(item.get("ReferencedSOPInstanceUID", "")): item for item in items}


def store_file(client: PacsClient, path: Path) -> str:
    """Store one DICOM file; the PACS's answer for the ledger ("accepted" or "accepted, warning
    0xB000"). PacsError when it refused the instance or did not answer."""
    try:
        dataset = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise PacsError(f"the output file cannot be read ({type(exc).__name__})") from None
    uid = str(dataset.SOPInstanceUID)
    answer = client.call("storing on the PACS", lambda c: c.store_instances([dataset]))
    failed = _instances(answer, "FailedSOPSequence")
    if uid in failed:
        reason = failed[uid].get("FailureReason")
        raise PacsError(f"the PACS refused the instance (failure reason 0x{int(reason or 0):04X})")
    stored = _instances(answer, "ReferencedSOPSequence")
    if stored and uid not in stored:
        raise PacsError("the PACS's answer does not list the instance")
    warning = stored.get(uid, {}).get("WarningReason") if stored else None
    return "accepted" + (f", warning 0x{int(warning):04X}" if warning else "")
