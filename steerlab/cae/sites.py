"""Where a comparison cell steers: one layer, or a band of consecutive layers steered together.

A single layer L at relative strength r adds alpha * v_L with alpha * |v_L| = r * mean |h_L| (`strengths`). A band
(a multi-layer vector) spreads the same total push over its k layers: each layer L of the band gets r / k of its own
mean residual norm, along the method's direction at L. Since the residual stream carries every block's addition
upwards, k pushes of r / k each add about as much to the top of the band as one push of r, so a band and a single
layer compare at one r; what differs is that no single block has to absorb the whole push.

A band is steered as one `Steering` term with a *band vector* (`band_vector`): the method's directions at the band's
layers, each rescaled so that strength r on it is the push above. Everything downstream (generation, scoring, the
corpus perplexity) then takes the band vector, the band's layers and r where a single layer takes the vector, L and
alpha (`site_steering`). A site is an int (one layer) or a tuple of layers (a band); JSON holds a band as a list.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Mapping, Sequence, Union

from ..errors import SteerlabError
from ..vector import SteeringVector
from .strengths import direction_norm, raw_strength

#: One layer, or a band of layers steered together.
Site = Union[int, tuple[int, ...]]


def parse_bands(spec: str | None) -> tuple[tuple[int, ...], ...]:
    """"10-14,20-24" → ((10, 11, 12, 13, 14), (20, 21, 22, 23, 24)); an empty spec → no band. Each band is
    a range of at least two layers, first below last."""
    out = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if not m or int(m.group(1)) >= int(m.group(2)):
            raise SteerlabError(f"a band is FIRST-LAST with FIRST < LAST (e.g. 10-14), got {part!r}")
        out.append(tuple(range(int(m.group(1)), int(m.group(2)) + 1)))
    return tuple(out)


def as_site(x) -> Site:
    """A site as read from JSON (an int, or a list for a band) or given in Python."""
    if isinstance(x, (list, tuple)):
        layers = tuple(int(l) for l in x)
        return layers[0] if len(layers) == 1 else layers
    return int(x)


def site_layers(site: Site) -> tuple[int, ...]:
    """The layers a site steers."""
    return (site,) if isinstance(site, int) else tuple(site)


def site_label(site: Site) -> str:
    """"12" for a layer, "10-14" for a band."""
    layers = site_layers(site)
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


def band_vector(vector: SteeringVector, band: Sequence[int], norms: Mapping[int, float]) -> SteeringVector:
    """`vector`'s directions at `band`, each rescaled to |d_L| = mean|h_L| / k: steering it at strength r on the
    band's layers pushes each layer by r / k of its mean residual norm (`norms`: mean |h_L| per layer)."""
    band = tuple(int(l) for l in band)
    missing = [l for l in band if l not in vector.directions]
    if missing:
        raise SteerlabError(f"the vector has no direction at layer(s) {missing} of the band {site_label(band)} "
                            f"(it has {list(vector.layers)})")
    if vector.per_position:
        raise SteerlabError("a band needs one direction per layer (not a per-position ActAdd vector)")
    dirs = {}
    for l in band:
        n = float(norms[l])
        if not math.isfinite(n) or n <= 0:
            raise SteerlabError(f"residual norm at layer {l} must be positive, got {n}")
        d = vector[l]
        dirs[l] = (d.float() * (n / (direction_norm(vector, l) * len(band)))).to(d.dtype)
    extra = dict(vector.meta.extra, band=list(band), band_residual_norms={str(l): float(norms[l]) for l in band})
    return SteeringVector(dirs, replace(vector.meta, layers=band, extra=extra))


def site_steering(vector: SteeringVector, site: Site, relative: float,
                  norms: Mapping[int, float]) -> tuple[SteeringVector, Site, float]:
    """(vector, layers, strength) that steer `site` at relative strength `relative`: a layer takes the vector and
    the raw alpha (`strengths.raw_strength`), a band its band vector and `relative` itself."""
    if isinstance(site, int):
        return vector, site, raw_strength(relative, vector, site, norms[site])
    return band_vector(vector, site, norms), tuple(site), float(relative)


def anchor_layer(site: Site) -> int:
    """The layer a site's responses are read at for projections (a band: its first layer, the one its direction
    was read from before any of the band's pushes)."""
    return site_layers(site)[0]

