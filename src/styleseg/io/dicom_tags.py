"""The DICOM tags of a CT acquisition that shape its texture (kept per case, used to tell styles apart)."""

from __future__ import annotations

from typing import Any


def scanner_tags(ds: Any) -> dict[str, Any]:
    """Acquisition tags that shape CT texture: vendor, model, kernel, kVp, mAs, CTDIvol, thickness, spacing.

    ``mAs`` is Exposure (0018,1152) when present, else XRayTubeCurrent x ExposureTime / 1000. Absent tags
    are left out.
    """

    def val(name: str) -> Any:
        v = ds.get(name)
        if v is None or v == "":
            return None
        if isinstance(v, str | bytes):
            return str(v).strip()
        try:
            if hasattr(v, "__iter__"):
                return [float(x) if _is_number(x) else str(x) for x in v]
            return float(v) if _is_number(v) else str(v)
        except TypeError:
            return str(v)

    out: dict[str, Any] = {}
    for name in ("Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "KVP", "Exposure",
                 "XRayTubeCurrent", "ExposureTime", "CTDIvol", "SliceThickness", "PixelSpacing",
                 "SeriesDescription", "StudyDate"):
        v = val(name)
        if v is not None:
            out[name] = v
    if isinstance(out.get("ConvolutionKernel"), list):
        out["ConvolutionKernel"] = "\\".join(str(x) for x in out["ConvolutionKernel"])
    if "Exposure" in out:
        out["mAs"] = out["Exposure"]
    elif "XRayTubeCurrent" in out and "ExposureTime" in out:
        out["mAs"] = round(float(out["XRayTubeCurrent"]) * float(out["ExposureTime"]) / 1000.0, 3)
    return out


def _is_number(x: Any) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False

