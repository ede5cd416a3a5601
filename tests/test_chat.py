"""`nanoslm chat` on a chat (instruction-tuned) checkpoint: requests answered in a conversation whose oldest turns
give way to the context, /new and /system; and the turn window on its own."""

import io
import sys

import pytest

from nanoslm.cli import main
from nanoslm.conversation import ChatTokens, render
from nanoslm.engine import Engine
from nanoslm.tokenizer import get_encoding
from nanoslm.turns import window

from conftest import CHAT_ANSWER, CHAT_QUESTION

ENC = get_encoding("gpt2")
CHAT = ChatTokens.after(ENC.n_vocab)
ARGS = ["--temperature", "0", "--seed", "1", "--device", "cpu", "--dtype", "float32", "--threads", "1"]
ASK, ANSWER = {"role": "user", "content": CHAT_QUESTION}, {"role": "assistant", "content": CHAT_ANSWER}


def ids(messages):
    return render(messages, ENC, CHAT, reply=True)[0]


def test_window_drops_the_oldest_pairs_and_keeps_the_system_message_and_the_request():
    system = {"role": "system", "content": "Tell short stories."}
    pairs = [{"role": "user", "content": f"Request {i}, with “quotes”."} for i in range(3)]
    answers = [{"role": "assistant", "content": f"Story number {i}. The end."} for i in range(3)]
    messages = [system, pairs[0], answers[0], pairs[1], answers[1], pairs[2]]
    whole = len(ids(messages))
    assert window(messages, ENC, CHAT, whole + 10, 10) == (messages, ids(messages))  # it fits: all stay
    last = [system, pairs[1], answers[1], pairs[2]]
    assert window(messages, ENC, CHAT, whole + 9, 10) == (last, ids(last))  # one token short: the oldest pair goes
    assert window(messages, ENC, CHAT, len(ids(last)) + 5, 5) == (last, ids(last))
    alone = [system, pairs[2]]
    assert window(messages, ENC, CHAT, len(ids(last)) + 4, 5) == (alone, ids(alone))
    assert window(messages, ENC, CHAT, 8, 100) == (alone, ids(alone))  # too long still: the caller says so
    assert window(messages[1:], ENC, CHAT, 8, 100)[0] == [pairs[2]]  # no system message: none is made up


@pytest.fixture
def prompts(monkeypatch):
    """The ids of every prompt the chat sends to the engine, in order."""
    sent, stream = [], Engine.stream

    def recording(self, prompts, *args, **kwargs):
        sent.extend(list(p) for p in prompts)
        return stream(self, prompts, *args, **kwargs)

    monkeypatch.setattr(Engine, "stream", recording)
    return sent


def chat(checkpoint, lines, *args):
    """`nanoslm chat` on `lines` (then end of input); its output."""
    out = io.StringIO()
    sys_in, sys_out = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO("".join(f"{line}\n" for line in lines)), out
    try:
        main(["chat", "--checkpoint", str(checkpoint), *ARGS, *args])
    finally:
        sys.stdin, sys.stdout = sys_in, sys_out
    return out.getvalue()


def test_a_request_is_answered_as_the_model_was_tuned(chat_checkpoint, prompts):
    out = chat(chat_checkpoint, [CHAT_QUESTION, "", CHAT_QUESTION], "--max-new-tokens", "20")
    assert out.startswith("Nano-SLM story chat, requests mode (temperature 0.0,")
    assert out.endswith(f"> {CHAT_ANSWER}\n\n> > {CHAT_ANSWER}\n\n> \n")  # an empty line asks nothing
    assert prompts == [ids([ASK]), ids([ASK, ANSWER, ASK])]  # the second request reads the first turn


def test_the_oldest_turns_give_way_to_the_reply_and_it_is_said_once(chat_checkpoint, prompts):
    first, second = len(ids([ASK])), len(ids([ASK, ANSWER, ASK]))  # 11 and 36 tokens
    budget = 64 - second  # the second request just fits with its reply; a third does not
    out = chat(chat_checkpoint, [CHAT_QUESTION] * 4, "--max-new-tokens", str(budget))
    assert first + budget <= 64 < len(ids([ASK, ANSWER] * 2 + [ASK])) + budget
    assert prompts == [ids([ASK]), ids([ASK, ANSWER, ASK]), ids([ASK, ANSWER, ASK]), ids([ASK, ANSWER, ASK])]
    notice = f"(the oldest turns are left out from here on, to fit the conversation and a reply of up to {budget} "
    assert out.count(notice) == 1 and out.count(f"{CHAT_ANSWER}\n\n") == 4


def test_new_starts_afresh_and_the_system_message_stays(chat_checkpoint, prompts):
    system = {"role": "system", "content": "You tell stories."}
    out = chat(chat_checkpoint, [CHAT_QUESTION, "/system You tell stories.", CHAT_QUESTION, "/new", CHAT_QUESTION,
                                 "/system", CHAT_QUESTION], "--max-new-tokens", "20")
    assert "(system message: You tell stories.)" in out and "(a new conversation)" in out
    assert "(no system message)" in out
    assert prompts == [ids([ASK]), ids([system, ASK, ANSWER, ASK]), ids([system, ASK]), ids([ASK, ANSWER, ASK])]


def test_a_request_longer_than_the_context_is_refused(chat_checkpoint, prompts):
    out = chat(chat_checkpoint, ["dragon " * 70, CHAT_QUESTION])
    assert "error: this request needs 75 tokens, more than the model's context of 64; shorten it\n" in out
    assert prompts == [ids([ASK])]  # the refused request is not part of the conversation
