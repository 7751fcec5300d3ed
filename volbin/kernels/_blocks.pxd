# What the per-group loops over 4D blocks share (see _histogram.pyx, _threshold.pyx): the
# value types they take, and the check of a block's group strides.

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

ctypedef fused real_t:
    int8_t
    uint8_t
    int16_t
    uint16_t
    int32_t
    uint32_t
    int64_t
    uint64_t
    float
    double


cdef inline int check_groups(Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t n2, Py_ssize_t n3,
                             const int64_t[::1] strides, Py_ssize_t n_groups,
                             str name) except -1:
    """Raise unless every voxel's group ``sum(index[a] * strides[a])`` is in [0, n_groups)."""
    cdef Py_ssize_t a, gmin = 0, gmax = 0, t
    cdef Py_ssize_t n[4]
    if strides.shape[0] != 4:
        raise ValueError(f"`{name}` must hold 4 ints; got {strides.shape[0]}.")
    n[0], n[1], n[2], n[3] = n0, n1, n2, n3
    if n0 * n1 * n2 * n3 == 0:
        return 0
    for a in range(4):
        t = (n[a] - 1) * strides[a]
        if t > 0:
            gmax += t
        else:
            gmin += t
    if gmin < 0 or gmax >= n_groups:
        raise ValueError(f"Groups {gmin}..{gmax} of the block (`{name}`) do not fit the {n_groups} "
                         "entries of the outputs.")
    return 0
