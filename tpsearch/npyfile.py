"""Reading small float32 arrays that an index directory holds (query shift, query map) without
trusting the file: the ``.npy`` header is read and checked (bounded size, no pickled objects,
the expected dtype and shape) before any data is."""

from __future__ import annotations

import numpy as np

from .errors import IndexDamaged


def read_float32(path, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The float32 array of exactly ``shape`` saved at ``path``; anything else (another dtype
    or shape, a Fortran-ordered or truncated array, a non-finite value) is refused as
    IndexDamaged naming the file and ``what`` it should hold."""
    size = int(np.prod(shape))
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            found, fortran, dtype = read_header(f, max_header_size=4096)
            if found != shape or dtype != np.dtype("<f4") or (fortran and len(shape) > 1):
                order = " in Fortran order" if fortran and len(shape) > 1 else ""
                raise IndexDamaged(f"{path} holds {dtype} of shape {found}{order}, not {what}")
            v = np.frombuffer(f.read(4 * size + 1), dtype="<f4")
    except (ValueError, OSError, EOFError) as exc:
        raise IndexDamaged(f"{path}: not a numpy array ({' '.join(str(exc).split())[:120]})") from None
    if v.size != size or not np.isfinite(v).all():
        raise IndexDamaged(f"{path} does not hold exactly {size} finite float32 values ({what})")
    return v.reshape(shape).astype(np.float32)
