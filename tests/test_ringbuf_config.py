"""RingBuf/RingBufReader argument checks and barrier choice: no kernel needed (they fail before any syscall)."""
from __future__ import annotations

import mmap

import pytest

from kestrel_raw.errors import ConfigError
from kestrel_raw.maps.ringbuf import RingBuf, RingBufReader, check_ringbuf_size, fence_for_machine

PAGE = mmap.PAGESIZE


@pytest.mark.parametrize("size, near", [
    (0, f"{PAGE}"),
    (100, f"{PAGE}"),
    (PAGE // 2, f"{PAGE}"),
    (3 * PAGE, f"{2 * PAGE} or {4 * PAGE}"),
    (5 * PAGE, f"{4 * PAGE} or {8 * PAGE}"),
])
def test_size_must_be_a_page_multiple_power_of_two(size, near):
    msg = (f"ring buffer size {size} is invalid: the kernel needs a power of two that is a multiple of the "
           f"page size ({PAGE}); try {near}")
    with pytest.raises(ConfigError) as e:
        check_ringbuf_size(size)
    assert str(e.value) == msg
    with pytest.raises(ConfigError):
        RingBuf(size)
    with pytest.raises(ConfigError):
        RingBufReader(3, size)


def test_valid_sizes_pass():
    for size in (PAGE, 2 * PAGE, 1 << 24):
        check_ringbuf_size(size)
    with pytest.raises(ConfigError, match="must be an integer"):
        check_ringbuf_size(4096.0)


def test_bare_fd_needs_a_size():
    with pytest.raises(ConfigError, match="pass size="):
        RingBufReader(3)


def test_barrier_is_free_on_x86_64_and_a_full_fence_on_arm64():
    assert fence_for_machine("x86_64") is None
    fence = fence_for_machine("aarch64")
    for _ in range(3):
        fence()  # release then re-acquire the same lock: must never block
