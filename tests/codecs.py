"""The codec of a policed endpoint, as the tests name endpoints (method and path)."""

from addon.endpoints import Treatment, UnsafePath, resolve
from formats.codecs import WireFormatCodec, codec


def codec_for(method: str, path: str) -> WireFormatCodec | None:
    """The codec of a policed model call (``POST /v1/messages`` and the like), else None."""
    try:
        route = resolve(method, path)
    except UnsafePath:
        return None
    endpoint = route.endpoint
    if route.treatment is not Treatment.POLICED or endpoint is None or endpoint.wire_format is None:
        return None
    return codec(endpoint.wire_format)
