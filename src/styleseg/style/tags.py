"""Scanner/protocol tags of candidate slices: what the style selection (:mod:`styleseg.style.select`) tallies per
cluster and the contact sheet (:func:`styleseg.style.figures.contact_sheet`) prints, to say why a cluster exists."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from styleseg.io.dataset import CaseRecord

#: tag keys preferred in a cluster's "why" (the tally of every tag is kept in styles.json extras)
WHY_KEYS = ("protocol", "ConvolutionKernel", "kernel", "ManufacturerModelName", "model", "Manufacturer")


def case_tags(rec: CaseRecord) -> dict[str, Any]:
    """Flat scanner/protocol tags of a case from its dataset extras (``protocol``, ``scanner``)."""
    tags: dict[str, Any] = {}
    if rec.extras.get("protocol") is not None:
        tags["protocol"] = rec.extras["protocol"]
    sc = rec.extras.get("scanner")
    if isinstance(sc, dict):
        tags.update({str(k): v for k, v in sc.items() if isinstance(v, str | int | float | bool)})
    elif sc is not None:
        tags["scanner"] = str(sc)
    return tags


def tally(tag_dicts: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per tag key, how many slices carry each value (most common first)."""
    keys = sorted({k for t in tag_dicts for k in t})
    return {k: dict(Counter(str(t.get(k, "?")) for t in tag_dicts).most_common()) for k in keys}


def distinguishing_keys(all_tags: Sequence[dict[str, Any]], limit: int = 4) -> list[str]:
    """Tag keys whose value differs between slices (those that can explain a cluster), preferred
    keys (protocol, kernel, model) first; constant tags say nothing about a cluster."""
    t = tally(all_tags)
    varying = [k for k, v in t.items() if len(v) > 1]
    return sorted(varying, key=lambda k: (WHY_KEYS.index(k) if k in WHY_KEYS else len(WHY_KEYS), k))[:limit]


def why_tags(t: dict[str, dict[str, int]], keys: Sequence[str]) -> str:
    parts = [f"{k}: " + ", ".join(f"{v} x{c}" for v, c in t[k].items()) for k in keys if k in t]
    return "; ".join(parts)
