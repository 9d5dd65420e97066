"""Outside the workers: check a request's steering when vLLM builds its SamplingParams (a bad spec is a
400 from `vllm serve`, not a worker error), and salt its prefix-cache key in the engine core.

vLLM's prefix cache hashes token blocks with the request's `cache_salt` mixed into the first block, so two
requests share KV only if they share the salt. A steered request gets a salt derived from its spec and
the digests of the vectors it names (on top of any salt the client gave); an unsteered request keeps its
own, so unsteered requests still share KV with each other, and never with steered ones.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

from .spec import RequestSpec, SpecError, of_extra_args, salt
from .store import ENV, VectorStore

_stores: dict[Optional[str], VectorStore] = {}


def store() -> VectorStore:
    """The vector directory's store, as `$STEERLAB_VLLM_VECTORS` names it now (a process that starts a second
    engine points the variable elsewhere: checks must read where that engine's workers read)."""
    key = os.environ.get(ENV)
    if key not in _stores:
        _stores[key] = VectorStore(key)
    return _stores[key]


def check(spec: RequestSpec) -> list[str]:
    """The file digest of each term's vector; SpecError when a vector is missing, not the digest asked for,
    per-position, or lacks a layer the term names (negative layers, counted from the end, are checked in the
    workers, which know the model's depth)."""
    digests = []
    for t in spec.terms:
        vector, digest = store().get(t.vector, t.digest)
        if vector.per_position:
            raise SpecError(f"steering vector '{t.vector}' is per-position (ActAdd); the vLLM plugin adds one "
                            "direction per layer")
        missing = [l for l in (t.layers or ()) if l >= 0 and l not in vector.directions]
        if missing:
            raise SpecError(f"steering vector '{t.vector}' has no direction for layer {missing[0]} "
                            f"(it has {', '.join(map(str, sorted(vector.directions)))})")
        digests.append(digest)
    return digests


def install_validation(sampling_params_cls) -> None:
    """Extend `SamplingParams._verify_extra_args` (run where vLLM checks a request) with the spec's checks."""
    if getattr(sampling_params_cls, "_steerlab_installed", False):
        return
    original = sampling_params_cls._verify_extra_args

    @functools.wraps(original)
    def verify(self):
        original(self)
        try:
            spec = of_extra_args(self.extra_args)
            if spec is not None:
                check(spec)
        except SpecError as e:
            from vllm.exceptions import VLLMValidationError

            raise VLLMValidationError(str(e), parameter="vllm_xargs") from None

    sampling_params_cls._verify_extra_args = verify
    sampling_params_cls._steerlab_installed = True


def install_salt(request_cls) -> None:
    """Wrap `Request.from_engine_core_request` (engine core) so a steered request's cache salt carries its
    steering before its block hashes are computed."""
    if getattr(request_cls, "_steerlab_installed", False):
        return
    original = request_cls.from_engine_core_request.__func__

    @functools.wraps(original)
    def from_engine_core_request(cls, request, *args, **kwargs):
        params = request.sampling_params
        spec = None
        try:
            spec = of_extra_args(getattr(params, "extra_args", None))
            digests = check(spec) if spec is not None else []
        except SpecError:
            # checked already where the request was made; if a vector vanished since, salt by the spec
            # alone (the worker then leaves the request unsteered and logs why)
            digests = []
        if spec is not None:
            request.cache_salt = salt(spec, digests, request.cache_salt)
        return original(cls, request, *args, **kwargs)

    request_cls.from_engine_core_request = classmethod(from_engine_core_request)
    request_cls._steerlab_installed = True


__all__ = ["install_validation", "install_salt", "check", "store"]
