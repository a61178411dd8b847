"""On-disk cache of LLM responses, keyed by the request.

Why: an explain/score run over thousands of latents costs real money or GPU hours, and is
killed now and then. Each answer is written the moment it arrives, one small JSON file per
request (atomically, via actspace._io), so a rerun of the same requests costs nothing and a
crashed run resumes where it stopped. The key is the sha256 of the request body in canonical
JSON (model, messages, sampling parameters): any change to a prompt or a parameter is a new
request, a change of host serving the same model is not.
"""
from __future__ import annotations

import hashlib
import json
import os

from .._io import read_json, remove_stale_temporaries, write_json_atomic


def request_key(body: dict) -> str:
    """sha256 hex of the request body in canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    """Responses stored under directory/<key[:2]>/<key>.json as {"request", "response"}."""

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        remove_stale_temporaries(self.directory, recursive=True)   # of a killed writer

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".json")

    def get(self, body: dict) -> dict | None:
        """The cached response of this request, or None. A file that cannot be read (a
        disk error left it torn; atomic writes make that rare) counts as a miss."""
        path = self._path(request_key(body))
        if not os.path.isfile(path):
            return None
        try:
            entry = read_json(path, "cached LLM response")
        except ValueError:
            return None
        return entry.get("response")

    def put(self, body: dict, response: dict) -> None:
        write_json_atomic(self._path(request_key(body)),
                          {"request": body, "response": response}, indent=None)

    def __len__(self) -> int:
        return sum(len([f for f in files if f.endswith(".json")])
                   for _, _, files in os.walk(self.directory))
