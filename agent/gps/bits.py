"""Bit-level writing and reading, and adaptive Rice codes: the tools of fixdelta's version 2.

Bits are written most significant first: the first bit of the stream is the top bit of its
first byte. An adaptive Rice code (docs/format.md, "Delta-coded fixes") codes a non-negative
integer ``u`` with a parameter ``k`` that follows the mean of the values coded before it::

    k = the smallest k >= 0 with 2 * N * 2**k >= A    (state A = 4, N = 1 at the start)
    q = u >> k
    q < 8:   q one bits, a zero bit, then the k low bits of u
    q >= 8:  8 one bits (the escape), 6 bits L, then u in L bits
    then A += u, N += 1; when N reaches 4: A >>= 1, N = 2

The escape bounds every code to 8 + 6 + 63 bits however far the value is from the mean, so
a reader's work per value is bounded, whatever the bytes.
"""

from __future__ import annotations

from agent.errors import FormatError

RICE_LIMIT = 8
RICE_LEN_BITS = 6
RICE_MAX_BITS = (1 << RICE_LEN_BITS) - 1  # an escaped value has at most 63 bits
_RICE_A0, _RICE_RESET = 4, 4


class BitWriter:
    """Appends bits to ``out`` (a bytearray), most significant first."""

    __slots__ = ("_acc", "_n", "out")

    def __init__(self, out: bytearray) -> None:
        self.out = out
        self._acc = 0
        self._n = 0

    def put(self, value: int, width: int) -> None:
        """The ``width`` low bits of ``value`` (``0 <= value < 2**width``)."""
        acc = (self._acc << width) | value
        n = self._n + width
        if n >= 8:
            rem = n & 7
            self.out += (acc >> rem).to_bytes(n >> 3, "big")
            acc &= (1 << rem) - 1
            n = rem
        self._acc, self._n = acc, n

    def flush(self) -> None:
        """Zero bits up to the next byte boundary."""
        if self._n:
            self.put(0, 8 - self._n)


class BitReader:
    """Reads bits of ``data`` from byte ``start`` on; FormatError past the end."""

    __slots__ = ("_acc", "_data", "_n", "_pos")

    def __init__(self, data: memoryview, start: int) -> None:
        self._data = data
        self._pos = start
        self._acc = 0
        self._n = 0

    def _fill(self, need: int) -> None:
        while self._n < need:
            take = min(8, len(self._data) - self._pos)
            if take <= 0:
                raise FormatError("delta batch: truncated")
            chunk = int.from_bytes(self._data[self._pos : self._pos + take], "big")
            self._acc = (self._acc << (8 * take)) | chunk
            self._pos += take
            self._n += 8 * take

    def get(self, width: int) -> int:
        """The next ``width`` bits as an unsigned integer."""
        if self._n < width:
            self._fill(width)
        self._n -= width
        value = self._acc >> self._n
        self._acc &= (1 << self._n) - 1
        return value

    def ones(self, limit: int) -> int:
        """Counts one bits up to ``limit``; the zero that ends a shorter run is consumed."""
        q = 0
        while True:
            if not self._n:
                self._fill(1)
            n = self._n
            lead = n - ((~self._acc) & ((1 << n) - 1)).bit_length()  # leading one bits
            if q + lead >= limit:
                self._n = n - (limit - q)
                self._acc &= (1 << self._n) - 1
                return limit
            if lead < n:
                self._n = n - lead - 1
                self._acc &= (1 << self._n) - 1
                return q + lead
            q += lead
            self._n = self._acc = 0

    @property
    def bits_left(self) -> int:
        return self._n + 8 * (len(self._data) - self._pos)

    def finish(self) -> None:
        """The stream must end here: fewer than 8 bits left, all of them zero."""
        left = self.bits_left
        if left >= 8:
            raise FormatError(f"delta batch: {left // 8} bytes after the last fix")
        if self._acc:
            raise FormatError("delta batch: padding bits after the last fix are not zero")


class AdaptiveRice:
    """One adaptive Rice code (its own A and N): one per coded quantity."""

    __slots__ = ("a", "n")

    def __init__(self) -> None:
        self.a = _RICE_A0
        self.n = 1

    def _k(self) -> int:
        # the smallest k with 2N * 2**k >= A: A sums zigzag values, twice the magnitudes
        a, n = self.a, self.n << 1
        return ((a + n - 1) // n - 1).bit_length() if a > n else 0

    def _update(self, u: int) -> None:
        self.a += u
        self.n += 1
        if self.n == _RICE_RESET:
            self.a >>= 1
            self.n >>= 1

    def put(self, w: BitWriter, u: int) -> None:
        k = self._k()
        q = u >> k
        if q < RICE_LIMIT:
            w.put((((1 << q) - 1) << (k + 1)) | (u & ((1 << k) - 1)), q + 1 + k)
        else:
            length = u.bit_length()
            if length > RICE_MAX_BITS:
                raise FormatError("delta batch: a value too large to code")
            w.put((1 << RICE_LIMIT) - 1, RICE_LIMIT)
            w.put(length, RICE_LEN_BITS)
            w.put(u, length)
        self._update(u)

    def get(self, r: BitReader) -> int:
        k = self._k()
        q = r.ones(RICE_LIMIT)
        u = (q << k) | r.get(k) if q < RICE_LIMIT else r.get(r.get(RICE_LEN_BITS))
        self._update(u)
        return u
