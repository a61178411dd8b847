"""`acts.llm.openai_compatible(base_url, model)`: a small client for OpenAI-compatible chat
completions (vLLM, llama.cpp's server, SGLang, Ollama, OpenAI itself).

Why hand-rolled on the standard library: the wire format is one JSON POST, and the
`openai` package is a heavy dependency for that. What a long autointerp run needs is here:
a bounded number of requests in flight (threads; the server batches them), a timeout per
request, retries with exponential backoff on 429 / 5xx / connection errors (honouring
Retry-After), an on-disk response cache (cache.py: a rerun costs nothing, a crash resumes),
a tqdm progress bar and token accounting. Nothing connects anywhere until a request is made.
"""
from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from .cache import ResponseCache, request_key

__all__ = ["LLMError", "Completion", "OpenAICompatibleClient", "openai_compatible"]

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMError(RuntimeError):
    """A request that failed for good (after its retries), or an answer without text."""


@dataclass
class Completion:
    """One chat completion: text, the per-token logprobs when asked for (the OpenAI
    `choices[0].logprobs.content` list, else None), usage, and whether it came from cache."""
    text: str
    logprobs: list | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


@dataclass
class Usage:
    """Token accounting of a client: what this process sent (cached answers cost nothing)."""
    requests: int = 0             # HTTP requests that returned an answer
    cached: int = 0               # answers served from the cache
    retries: int = 0              # attempts repeated after 429/5xx/timeouts
    failed: int = 0               # requests that failed for good
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("requests", "cached", "retries", "failed",
                                              "prompt_tokens", "completion_tokens")}


class OpenAICompatibleClient:
    """POST {base_url}/chat/completions with {"model", "messages", ...}.

    max_concurrency: requests in flight at once; timeout: seconds per attempt;
    max_retries: extra attempts after a retryable failure (backoff_s * 2**attempt, jittered,
    capped at 60 s, or the server's Retry-After); cache_dir: where answers are kept (None:
    no cache); api_key: sent as a Bearer token (a local server needs none); params: extra
    body fields sent with every request (temperature defaults to 0 for reproducible runs)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 max_concurrency: int = 8, timeout: float = 120.0, max_retries: int = 5,
                 backoff_s: float = 1.0, cache_dir=None, max_tokens: int = 512,
                 temperature: float = 0.0, progress: bool = True, **params):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as "
                             f"http://localhost:8000/v1, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if not isinstance(max_concurrency, int) or max_concurrency <= 0:
            raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, got {max_retries!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.params = {"max_tokens": max_tokens, "temperature": temperature, **params}
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.usage = Usage()

    def __repr__(self) -> str:
        return f"OpenAICompatibleClient({self.url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ one request
    def body(self, messages: list[dict], **overrides) -> dict:
        """The JSON body of a request (also the cache key)."""
        return {"model": self.model, "messages": messages, **self.params, **overrides}

    def _post(self, body: dict) -> dict:
        """One request with retries; the parsed JSON answer, or LLMError."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.usage.add(retries=1)
            wait = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers,
                                             method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                last = f"HTTP {e.code} from {self.url}: {detail}"
                if e.code not in _RETRY_STATUS:
                    break
                wait = _retry_after(e.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__} talking to {self.url}: {getattr(e, 'reason', e)}"
            except json.JSONDecodeError as e:
                last = f"{self.url} answered with invalid JSON ({e})"
            if attempt < self.max_retries:
                time.sleep(wait if wait is not None else
                           min(60.0, self.backoff_s * 2 ** attempt) * (0.5 + random.random()))
        self.usage.add(failed=1)
        raise LLMError(last)

    def complete(self, messages: list[dict], **overrides) -> Completion:
        """The completion of one chat, from the cache when it holds this exact request."""
        body = self.body(messages, **overrides)
        raw = self.cache.get(body) if self.cache is not None else None
        try:
            text = _message_text(raw) if raw is not None else None
        except LLMError:                   # an unusable cache entry is a miss
            raw = None
        cached = raw is not None
        if not cached:
            raw = self._post(body)
            text = _message_text(raw)      # checked before caching: no text, no cache entry
        u = raw.get("usage") or {}
        done = Completion(text=text, logprobs=((raw["choices"][0].get("logprobs") or {})
                                               .get("content")), cached=cached,
                          prompt_tokens=int(u.get("prompt_tokens") or 0),
                          completion_tokens=int(u.get("completion_tokens") or 0))
        if cached:
            self.usage.add(cached=1)
        else:
            if self.cache is not None:
                self.cache.put(body, raw)
            self.usage.add(requests=1, prompt_tokens=done.prompt_tokens,
                           completion_tokens=done.completion_tokens)
        return done

    # ------------------------------------------------------------------ many requests
    def complete_many(self, chats: list[list[dict]], *, desc: str = "llm",
                      **overrides) -> list:
        """Completions of many chats, at most max_concurrency in flight, in input order
        (identical chats are sent once and share the answer). A chat that failed for good
        gives its LLMError in its place (the others go on)."""
        from tqdm import tqdm

        def one(chat):
            try:
                return self.complete(chat, **overrides)
            except LLMError as e:
                return e

        # identical chats are asked once (and never written to one cache file by two threads)
        first: dict[str, int] = {}
        for i, c in enumerate(chats):
            first.setdefault(request_key(self.body(c, **overrides)), i)
        unique = sorted(first.values())
        done = {}
        with ThreadPoolExecutor(self.max_concurrency) as pool, \
                tqdm(total=len(unique), desc=desc, disable=not self.progress or not unique,
                     unit="req") as bar:
            futures = {pool.submit(one, chats[i]): i for i in unique}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                bar.update(1)
                bar.set_postfix(tokens=self.usage.prompt_tokens + self.usage.completion_tokens,
                                cached=self.usage.cached, refresh=False)
        return [done[first[request_key(self.body(c, **overrides))]] for c in chats]


def _retry_after(value) -> float | None:
    """Seconds of a Retry-After header given in seconds (an HTTP date is ignored), capped."""
    try:
        return min(60.0, max(0.0, float(value)))
    except (TypeError, ValueError):
        return None


def _message_text(raw: dict) -> str:
    try:
        text = raw["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LLMError(f"answer without choices[0].message.content: {str(raw)[:200]}") from None
    if not isinstance(text, str):
        raise LLMError(f"answer content is not text: {str(text)[:200]}")
    return text


def openai_compatible(base_url: str, model: str, **kwargs) -> OpenAICompatibleClient:
    """A client for an OpenAI-compatible server, e.g. vLLM (`vllm serve MODEL` ->
    http://localhost:8000/v1) or llama.cpp (`llama-server -m model.gguf` ->
    http://localhost:8080/v1). kwargs: see OpenAICompatibleClient."""
    return OpenAICompatibleClient(base_url, model, **kwargs)
