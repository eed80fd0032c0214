"""Steady load for the crash test (tests/test_crash.py): the official, unmodified SDKs calling
the three APIs, streaming and not, from a few threads at once, through HTTPS_PROXY only.

Run as a separate process whose only proxy configuration is HTTPS_PROXY and SSL_CERT_FILE; it
talks JSON lines. Retries are off (``max_retries=0``): one call of the client is one call
through the proxy. Each call's prompt carries a unique marker word, ``PREFIX<n>``.

    stdin  {"start": PREFIX, "workers": N, "seed": S}   N threads call until told to stop
    stdin  {"stop": true}                                each thread ends its call and stops
    stdout {"ready": true}                               once, when the SDKs are imported
    stdout {"marker": …, "api": …, "stream": …, "ok": …, "live": …, "error": …, "t0": …, "t1": …}
                                                         one per call, as it ends
    stdout {"stopped": PREFIX}                           after the last call of the batch

``live`` says that the failure was answered by a proxy that was running: an HTTP error status,
or an error event in the stream, as opposed to a connection refused, reset or timed out.
"""

import itertools
import json
import random
import sys
import threading
import time
from typing import Any

import anthropic
import openai

#: Longer than any call of the test takes; bounds a call that a broken proxy would leave hanging.
TIMEOUT = 20.0
APIS = ("chat", "responses", "messages")
_print_lock = threading.Lock()


def emit(message: dict[str, Any]) -> None:
    with _print_lock:
        print(json.dumps(message), flush=True)


class Worker:
    def __init__(self) -> None:
        self.openai = openai.OpenAI(api_key="sk-test-key", max_retries=0, timeout=TIMEOUT)
        self.anthropic = anthropic.Anthropic(api_key="sk-ant-test-key", max_retries=0, timeout=TIMEOUT)

    def call(self, api: str, stream: bool, prompt: str) -> None:
        """Returns once the SDK has the whole answer; raises what the SDK raises."""
        if api == "chat":
            chat: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}
            if stream:
                with self.openai.chat.completions.stream(**chat, stream_options={"include_usage": True}) as s:
                    assert s.get_final_completion().choices[0].message.content
            else:
                assert self.openai.chat.completions.create(**chat).choices[0].message.content
        elif api == "responses":
            if stream:
                with self.openai.responses.stream(model="gpt-5", input=prompt) as s:
                    assert s.get_final_response().output_text
            else:
                assert self.openai.responses.create(model="gpt-5", input=prompt).output_text
        else:
            message: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 1024}
            message["messages"] = [{"role": "user", "content": prompt}]
            if stream:
                with self.anthropic.messages.stream(**message) as s:
                    assert s.get_final_message().content
            else:
                assert self.anthropic.messages.create(**message).content


def run_batch(prefix: str, workers: int, seed: int, stop: threading.Event) -> None:
    numbers = itertools.count()
    lock = threading.Lock()

    def work(index: int) -> None:
        rng = random.Random(f"{seed}-{index}")
        worker = Worker()
        while not stop.is_set():
            with lock:
                marker = f"{prefix}{next(numbers)}"
            api, stream = rng.choice(APIS), rng.random() < 0.5
            # A third of the streams are paced, so that kills land inside streams too.
            pace = " [scenario:slow 0.03]" if stream and rng.random() < 0.35 else ""
            result: dict[str, Any] = {"marker": marker, "api": api, "stream": stream, "t0": time.time()}
            try:
                worker.call(api, stream, f"{marker} say hello{pace}")
                result.update(ok=True, live=False, error=None)
            except (openai.APIConnectionError, anthropic.APIConnectionError) as exc:
                result.update(ok=False, live=False, error=f"{type(exc).__name__}: {exc}")
            except (openai.APIError, anthropic.APIError) as exc:
                status = getattr(exc, "status_code", None)
                result.update(ok=False, live=True, error=f"{type(exc).__name__} {status}: {exc}")
            except Exception as exc:  # e.g. httpx.RemoteProtocolError when a stream is cut
                result.update(ok=False, live=False, error=f"{type(exc).__name__}: {exc}")
            result["t1"] = time.time()
            emit(result)
            if not result["ok"]:
                stop.wait(0.05)  # a dead proxy refuses at once: do not spin

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    emit({"stopped": prefix})


def main() -> None:
    emit({"ready": True})
    batch: threading.Thread | None = None
    stop = threading.Event()
    for line in sys.stdin:
        command = json.loads(line)
        if "start" in command:
            stop = threading.Event()
            args = (command["start"], command["workers"], command["seed"], stop)
            batch = threading.Thread(target=run_batch, args=args, daemon=True)
            batch.start()
        elif "stop" in command:
            stop.set()
            if batch is not None:
                batch.join()


if __name__ == "__main__":
    main()
