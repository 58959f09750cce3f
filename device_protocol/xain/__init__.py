"""XAIN participants' model formats, pure: no I/O, no gRPC (docs/XAIN.md).

- `flat_weights`: a job's named parameters <-> the one flat float32 vector XAIN's SDKs train on.
- `npy_vector`: that vector as `.npy` bytes (xain-sdk 0.8 over HTTP).
- `safe_unpickle` / `pickle_writer`: that vector as the pickle xain-sdk 0.6 keeps in object
  storage, read through an allow-list that admits one numeric ndarray and nothing else.
"""
