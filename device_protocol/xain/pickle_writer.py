"""The global model as xain-sdk 0.6 participants read it: a protocol-3 pickle of one float32 vector.

Written opcode by opcode rather than by `pickle.dumps`: numpy 2 names its reconstruction function
`numpy._core.multiarray._reconstruct`, which numpy before 1.26 cannot import, while the SDK pins
numpy 1.x (`~=1.15`). The opcodes are the ones numpy 1.x itself writes for the array with protocol 3,
less the memo and always in their 4-byte-length forms (for 65,536 values or more the bytes are
identical), so numpy 1.15 onwards and 2.x all read them.
"""

from __future__ import annotations

import struct

import numpy as np

_RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
_DTYPE_F4 = b"cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R"
_DTYPE_STATE_LE = b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
MAX_LENGTH = 2**31 - 1  # the shape is written as a 4-byte BININT; more than 8 GiB of floats anyway


def pickle_from_flat_vector(vector: np.ndarray) -> bytes:
    """`vector` (1-D; cast to little-endian float32) pickled as numpy 1.x does with protocol 3.

    An empty vector is the SDK's round-0 signal: "initialise your own weights".
    """
    array = np.asarray(vector)
    if array.ndim != 1 or array.size > MAX_LENGTH:
        raise ValueError(f"a flat vector is 1-D with at most {MAX_LENGTH} values, got shape {list(array.shape)}")
    data = array.astype("<f4", copy=False).tobytes()
    return b"".join(
        [
            b"\x80\x03",  # PROTO 3
            _RECONSTRUCT,  # _reconstruct(ndarray, (0,), b'b')
            b"(K\x01",  # state: (version 1,
            b"J" + struct.pack("<i", array.size) + b"\x85",  # shape (n,),
            _DTYPE_F4 + _DTYPE_STATE_LE,  # dtype('<f4'),
            b"\x89",  # fortran order False,
            b"B" + struct.pack("<I", len(data)) + data,  # raw data)
            b"tb.",  # BUILD, STOP
        ]
    )
