"""The autointerp LLM client against a local OpenAI-compatible server (tests/_llm_server.py):
request format, the concurrency bound, retries on 429/500, timeouts, the response cache,
token accounting; no network without an endpoint."""
from __future__ import annotations

import json
import os

import pytest

import actspace as acts
from _llm_server import FakeLLM
from actspace.interp.llm import LLMError

EXPLAIN = [{"role": "system", "content": "Answer as [EXPLANATION]: x"},
           {"role": "user", "content": "Example 1: a <<cat>> sat"}]


def chat(i: int) -> list[dict]:
    return [EXPLAIN[0], {"role": "user", "content": f"Example 1: doc {i} <<cat>>"}]


def client(url, tmp_path=None, **kw):
    kw.setdefault("backoff_s", 0.01)
    return acts.llm.openai_compatible(url, "fake-model", progress=False,
                                      cache_dir=None if tmp_path is None else tmp_path / "c",
                                      **kw)


def test_request_format_and_usage():
    with FakeLLM() as srv:
        c = client(srv.url, api_key="sk-test", max_tokens=77)
        out = c.complete(EXPLAIN)
    assert out.text.endswith("[EXPLANATION]: the word 'cat'") and not out.cached
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["body"] == {"model": "fake-model", "messages": EXPLAIN, "max_tokens": 77,
                           "temperature": 0.0}
    u = c.usage.as_dict()
    assert u["requests"] == 1 and u["prompt_tokens"] == out.prompt_tokens > 0
    assert u["completion_tokens"] == out.completion_tokens > 0


def test_no_api_key_no_header_and_bad_arguments():
    with FakeLLM() as srv:
        client(srv.url).complete(EXPLAIN)
    assert "Authorization" not in srv.requests[0]["headers"]
    with pytest.raises(ValueError, match="base_url"):
        acts.llm.openai_compatible("localhost:8000", "m")
    with pytest.raises(ValueError, match="max_concurrency"):
        acts.llm.openai_compatible("http://x/v1", "m", max_concurrency=0)


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_is_bounded(limit):
    with FakeLLM(delay=0.15) as srv:
        c = client(srv.url, max_concurrency=limit)
        outs = c.complete_many([chat(i) for i in range(9)])
    assert all(o.text.endswith("'cat'") for o in outs)
    assert srv.max_in_flight == limit          # reached, never exceeded
    assert len(srv.requests) == 9


def test_identical_chats_are_sent_once():
    with FakeLLM() as srv:
        outs = client(srv.url, max_concurrency=4).complete_many([chat(0), chat(1), chat(0)])
    assert len(srv.requests) == 2 and outs[0] is outs[2] and outs[1].text == outs[0].text


def test_retry_on_429_and_500():
    with FakeLLM(fail={429: 1, 500: 1}) as srv:
        c = client(srv.url, max_concurrency=2, max_retries=3)
        outs = c.complete_many([chat(i) for i in range(4)])
    assert all(not isinstance(o, Exception) for o in outs)
    assert sorted(srv.statuses) == sorted([429] * 4 + [500] * 4 + [200] * 4)
    assert c.usage.retries == 8 and c.usage.requests == 4 and c.usage.failed == 0


def test_retries_exhausted_is_an_error_in_place_the_rest_goes_on():
    with FakeLLM(fail={500: 3}) as srv:
        c = client(srv.url, max_retries=1)
        with pytest.raises(LLMError, match="HTTP 500"):
            c.complete(chat(0))
        assert len(srv.requests) == 2          # one try, one retry
        c2 = client(srv.url, max_retries=3)
        outs = c2.complete_many([chat(0), chat(1)])
    assert not isinstance(outs[0], Exception)    # 3 failures seen in all, 4th try succeeds
    assert not isinstance(outs[1], Exception)
    assert c.usage.failed == 1


def test_client_errors_are_not_retried():
    with FakeLLM(fail={400: 5}) as srv:
        c = client(srv.url, max_retries=4)
        with pytest.raises(LLMError, match="HTTP 400"):
            c.complete(chat(0))
    assert len(srv.requests) == 1 and c.usage.retries == 0 and c.usage.failed == 1


def test_timeout_then_retry():
    with FakeLLM(hang_first=1) as srv:
        c = client(srv.url, timeout=0.5, max_retries=2)
        out = c.complete(chat(0))
    assert out.text.endswith("'cat'")
    assert c.usage.retries == 1 and len(srv.requests) == 2
    with FakeLLM(hang_first=5) as srv:
        with pytest.raises(LLMError, match="(?i)timed out|timeout"):
            client(srv.url, timeout=0.3, max_retries=1).complete(chat(0))


def test_cache_reuse_costs_nothing(tmp_path):
    chats = [chat(i) for i in range(5)]
    with FakeLLM() as srv:
        first = client(srv.url, tmp_path).complete_many(chats)
        assert len(srv.requests) == 5
        c2 = client(srv.url, tmp_path)
        second = c2.complete_many(chats)
        assert len(srv.requests) == 5          # zero new requests
        c2.complete(chats[0], temperature=0.7)  # another request body: not a cache hit
        assert len(srv.requests) == 6
    assert [a.text for a in first] == [b.text for b in second]
    assert all(b.cached for b in second) and c2.usage.cached == 5
    assert c2.usage.prompt_tokens == srv_tokens(srv.requests[-1:])  # only the new one counted
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "c") for f in fs]
    assert len(files) == 6 and not any(".tmp." in f for f in files)
    entries = {f: json.loads(open(f).read()) for f in files}
    assert all(e["request"]["model"] == "fake-model" and "choices" in e["response"]
               for e in entries.values())
    damaged = next(f for f, e in entries.items() if e["request"]["temperature"] == 0.0)
    with open(damaged, "w") as f:              # a damaged entry is asked again, rewritten
        f.write('{"request": {}, "response": {"choices": []}}')
    with FakeLLM() as srv2:
        c3 = client(srv2.url, tmp_path)
        c3.complete_many(chats)
    assert len(srv2.requests) == 1 and c3.usage.cached == 4
    assert json.loads(open(damaged).read())["response"]["choices"]


def srv_tokens(reqs) -> int:
    return sum(len(json.dumps(r["body"]["messages"])) // 4 for r in reqs)


def test_answers_without_text_are_errors():
    from actspace.interp.llm import _message_text

    with pytest.raises(LLMError, match="choices"):
        _message_text({"error": "x"})
    with pytest.raises(LLMError, match="not text"):
        _message_text({"choices": [{"message": {"content": None}}]})


def test_no_client_no_network(tmp_path):
    with pytest.raises(ValueError, match="client="):
        acts.explain(tmp_path, [0])
    with pytest.raises(ValueError, match="need client="):
        acts.score_explanations({0: "cats"}, tmp_path, ["detection"])


def test_import_is_light():
    """acts.llm / acts.explain / acts.score_explanations load without torch."""
    import subprocess
    import sys

    code = ("import sys, actspace as a; a.llm; a.explain; a.score_explanations; "
            "a.llm.openai_compatible('http://127.0.0.1:9/v1', 'm'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "python"))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
