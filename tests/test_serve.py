"""`nanoslm serve`: the OpenAI-compatible API (official client), bad input, concurrent and vanished clients,
DVC experiments side by side, Ctrl-C, and the page in a real headless Chromium."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from nanoslm import checkpoint
from nanoslm.config import GPTConfig
from nanoslm.engine import Engine, Sampling, generators
from nanoslm.hardware import Hardware
from nanoslm.model import GPT
from nanoslm.serve import Registry, running
from nanoslm.serve import browser as page  # the page helpers, shared with scripts/screenshot.py
from nanoslm.serve.generation import StopFilter
from nanoslm.serve.limits import ApiError
from nanoslm.tokenizer import get_encoding

REPO = Path(__file__).resolve().parents[1]

CFG = GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)
CPU = Hardware(torch.device("cpu"), torch.float32)
ENC = get_encoding("gpt2")


def save_tiny(path, seed=0, **changes):
    torch.manual_seed(seed)
    checkpoint.save(path, GPT(GPTConfig(**{**CFG.__dict__, **changes})), step=30, val_loss=4.25, tokenizer="gpt2")
    return path


def expected(ckpt, prompt, sampling, seed):
    """What the engine writes for `prompt` with seed `seed`, decoded, as `nanoslm generate` would."""
    engine = Engine(checkpoint.load_model(ckpt)[0], CPU)
    (ids,) = engine.generate([ENC.encode_ordinary(prompt)], sampling, generators(seed, 1))
    return ENC.decode(ids)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="module")
def server(ckpt):
    with running(Registry(ckpt, None, CPU)) as url:
        yield url


@pytest.fixture
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=60)


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post(url, body, method="POST"):
    """(status, text) of a request with a JSON (or raw bytes, or no) body; an HTTP error is a status, not raised."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def stats(url):
    return get(f"{url}/health")["streams"]


def wait_idle(url, timeout=30):
    return page.wait_for(lambda: (s := stats(url))["active"] == 0 and s, timeout, "the streams to end")


# --- the API with OpenAI's own client ---------------------------------------------------------------------
def test_openai_client_gets_the_engines_story(client, ckpt):
    model = str(ckpt)
    assert model in [m.id for m in client.models.list().data]

    done = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=1.0,
                                     seed=7, extra_body={"top_k": None})
    story = expected(ckpt, "Once upon a time", Sampling(12, 1.0, None), 7)
    assert done.choices[0].text == story
    assert done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (4, 12)

    pieces = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=1.0,
                                            seed=7, stream=True, extra_body={"top_k": None}))
    assert "".join(c.choices[0].text for c in pieces) == story
    assert len([c for c in pieces if c.choices[0].text]) >= 6  # token by token, not all at once
    assert pieces[-1].choices[0].finish_reason == "length"

    two = client.completions.create(model=model, prompt="Tom", max_tokens=6, top_p=0.9, seed=3, n=2)
    assert [c.text for c in two.choices] == [expected(ckpt, "Tom", Sampling(6, 0.8, 200, 0.9), s) for s in (3, 4)]


