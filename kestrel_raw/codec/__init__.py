"""The codec: ring-buffer records to Kestrel Events and JSON lines.  Pure: no kernel, no I/O, no trio."""
