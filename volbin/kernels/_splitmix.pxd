# SplitMix64 counter-based random numbers, inline, for every compiled kernel (see _random.pyx).

from libc.stdint cimport uint64_t


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    """SplitMix64 output function (a bijective 64-bit mixer)."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline double uniform01(uint64_t key, uint64_t index) noexcept nogil:
    """The uniform double in [0, 1) for counter `index` under `key` (top 53 bits, exact)."""
    cdef uint64_t z = mix64(key + (index + 1) * 0x9E3779B97F4A7C15ULL)
    return <double>(z >> 11) * (1.0 / 9007199254740992.0)