def test_stop_sequences_cut_the_story(client, ckpt):
    story = expected(ckpt, "The dog", Sampling(20, 0.0, 200), 0)  # greedy: the same whatever the seed
    stop = story[len(story) // 2 : len(story) // 2 + 3]
    cut = story[: story.index(stop)]
    done = client.completions.create(model=str(ckpt), prompt="The dog", max_tokens=20, temperature=0, stop=[stop])
    assert (done.choices[0].text, done.choices[0].finish_reason) == (cut, "stop")
    chunks = list(client.completions.create(model=str(ckpt), prompt="The dog", max_tokens=20, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stops, pieces, shown", [
    (["END"], ["abc E", "N", "D more"], "abc "),  # a stop split across pieces is caught, its start held back
    (["END"], ["abc E", "x"], "abc Ex"),  # a false start is released
    (["xy", "b"], ["axy"], "a"),
])
def test_stop_filter(stops, pieces, shown):
    f, out = StopFilter(stops), ""
    for p in pieces:
        text, stopped = f.push(p)
        out += text
        if stopped:
            break
    else:
        out += f.flush()
    assert out == shown


def test_usage_and_timing_at_the_end_of_a_stream(server, ckpt):
    status, text = post(f"{server}/v1/completions", {"prompt": "Hi", "max_tokens": 5, "stream": True, "seed": 1,
                                                     "stream_options": {"include_usage": True}})
    events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5 and last["seed"] == 1
    assert last["timing"]["tokens_per_second"] > 0
    health = get(f"{server}/healthz")
    assert health["status"] == "ok" and health["loaded"] == [str(ckpt)]


# --- bad input ----------------------------------------------------------------------------------------------
BAD = [
    ({"temperature": -1}, 400, "temperature", "from 0 to 2"),
    ({"temperature": "hot"}, 400, "temperature", "from 0 to 2"),
    ({"top_p": 1.5}, 400, "top_p", "greater than 0 up to 1"),
    ({"top_p": 0}, 400, "top_p", "greater than 0 up to 1"),
    ({"max_tokens": 10**9}, 400, "max_tokens", "from 1 to 10000"),
    ({"max_tokens": True}, 400, "max_tokens", "from 1 to 10000"),
    ({"top_k": 10**6}, 400, "top_k", "from 1 to 50257"),
    ({"seed": -5}, 400, "seed", "from 0 to"),
    ({"n": 0}, 400, "n", "from 1 to 8"),
    ({"prompt": "x" * 10**6}, 400, "prompt", "at most 20000 characters"),
    ({"prompt": 42}, 400, "prompt", "a string"),
    ({"stop": ["a"] * 5}, 400, "stop", "at most 4"),
    ({"stream": "yes"}, 400, "stream", "true or false"),
    ({"logprobs": 2}, 400, "logprobs", "not supported"),
    ({"model": "no-such-model"}, 404, "model", "not served here"),
    (b'{"prompt": "Once', 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
]


@pytest.mark.parametrize("body, status, param, words", BAD, ids=[f"{b!r:.30}" for b, *_ in BAD])
def test_bad_input_is_a_4xx_naming_the_field(server, body, status, param, words):
    got, text = post(f"{server}/v1/completions", body if isinstance(body, bytes) else {"prompt": "a", **body})
    assert got == status, text
    error = json.loads(text)["error"]
    assert error["param"] == param and words in error["message"], error
    assert "Traceback" not in text and "File \"" not in text


def test_top_k_is_bounded_by_the_models_own_vocabulary():
    """A model with fewer ids than top_k: asked for, it is refused naming that model's bound; by default, all ids."""
    from nanoslm.serve import protocol

    with pytest.raises(ApiError, match=r"top_k must be an integer from 1 to 1000, or 0 or null for off; got 2000"):
        protocol.parse_completion({"prompt": "a", "top_k": 2000}).sampling(1000)
    assert protocol.parse_completion({"prompt": "a"}).sampling(100).top_k is None  # the default 200 > 100 ids
    picked = protocol.parse_completion({"prompt": "a", "top_k": 50, "max_tokens": 3}).sampling(100)
    assert picked == Sampling(3, 0.8, 50)


def oversized(url, path: str, start: bytes) -> tuple[bytes, bytes]:
    """(head, body) of the answer to a request that says 5 MiB and sends only `start`."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (path.encode(), 5 * 1024 * 1024, start))
        reply = b""
        while b"}}" not in reply and (part := sock.recv(4096)):
            reply += part
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


def test_a_huge_body_is_refused_before_it_is_read(server):
    head, body = oversized(server, "/v1/completions", b'{"prompt": "yyyy')
    assert head.startswith(b"HTTP/1.1 413")
    error = json.loads(body)["error"]
    assert error["param"] == "prompt" and "at most 4194304 bytes" in error["message"]


def test_wrong_routes_and_methods_answer_json(server):
    for url, method, status in ((f"{server}/v1/completions", "GET", 405), (f"{server}/nope", "GET", 404)):
        got, text = post(url, None if method == "GET" else b"", method=method)
        assert got == status and "error" in json.loads(text)


def test_a_broken_or_missing_checkpoint_is_a_4xx_not_a_crash(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with running(Registry(broken, None, CPU)) as url:
        status, text = post(f"{url}/v1/completions", {"prompt": "a"})
        assert status == 409 and "cannot be loaded" in text and "broken.pt" in text
        broken.unlink()
        status, text = post(f"{url}/v1/completions", {"prompt": "a"})
        assert status == 404 and "train one first" in text
        assert get(f"{url}/v1/models")["data"] == [] and get(f"{url}/health")["status"] == "ok"


def test_openai_client_sees_the_error(client, ckpt):
    import openai

    with pytest.raises(openai.BadRequestError, match="temperature must be a number from 0 to 2"):
        client.completions.create(model=str(ckpt), prompt="a", temperature=-1)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="a")


# --- many clients at once --------------------------------------------------------------------------------
def raw_request(url, body, path: str = "/v1/completions") -> socket.socket:
    """An HTTP request on a bare socket, so a test can stop reading or vanish mid-stream."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return sock


def read_until(sock, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        part = sock.recv(4096)
        assert part, f"the connection closed before {marker!r}: {got[-300:]!r}"
        got += part
    return got


def read_stream(url, body) -> tuple[str, dict]:
    """The text and usage of a streamed completion, read as it comes."""
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text, usage = "", None
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                chunk = json.loads(line[6:])
                text += "".join(c["text"] for c in chunk["choices"])
                usage = chunk.get("usage") or usage
    return text, usage


def test_concurrent_streams_with_a_vanished_and_a_stalled_client(server, ckpt):
    before = stats(server)
    body = {"prompt": "Once upon a time", "max_tokens": 150, "temperature": 1.0, "stream": True,
            "stream_options": {"include_usage": True}}
    results = {}

    def reader(seed):
        results[seed] = read_stream(server, {**body, "seed": seed})

    stalled = raw_request(server, {**body, "seed": 99})  # asks, then never reads
    vanished = raw_request(server, {**body, "max_tokens": 2000, "seed": 98})
    read_until(vanished, b"data: ")  # its story has begun ...
    vanished.close()  # ... and the tab is closed
    threads = [threading.Thread(target=reader, args=(seed,)) for seed in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        for seed in (1, 2, 3):
            text, usage = results[seed]
            assert text == expected(ckpt, "Once upon a time", Sampling(150, 1.0, 200), seed)
            assert usage["completion_tokens"] == 150
        assert len({results[s][0] for s in (1, 2, 3)}) == 3  # each its own story
    finally:
        stalled.close()
    after = wait_idle(server)
    assert after["cancelled"] - before["cancelled"] >= 1  # the vanished one was dropped, not finished
    assert after["completed"] - before["completed"] <= 4
    made = after["tokens_generated"] - before["tokens_generated"]
    assert made < 4 * 150 + 2000  # its 2000 tokens were never all made
    assert read_stream(server, {**body, "max_tokens": 3, "seed": 1})[1]["completion_tokens"] == 3  # still serving


def test_a_client_leaving_a_plain_request_stops_its_work(server):
    before = stats(server)
    sock = raw_request(server, {"prompt": "Once", "max_tokens": 2000, "seed": 5})
    time.sleep(0.2)
    sock.close()
    after = wait_idle(server)
    assert after["cancelled"] - before["cancelled"] == 1
    assert after["tokens_generated"] - before["tokens_generated"] < 2000


# --- the command line ---------------------------------------------------------------------------------------
def test_serve_help_states_the_host_choice(capsys):
    from nanoslm.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: 127.0.0.1" in out and "--host 0.0.0.0 is your explicit choice" in out
    for flag in ("--port", "--checkpoint", "--repo"):
        assert flag in out


def serve_then_ctrl_c(ckpt, tmp_path, path: str, body: dict, writing: bytes) -> None:
    """`nanoslm serve` in a subprocess, Ctrl-C while a stream on `path` is being written (`writing` seen): it must
    exit 0 with no traceback, after uvicorn's shutdown."""
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               DVC_NO_ANALYTICS="1")
    proc = subprocess.Popen([sys.executable, "-m", "nanoslm.cli", "serve", "--checkpoint", str(ckpt), "--repo",
                             str(tmp_path), "--port", "0", "--device", "cpu", "--dtype", "float32", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = re.search(r"on (http://127\.0\.0\.1:\d+)/", line).group(1)
        assert get(f"{url}/health")["status"] == "ok"
        sock = raw_request(url, {**body, "stream": True}, path)
        read_until(sock, writing)
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Shutting down" in err


def test_serve_command_serves_and_stops_on_ctrl_c(ckpt, tmp_path):
    serve_then_ctrl_c(ckpt, tmp_path, "/v1/completions", {"prompt": "a", "max_tokens": 2000}, b"data: ")


# --- experiments ---------------------------------------------------------------------------------------------
MAKE_MODEL = """\
import json, os, yaml, torch
from nanoslm import checkpoint
from nanoslm.config import GPTConfig
from nanoslm.model import GPT
p = yaml.safe_load(open("params.yaml"))["model"]
torch.manual_seed(p["seed"])
cfg = GPTConfig(block_size=32, vocab_size=50257, n_layer=p["n_layer"], n_head=2, n_embd=p["n_embd"], dropout=0.0,
                bias=False)
os.makedirs("models", exist_ok=True)
os.makedirs("metrics", exist_ok=True)
checkpoint.save("models/best.pt", GPT(cfg), step=7, val_loss=10.5, tokenizer="gpt2")
json.dump({"val_loss": 10.5, "bits_per_byte": 2.0 + p["n_embd"] / 100}, open("metrics/eval.json", "w"))
"""

DVC_YAML = """\
stages:
  train:
    cmd: python make_model.py
    deps: [make_model.py]
    params: [model]
    outs: [models/best.pt]
    metrics:
      - metrics/eval.json:
          cache: false
"""


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """A git + DVC repo with experiments `narrow` and `wide` in the cache, and `gone`, whose checkpoint is not."""
    repo = tmp_path_factory.mktemp("exps") / "repo"
    repo.mkdir()
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    (repo / "make_model.py").write_text(MAKE_MODEL)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("model:\n  n_layer: 1\n  n_embd: 16\n  seed: 1\n")
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q", "-b", "main"], dvc + ["init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "project"],
                dvc + ["exp", "run", "-q", "-n", "narrow"],
                dvc + ["exp", "run", "-q", "-n", "gone", "-S", "model.n_layer=2"],
                dvc + ["exp", "run", "-q", "-n", "wide", "-S", "model.n_layer=1", "-S", "model.n_embd=32",
                       "-S", "model.seed=2"]):
        result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    shown = json.loads(subprocess.run(dvc + ["exp", "show", "--json"], cwd=repo, env=env, capture_output=True,
                                      text=True, check=True).stdout)
    hashes = {}
    for exp in shown[1]["experiments"]:
        tip = exp["revs"][0]
        hashes[exp["name"]] = tip["data"]["outs"]["models/best.pt"]["hash"]
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    copies = {name: cache / h[:2] / h[2:] for name, h in hashes.items()}
    copies["gone"].unlink()  # as if its cache was garbage-collected
    return repo, {name: p for name, p in copies.items() if name != "gone"}


@pytest.fixture(scope="module")
def exp_server(experiments):
    repo, _ = experiments
    with running(Registry(repo / "models" / "best.pt", repo, CPU)) as url:
        yield url


def test_experiments_are_listed_and_served(exp_server, experiments):
    repo, files = experiments
    listed = {m["id"]: m for m in get(f"{exp_server}/api/models")["models"]}
    workspace = str(repo / "models" / "best.pt")  # --checkpoint is the workspace's model: listed once
    assert listed.keys() == {"narrow", "wide", "gone", "main", workspace}
    assert listed["narrow"]["available"] and listed["wide"]["available"] and listed[workspace]["available"]
    assert listed[workspace]["kind"] == "workspace" and listed[workspace]["params"] == listed["wide"]["params"]
    assert not listed["gone"]["available"] and "local DVC cache" in listed["gone"]["reason"]
    assert not listed["main"]["available"] and "dvc.lock" in listed["main"]["reason"]
    assert listed["wide"]["params"] == {"model.n_embd": 32, "model.seed": 2}
    assert listed["wide"]["metrics"]["bits_per_byte"] == pytest.approx(2.32)

    served = {m["id"] for m in get(f"{exp_server}/v1/models")["data"]}
    assert served == {"narrow", "wide", workspace}
    files = {**files, "workspace": files["wide"]}
    for name in ("narrow", "wide", "workspace"):
        status, text = post(f"{exp_server}/v1/completions", {"model": name, "prompt": "Hi", "max_tokens": 8, "seed": 4})
        assert status == 200 and json.loads(text)["choices"][0]["text"] == expected(files[name], "Hi",
                                                                                   Sampling(8), 4)
    status, text = post(f"{exp_server}/v1/completions", {"model": "gone", "prompt": "Hi"})
    assert status == 404 and "unavailable" in json.loads(text)["error"]["message"]
    assert set(get(f"{exp_server}/health")["loaded"]) == {"narrow", "wide", workspace}  # up to 3 stay loaded
    info = get(f"{exp_server}/api/model?id=wide")
    assert (info["n_layer"], info["n_embd"], info["vocab_size"], info["step"]) == (1, 32, 50257, 7)
    assert info["bits_per_byte"] == pytest.approx(2.32) and info["bits_per_byte_from"] == "metrics/eval.json"


def test_only_a_few_engines_stay_loaded(experiments):
    import asyncio

    repo, _ = experiments
    registry = Registry(repo / "models" / "best.pt", repo, CPU, max_engines=2)

    async def use(*names):
        for name in names:
            await registry.load(await registry.find(name))
        return registry.loaded()

    assert asyncio.run(use("narrow", "wide", "narrow", "workspace")) == ["narrow", str(repo / "models" / "best.pt")]


DVC_CAUSE = "the cache file went away " + "and so did its copy " * 12 + "\nDVC's second line closes the cause"


@pytest.mark.parametrize("debug", [False, True], ids=["cut", "NANOSLM_DEBUG=1"])
def test_nanoslm_debug_shows_dvcs_whole_cause_in_serve(experiments, monkeypatch, debug):
    """A technical cause reaches the page and the API on one short line, cut between words; with NANOSLM_DEBUG=1
    whole, as the README promises, or nobody can tell what DVC said."""
    import asyncio

    import dvc.api

    from nanoslm.serve.experiments import ModelEntry

    def unreadable(*args, **kwargs):
        raise OSError(DVC_CAUSE)

    repo, _ = experiments
    monkeypatch.setattr(dvc.api, "open", unreadable)
    if debug:
        monkeypatch.setenv("NANOSLM_DEBUG", "1")
    else:
        monkeypatch.delenv("NANOSLM_DEBUG", raising=False)
    registry = Registry(repo / "models" / "best.pt", repo, CPU)
    with running(registry) as url:
        listed = get(f"{url}/api/models")["models"]
    reason = next(m for m in listed if m["id"] == "narrow")["reason"]
    narrow = ModelEntry(id="narrow", kind="experiment", source="narrow", rev="HEAD", out_hash="0" * 32)
    with pytest.raises(ApiError) as loading:  # listed as readable, then gone when it is loaded
        asyncio.run(registry.load(narrow))
    assert loading.value.status == 409
    whole = " ".join(DVC_CAUSE.split())
    for said, before in ((reason, "DVC says: "), (loading.value.message, "models/best.pt at HEAD: ")):
        assert "\n" not in said
        if debug:
            assert said.endswith(before + whole), said
        else:
            cause = said.split(before, 1)[1]
            assert cause.endswith(" ...") and len(cause) <= 164 and whole.startswith(cause.removesuffix(" ...")), said


# --- the page in a real browser ----------------------------------------------------------------------------------
def test_page_streams_a_story(browser, server, ckpt, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page.open_page(browser, server)
    defaults = Sampling()
    assert browser.find_element(By.ID, "f-temperature").get_attribute("value") == str(defaults.temperature)
    assert browser.find_element(By.ID, "f-max_tokens").get_attribute("value") == str(defaults.max_new_tokens)
    info = browser.find_element(By.CSS_SELECTOR, ".story .model-info").text
    assert str(ckpt) in info and "1 layer × 16 wide" in info and "50257" in info and "unknown" in info

    polls = page.write(browser, "The little dog", seed=5, max_tokens=800)
    lengths = [p[0]["text"].__len__() for p in polls if p[0]["state"] == "writing"]
    grew = [b for a, b in zip(lengths, lengths[1:]) if b > a]
    assert len(grew) >= 2, f"the story did not grow while streaming: {lengths[:20]}"
    final = polls[-1][0]
    assert final["state"] == "done"
    assert final["text"] == expected(ckpt, "The little dog", Sampling(800, defaults.temperature, defaults.top_k), 5)
    assert re.fullmatch(r"800 tokens in [\d.]+ s · [\d.]+ tokens/s", final["speed"]), final["speed"]
    shot = tmp_path / "playground.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("NANOSLM_SCREENSHOT"):
        shutil.copy(shot, os.environ["NANOSLM_SCREENSHOT"])

    # keyboard: Tab goes from the prompt to Write, then (Stop being off) to the first setting; Enter writes; Esc
    # stops (and so does the server)
    before = stats(server)
    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "write"
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "f-temperature"
    page.set_field(browser, "f-max_tokens", 2000)
    prompt.send_keys(Keys.ENTER)
    page.wait_for(lambda: len(page.story_states(browser)[0]["text"]) > 20, what="the second story")
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    page.wait_for(lambda: page.story_states(browser)[0]["state"] == "stopped", what="Esc to stop it")
    after = wait_idle(server)
    assert after["cancelled"] - before["cancelled"] == 1 and after["tokens_generated"] - before["tokens_generated"] < 2000

    # a bad setting is refused on the page, naming the range
    page.set_field(browser, "f-top_p", 1.5)
    prompt.send_keys(Keys.CONTROL, Keys.ENTER)
    status = browser.find_element(By.ID, "status").text
    assert "Top-p must be a number greater than 0 up to 1" in status
    page.set_field(browser, "f-top_p", 1)


def test_page_fits_a_phone(browser, server):
    browser.set_window_size(390, 844)
    try:
        page.open_page(browser, server)
        overflow = page.js(browser, "return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{overflow}px wider than a phone"
        box = page.js(browser, "const r = document.querySelector('#write').getBoundingClientRect();"
                                     "return [r.left, r.right]")
        assert 0 <= box[0] and box[1] <= 390
    finally:
        browser.set_window_size(1280, 860)


def test_page_writes_experiments_side_by_side(browser, exp_server, experiments, tmp_path):
    from selenium.webdriver.common.by import By

    _, files = experiments
    page.open_page(browser, exp_server)
    rows = {r.find_element(By.CSS_SELECTOR, "input").get_attribute("value"): r
            for r in browser.find_elements(By.CSS_SELECTOR, "#model-list .model")}
    gone = rows["gone"].find_element(By.CSS_SELECTOR, "input")
    assert not gone.is_enabled() and "local DVC cache" in rows["gone"].text
    for row in rows.values():  # exactly narrow and wide
        box = row.find_element(By.CSS_SELECTOR, "input")
        if box.is_selected() != (box.get_attribute("value") in ("narrow", "wide")) and box.is_enabled():
            box.click()
    page.wait_for(lambda: sorted(s["model"] for s in page.story_states(browser)) == ["narrow", "wide"],
                        what="two columns")
    page.wait_for(lambda: page.js(browser, """return [...document.querySelectorAll('.story .model-info dd')]
                        .every(d => d.textContent !== 'loading…')"""), what="the model details")
    heads = {h.get_attribute("data-model"): h.find_element(By.CSS_SELECTOR, ".story-head").text
             for h in browser.find_elements(By.CSS_SELECTOR, ".story")}
    assert "1 layer × 16 wide" in heads["narrow"] and "1 layer × 32 wide" in heads["wide"]
    assert "Changed: model.n_embd=32, model.seed=2" in heads["wide"] and "bits_per_byte 2.32" in heads["wide"]
    assert "2.320 (metrics/eval.json)" in heads["wide"] and "Changed" not in heads["narrow"]
    assert "Step\n7" in heads["wide"] and "models/best.pt @ wide" in heads["wide"]

    polls = page.write(browser, "One day", seed=11, max_tokens=30)
    final = {s["model"]: s for s in polls[-1]}
    defaults = Sampling()
    for name in ("narrow", "wide"):
        assert final[name]["state"] == "done"
        assert final[name]["text"] == expected(files[name], "One day", Sampling(30, defaults.temperature,
                                                                               defaults.top_k), 11)
    browser.save_screenshot(str(tmp_path / "side-by-side.png"))


def test_screenshot_script(browser, server, tmp_path):
    out = page.take(browser, server, tmp_path / "docs" / "playground.png", "Once upon a time", 3, 20)
    assert out.read_bytes()[:4] == b"\x89PNG"
