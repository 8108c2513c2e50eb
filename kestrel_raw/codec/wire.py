"""The ring-buffer wire format: the one place both sides take their numbers from.

The programs in ``kestrel_raw/programs`` write records at these offsets; ``kestrel_raw/codec/records.py`` parses
them.  The table in docs/architecture.md ("Records") is the same format in prose.  Records are in the
host's byte order, which is little-endian on every architecture this project supports (x86_64, aarch64).
"""
from __future__ import annotations

# Record kinds (u16 at offset 0); equal to the Kestrel event type ids.
KIND_EXEC = 1
KIND_OPEN = 2
KIND_CONNECT = 3
KIND_EXIT = 4
KINDS = (KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT)

# Record flags (u16 at offset 2).
FLAG_TRUNCATED = 1 << 0  # a string or the argument area was longer than its limit
FLAG_FAULT = 1 << 1  # user memory could not be read (bad pointer, page not present)

# Common header.
HDR_KIND = 0
HDR_FLAGS = 2
HDR_CPU = 4
HDR_TS = 8
HDR_START = 16
HDR_PID = 24
HDR_TID = 28
HDR_PPID = 32
HDR_UID = 36
HDR_GID = 40
HDR_RESERVED = 44
HDR_COMM = 48
COMM_LEN = 16  # TASK_COMM_LEN
HEADER_SIZE = 64

# exec
EXEC_FILENAME_LEN = 64
EXEC_ARGS_LEN = 68
EXEC_ARGS_TOTAL = 72
EXEC_RESERVED = 76
EXEC_DATA = 80  # filename[filename_len], then args[args_len]
MAX_FILENAME = 4096  # PATH_MAX, counting the NUL the kernel stores
MAX_ARGS = 4096

# open
OPEN_RET = 64
OPEN_DFD = 68
OPEN_FLAGS = 72
OPEN_MODE = 80
OPEN_PATH_LEN = 84
OPEN_SYSCALL = 88
OPEN_RESERVED = 92
OPEN_PATH = 96
MAX_PATH = 4096  # path bytes kept, without the NUL; a longer path is cut here and flagged TRUNCATED
OPEN_SYSCALL_OPENAT = 0
OPEN_SYSCALL_OPENAT2 = 1

# connect
CONNECT_RET = 64
CONNECT_FD = 68
CONNECT_ADDRLEN = 72
CONNECT_ADDR_LEN = 76
CONNECT_ADDR = 80
MAX_SOCKADDR = 128  # sizeof(struct sockaddr_storage)

# exit
EXIT_CODE = 64
EXIT_RESERVED = 68
EXIT_SIZE = 72

# Largest record a program can emit: exec with a full filename and a full argument area.
MAX_RECORD = EXEC_DATA + MAX_FILENAME + MAX_ARGS
