"""A local OpenAI-compatible chat-completions server for the autointerp tests (no model can
run here): it answers deterministically from the prompt, as a perfect explainer and
classifier would for latents that fire on one word, and records what it was sent.

Explainer prompts: the most frequent <<marked>> word -> "[EXPLANATION]: the word 'w'".
Detection prompts: 1 for each example containing the explained word. Fuzzing prompts: 1
for each example whose marked spans are all the word. An explanation containing a word in
`malformed` gets an answer without the asked-for format. `fail` maps a status (429, 500, 400...)
to how many first attempts of each distinct request get it; `delay` slows every answer.
"""
from __future__ import annotations

import collections
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_EX_RE = re.compile(r"^Example (\d+): (.*)$", re.M)


def _word_of(explanation: str) -> str:
    m = re.search(r"'([^']+)'", explanation)
    return m.group(1) if m else explanation


def answer(messages: list[dict], malformed: set) -> str:
    system, user = messages[0]["content"], messages[-1]["content"]
    if "[EXPLANATION]" in system:
        marked = re.findall(r"<<(.*?)>>", user)
        word = collections.Counter(w.strip().lower() for w in marked).most_common(1)[0][0]
        return f"The examples share one word.\n[EXPLANATION]: the word '{word}'"
    expl = re.search(r"^Explanation: (.*)$", user, re.M).group(1)
    word = _word_of(expl)
    if any(bad in expl for bad in malformed):
        return "I am not sure what this feature does."
    examples = _EX_RE.findall(user)
    if "marks are correct" in system:                               # fuzzing
        labels = [int(bool(spans := re.findall(r"<<(.*?)>>", t)) and
                      all(s.strip().lower() == word for s in spans)) for _, t in examples]
    else:                                                           # detection
        labels = [int(re.search(rf"\b{re.escape(word)}\b", t.lower()) is not None)
                  for _, t in examples]
    return "[" + ", ".join(map(str, labels)) + "]"


def _logprobs(text: str) -> list[dict]:
    """OpenAI-style token logprobs of a '[1, 0, ...]' answer: each digit token with P(1)
    graded (0.6..0.9 for a 1, 0.1..0.4 for a 0), so AUROC from them is 1 as well."""
    import math

    out, k = [], 0
    for tok in re.findall(r"\d|[^\d]+", text):
        if tok in "01":
            p1 = (0.6 if tok == "1" else 0.1) + 0.1 * (k % 4)
            k += 1
            out.append({"token": tok, "logprob": math.log(p1 if tok == "1" else 1 - p1),
                        "top_logprobs": [{"token": "1", "logprob": math.log(p1)},
                                         {"token": "0", "logprob": math.log(1 - p1)}]})
        else:
            out.append({"token": tok, "logprob": 0.0, "top_logprobs": []})
    return out


class FakeLLM:
    """Start with `with FakeLLM() as srv:`; srv.url is the base URL (…/v1)."""

    def __init__(self, *, delay: float = 0.0, fail: dict | None = None,
                 malformed=(), hang_first: int = 0, log_path: str | None = None):
        self.delay, self.fail = delay, dict(fail or {})
        self.malformed = set(malformed)
        self.hang_first = hang_first          # the first N requests sleep past any timeout
        self.log_path = log_path              # one line per request body, as it arrives
        self.requests: list[dict] = []        # bodies, in arrival order
        self.statuses: list[int] = []
        self.in_flight = self.max_in_flight = 0
        self._attempts = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                srv._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _send(self, h, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if status == 429:
            h.send_header("Retry-After", "0")
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        key = json.dumps(body, sort_keys=True)
        with self._lock:
            n = len(self.requests)
            self.requests.append({"path": h.path, "headers": dict(h.headers), "body": body})
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(key + "\n")
            attempt = self._attempts[key]
            self._attempts[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        counted = [True]

        def leave():
            # out of flight BEFORE the answer is written: once the client has read it, it
            # may send its next request at once, and that must not count as overlapping
            with self._lock:
                if counted[0]:
                    self.in_flight -= 1
                    counted[0] = False
        try:
            if n < self.hang_first:
                self._stop.wait(5.0)            # past the client's timeout
            time.sleep(self.delay)
            status, seen = 200, 0
            for code in self.fail:                  # in the order given
                seen += self.fail[code]
                if attempt < seen:
                    status = code
                    break
            with self._lock:
                self.statuses.append(status)
            if status != 200:
                leave()
                self._send(h, status, {"error": {"message": f"fake {status}"}})
                return
            text = answer(body["messages"], self.malformed)
            choice = {"index": 0, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": text}}
            if body.get("logprobs") and text.startswith("["):
                choice["logprobs"] = {"content": _logprobs(text)}
            leave()
            self._send(h, 200, {"id": f"c{n}", "object": "chat.completion",
                                "model": body["model"], "choices": [choice],
                                "usage": {"prompt_tokens": len(json.dumps(body["messages"])) // 4,
                                          "completion_tokens": len(text) // 4}})
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            leave()

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_forever_main(port_file: str, delay: float) -> None:
    """Run a FakeLLM in this process until killed, writing its URL to port_file and each
    request to port_file + ".log" (the crash test's server outlives the killed client)."""
    import os

    srv = FakeLLM(delay=delay, log_path=port_file + ".log")
    srv.__enter__()
    with open(port_file + ".tmp", "w") as f:
        f.write(srv.url)
    os.replace(port_file + ".tmp", port_file)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    import sys
    serve_forever_main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
