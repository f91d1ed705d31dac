"""Faust classes CartLoom configures the app with."""

from __future__ import annotations

from typing import Any

import faust


class RawKeyTable(faust.Table):  # type: ignore[type-arg]
    """A table whose ``str`` keys travel as the producers' raw key bytes, not as JSON.

    Faust encodes ``str`` keys as JSON (``'"o-1"'``). Raw bytes keep the changelog keys
    equal to the input topics' keys, so web-view routing hashes the same bytes as the
    producers' partitioner and the sinks read plain ids. Choosing the codec here (not by
    assigning ``key_serializer`` after construction) matters: Faust builds the changelog
    topic, which recovery decodes with, while the table is being registered.
    """

    def _serializer_from_type(self, typ: Any) -> Any:
        if typ is str:
            return "raw"
        return super()._serializer_from_type(typ)
