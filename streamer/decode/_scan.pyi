"""Types of the native tokenizer (_scan.c); see its header comment for each column's layout."""

#: (null count, validity bitmap or None, then 1 to 3 buffers by the field's kind)
Column = tuple[int, bytes | None, *tuple[bytes, ...]]

Parts = bytes | memoryview | tuple[bytes | memoryview, ...]

def scan(parts: Parts, kinds: bytes, header: bytes, /) -> tuple[int, list[Column]] | None: ...
