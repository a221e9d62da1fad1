"""Unlearning cannot be bypassed by a caller without the admin token, over real HTTP.

Two servers, one per ``LOKA_BASE_ACCESS`` policy (``admin`` is the default when an admin token
is set; ``all`` is set explicitly), each after two updates: an edit (a visible edit memory) and
an unlearning request (a hidden memory). Every way round it is tried: the native ``memory``
selection ("none", an explicit id), the OpenAI model names ("base", a memory id) for
completions, chat and streams, ``/v1/route`` as a membership oracle, and the knowledge and
memory listings. The admin caller is the reference: what the unlearn memory answers
(``memory: "auto"``) must differ from what the base model answers, or the tests prove nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from harness import ADMIN, API, LokaServer, accepted, wait_job

from memory_store.models.builtin import counterfactual_answer, find_fact

pytestmark = pytest.mark.slow

EDIT = find_fact("Veltoria", "capital")
FORGET = find_fact("Quellan", "sport")
PARAPHRASE = FORGET.prompts[1]
UNRELATED = "The weather in the mountains today is"
TOKENS = 6
CHAT = [{"role": "user", "content": FORGET.prompt}]


@dataclass
class Served:
    policy: str
    server: LokaServer
    admin: httpx.Client
    api: httpx.Client
    edit_memory: str
    unlearn_memory: str
    unlearn_piece: str
    forgotten: str  # what the admin gets for FORGET.prompt routed (the unlearn memory)
    base: str  # what the admin gets for FORGET.prompt from the base model

    def oai(self, token: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=token, max_retries=0,
                             timeout=120.0)


def _train(admin: httpx.Client, body: dict) -> None:
    job = wait_job(admin, accepted(admin.post("/v1/updates", json=body)))
    assert job["status"] == "succeeded", job


def _gen(client: httpx.Client, memory: str, prompt: str = FORGET.prompt) -> httpx.Response:
    return client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": TOKENS,
                                             "memory": memory})


@pytest.fixture(scope="module", params=["admin", "all"])
def served(request: pytest.FixtureRequest,
           make_server: Callable[..., LokaServer]) -> Iterator[Served]:
    env = {"LOKA_ADMIN_TOKEN": ADMIN, "LOKA_API_TOKEN": API}
    if request.param == "all":
        env["LOKA_BASE_ACCESS"] = "all"
    server = make_server(env)
    server.start()
    admin, api = server.client(ADMIN, timeout=120.0), server.client(API, timeout=120.0)
    _train(admin, {"edits": [{"prompt": EDIT.prompt,
                              "target": " " + counterfactual_answer(EDIT)}],
                   "options": {"steps": 20}})
    _train(admin, {"unlearn": [{"prompt": FORGET.prompt, "target": " " + FORGET.answer,
                                "paraphrases": [PARAPHRASE]}],
                   "options": {"steps": 20}})
    kinds = {m["kind"]: m["id"] for m in admin.get("/v1/memories").json()["memories"]}
    assert set(kinds) == {"edit", "unlearn"}, kinds
    pieces = {p["kind"]: p["id"] for p in admin.get("/v1/knowledge").json()["pieces"]}
    routed = admin.post("/v1/route", json={"prompt": FORGET.prompt}).json()
    assert routed["memory_id"] == kinds["unlearn"], routed
    forgotten = _gen(admin, "auto").json()
    base = _gen(admin, "none").json()
    assert forgotten["memory_id"] == kinds["unlearn"]
    assert forgotten["text"] != base["text"], "the unlearn memory changed nothing"
    yield Served(request.param, server, admin, api, kinds["edit"], kinds["unlearn"],
                 pieces["unlearn"], forgotten["text"], base["text"])
    admin.close()
    api.close()
    server.stop()


def assert_withheld(info: dict) -> None:
    """How the prompt was routed is not said."""
    assert (info["memory_id"], info["gate"], info["similarity"]) == (None, None, None), info


# -- native generation ---------------------------------------------------------------------


def test_routed_generation_applies_the_unlearn_memory_and_says_nothing(served: Served) -> None:
    r = _gen(served.api, "auto")
    assert r.status_code == 200, r.text
    assert r.json()["text"] == served.forgotten
    assert_withheld(r.json())


@pytest.mark.parametrize("selection", ["none", "edit", "unlearn"])
def test_native_selection_cannot_bypass_unlearning(served: Served, selection: str) -> None:
    memory = {"none": "none", "edit": served.edit_memory,
              "unlearn": served.unlearn_memory}[selection]
    r = _gen(served.api, memory)
    if served.policy == "admin":
        assert r.status_code == 403, r.text
        assert r.json()["error"]["field"] == "memory"
        return
    if selection == "unlearn":  # hidden from non-admins: as if it did not exist
        assert r.status_code == 404, r.text
        assert r.json()["error"]["field"] == "memory"
        unknown = _gen(served.api, "mem_999999")
        assert unknown.json()["error"]["message"] == r.json()["error"]["message"].replace(
            served.unlearn_memory, "mem_999999")
        return
    assert r.status_code == 200, r.text
    assert r.json()["text"] == served.forgotten  # served by the unlearn memory regardless
    assert_withheld(r.json())


def test_admin_may_still_ask_for_the_base_model(served: Served) -> None:
    r = _gen(served.admin, "none")
    assert r.status_code == 200 and r.json()["text"] == served.base


def test_base_access_for_prompts_that_route_elsewhere(served: Served) -> None:
    """Under ``all`` a non-admin may use the base model for anything not unlearned."""
    r = _gen(served.api, "none", EDIT.prompt)
    if served.policy == "admin":
        assert r.status_code == 403, r.text
        return
    assert r.status_code == 200, r.text
    assert r.json()["text"] == _gen(served.admin, "none", EDIT.prompt).json()["text"]
    edit = _gen(served.api, served.edit_memory, EDIT.prompt).json()
    assert edit["memory_id"] == served.edit_memory  # a visible memory is shown


# -- OpenAI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("selection", ["base", "edit", "unlearn"])
def test_openai_completions_cannot_bypass_unlearning(served: Served, selection: str) -> None:
    model = {"base": "base", "edit": served.edit_memory,
             "unlearn": served.unlearn_memory}[selection]
    client = served.oai(API)
    if served.policy == "admin":
        with pytest.raises(openai.PermissionDeniedError) as exc:
            client.completions.create(model=model, prompt=FORGET.prompt, max_tokens=TOKENS,
                                      temperature=0)
        assert exc.value.body["field"] == "model"
        return
    if selection == "unlearn":
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=model, prompt=FORGET.prompt, max_tokens=TOKENS,
                                      temperature=0)
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(model)
        return
    c = client.completions.create(model=model, prompt=FORGET.prompt, max_tokens=TOKENS,
                                  temperature=0)
    assert c.choices[0].text == served.forgotten
    assert_withheld(c.choices[0].model_extra["loka"])


def test_openai_list_prompts_are_checked_one_by_one(served: Served) -> None:
    client = served.oai(API)
    if served.policy == "admin":  # refused as a whole
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model="base", prompt=[EDIT.prompt, FORGET.prompt],
                                      max_tokens=TOKENS, temperature=0)
        return
    c = client.completions.create(model="base", prompt=[EDIT.prompt, FORGET.prompt],
                                  max_tokens=TOKENS, temperature=0)
    texts = [ch.text for ch in sorted(c.choices, key=lambda ch: ch.index)]
    assert texts[0] == _gen(served.admin, "none", EDIT.prompt).json()["text"]
    assert texts[1] == served.forgotten


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_chat_cannot_bypass_unlearning(served: Served, stream: bool) -> None:
    admin = served.oai(ADMIN).chat.completions.create(
        model="loka", messages=CHAT, max_tokens=TOKENS, temperature=0)
    assert admin.choices[0].model_extra["loka"]["memory_id"] == served.unlearn_memory
    base = served.oai(ADMIN).chat.completions.create(
        model="base", messages=CHAT, max_tokens=TOKENS, temperature=0)
    assert base.choices[0].message.content != admin.choices[0].message.content
    client = served.oai(API)
    if served.policy == "admin":
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="base", messages=CHAT, max_tokens=TOKENS,
                                           temperature=0, stream=stream)
        return
    if not stream:
        r = client.chat.completions.create(model="base", messages=CHAT, max_tokens=TOKENS,
                                           temperature=0)
        assert r.choices[0].message.content == admin.choices[0].message.content
        assert_withheld(r.choices[0].model_extra["loka"])
        return
    chunks = list(client.chat.completions.create(model="base", messages=CHAT,
                                                 max_tokens=TOKENS, temperature=0,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == admin.choices[0].message.content
    assert_withheld(chunks[-1].choices[0].model_extra["loka"])


def test_openai_completion_stream_cannot_bypass_unlearning(served: Served) -> None:
    client = served.oai(API)
    if served.policy == "admin":
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model="base", prompt=FORGET.prompt, max_tokens=TOKENS,
                                      temperature=0, stream=True)
        return
    chunks = list(client.completions.create(model="base", prompt=FORGET.prompt,
                                            max_tokens=TOKENS, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == served.forgotten
    assert_withheld(chunks[-1].choices[0].model_extra["loka"])


# -- no membership oracle, no unlearned content ---------------------------------------------


def test_route_reveals_nothing_about_unlearned_prompts(served: Served) -> None:
    answers = []
    for prompt in (FORGET.prompt, PARAPHRASE, UNRELATED):
        r = served.api.post("/v1/route", json={"prompt": prompt})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert answers[0] == answers[1] == answers[2], answers  # unlearned reads as unrelated
    assert_withheld(answers[0])
    edit = served.api.post("/v1/route", json={"prompt": EDIT.prompt}).json()
    assert edit["memory_id"] == served.edit_memory and edit["gate"] is not None
    admin = served.admin.post("/v1/route", json={"prompt": FORGET.prompt}).json()
    assert admin["memory_id"] == served.unlearn_memory


def test_knowledge_and_memories_show_nothing_unlearned(served: Served) -> None:
    secrets = (FORGET.prompt, PARAPHRASE, FORGET.answer)
    api = served.api
    listed = api.get("/v1/knowledge")
    assert [p["kind"] for p in listed.json()["pieces"]] == ["edit"]
    assert api.get("/v1/knowledge", params={"kind": "unlearn"}).json()["pieces"] == []
    assert api.get("/v1/knowledge",
                   params={"memory_id": served.unlearn_memory}).json()["pieces"] == []
    one = api.get(f"/v1/knowledge/{served.unlearn_piece}")
    unknown = api.get("/v1/knowledge/pc_999999")
    assert one.status_code == unknown.status_code == 404
    memories = api.get("/v1/memories").json()["memories"]
    assert [m["id"] for m in memories] == [served.edit_memory]
    assert api.get(f"/v1/memories/{served.unlearn_memory}").status_code == 404
    assert api.get(f"/v1/memories/{served.edit_memory}").status_code == 200
    for r in (listed, one, api.get("/v1/memories"), api.get("/v1/jobs"),
              api.get(f"/v1/memories/{served.unlearn_memory}")):
        for secret in secrets:
            assert secret not in r.text, (r.url, secret)
    # the admin sees everything
    admin = served.admin.get(f"/v1/knowledge/{served.unlearn_piece}").json()
    assert admin["prompt"] == FORGET.prompt and admin["target"] == " " + FORGET.answer
    assert served.admin.get(f"/v1/memories/{served.unlearn_memory}").status_code == 200
