"""A JSONL reader that survives bad input.

datatrove's ``JsonlReader`` stops reading a file at the first non-UTF-8 byte and skips a
malformed line without counting it. ``SafeJsonlReader`` decodes each line on its own
(invalid bytes replaced and counted), skips malformed lines and documents without text with
a stat and a log line naming the file and line number, so one bad line never costs the rest
of the file.
"""

from __future__ import annotations

import orjson
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.readers.jsonl import JsonlReader
from loguru import logger


class SafeJsonlReader(JsonlReader):
    name = "🐿 Jsonl (safe)"

    def read_file(self, filepath: str):
        # the same for every line of the file: resolved once (datatrove resolves it per document)
        file_path = self.data_folder.resolve_paths(filepath) if self.add_file_path else None
        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            for li, raw in enumerate(f):
                with self.track_time():
                    if not raw.strip():
                        continue
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        line = raw.decode("utf-8", errors="replace")
                        self.stat_update("invalid_utf8_lines")
                        logger.warning(f"{filepath}:{li + 1}: invalid UTF-8 bytes replaced with U+FFFD")
                    try:
                        data = orjson.loads(line)
                        if not isinstance(data, dict):
                            raise ValueError("a JSON object is expected on each line")
                    except (orjson.JSONDecodeError, ValueError) as e:
                        self.stat_update("malformed_lines")
                        logger.warning(f"{filepath}:{li + 1}: skipped malformed JSON line ({e})")
                        continue
                    text = data.get(self.text_key)
                    if not isinstance(text, str) or not text.strip():
                        self.stat_update("empty_documents")
                        logger.warning(f"{filepath}:{li + 1}: skipped document without text")
                        continue
                    document = BaseReader.get_document_from_dict(self, data, filepath, li)
                    if not document:
                        continue
                    if file_path is not None:
                        document.metadata.setdefault("file_path", file_path)
                yield document
