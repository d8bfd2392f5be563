"""Transit Gateway flow logs: counted under their attachment.

A Transit Gateway flow log (resource-type TransitGateway) has no
`interface-id`: its records describe traffic through a TGW attachment. So
that they count (per-attachment series, windows, alerts) rather than fall
out as records of no interface, `interface-id` takes `tgw-attachment-id`
where it has no value of its own. A VPC flow log's records keep theirs.
"""

from __future__ import annotations

from collections.abc import Collection

import pyarrow as pa
import pyarrow.compute as pc

INTERFACE = "interface-id"
ATTACHMENT = "tgw-attachment-id"


def needs_attachment(fields: tuple[str, ...], columns: Collection[str] | None) -> bool:
    """Whether a layout's attachment must be read to fill `interface-id`: a consumer asked for the interface
    (the signals do), and the layout has an attachment. Reading every column as it is (None) adds nothing."""
    return ATTACHMENT in fields and columns is not None and INTERFACE in columns


def attachment_as_interface(table: pa.Table, keep_attachment: bool) -> pa.Table:
    """`table` with `interface-id` filled from `tgw-attachment-id` where it is null (added when missing)."""
    if ATTACHMENT not in table.column_names:
        return table
    attachment = table.column(ATTACHMENT)
    if INTERFACE in table.column_names:
        own = table.column(INTERFACE)
        dictionary = pa.types.is_dictionary(own.type)
        merged = pc.coalesce(own.cast(pa.string()) if dictionary else own, attachment.cast(pa.string()))
        if dictionary:
            merged = merged.dictionary_encode()
        table = table.set_column(table.column_names.index(INTERFACE), INTERFACE, merged)
    else:
        table = table.append_column(INTERFACE, attachment.cast(pa.string()))
    return table if keep_attachment else table.drop_columns([ATTACHMENT])
