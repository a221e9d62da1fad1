"""Native generation: ``POST /v1/generate`` and ``POST /v1/route`` (routing without generating).

Both apply the unlearning policy of ``service.policy``: a non-admin caller may be refused the
base model or an explicit memory, is served by a routed unlearn memory whatever it asked for,
and is told nothing about how a prompt was routed unless a visible edit memory served it.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from memory_store.types import GenerationRequest, Route
from service.api.deps import ApiAuth, EngineDep, GeneratorDep, PolicyDep, SettingsDep
from service.limits import (
    check_generation,
    check_min_tokens,
    check_prompt_tokens,
    check_route_prompt,
    check_text,
    fit_context,
    sampling_temperature,
)
from service.schemas import GenerateRequest, GenerateResponse, RouteRequest, RouteResponse

router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[ApiAuth])


@router.post("/generate")
async def generate(
    body: GenerateRequest, settings: SettingsDep, engine: EngineDep, generator: GeneratorDep,
    policy: PolicyDep,
) -> GenerateResponse:
    """Generate a completion; ``memory`` "auto" routes through the gate, "none" is the base."""
    check_text(settings, "prompt", body.prompt)
    check_generation(settings, body.max_new_tokens, body.stop, "max_new_tokens")
    check_min_tokens(body.min_tokens, body.max_new_tokens, "max_new_tokens")
    explicit = "max_new_tokens" in body.model_fields_set

    def prepare() -> tuple[int, str]:
        budget = fit_context(generator, settings, engine.context_length, body.prompt, "prompt",
                             body.max_new_tokens if explicit else None, "max_new_tokens",
                             body.max_new_tokens)
        check_min_tokens(body.min_tokens, budget, "max_new_tokens")  # after the context cut
        policy.check_selection(body.memory, "memory")
        return budget, policy.served(body.memory, [body.prompt], generator)[0]

    budget, memory = await run_in_threadpool(prepare)
    request = GenerationRequest(
        prompt=body.prompt,
        max_new_tokens=budget,
        temperature=sampling_temperature(body.temperature),
        top_p=body.top_p,
        stop=tuple(body.stop),
        memory=memory,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
    )
    result = await generator.generate(request)
    return GenerateResponse.of(await run_in_threadpool(policy.result, result))


@router.post("/route")
async def route(
    body: RouteRequest, settings: SettingsDep, engine: EngineDep, generator: GeneratorDep,
    policy: PolicyDep,
) -> RouteResponse:
    """Which memory would serve ``prompt``, with its gate score and key similarity (withheld
    from non-admin callers unless a visible edit memory would serve it)."""
    check_text(settings, "prompt", body.prompt)

    def run() -> tuple[Route, int, bool]:
        check_prompt_tokens(generator, settings, body.prompt, "prompt")
        check_route_prompt(generator, engine.context_length, body.prompt)
        version = engine.version
        r = generator.route([body.prompt])[0]
        return r, version, policy.shows(r.memory_id)

    r, version, shown = await run_in_threadpool(run)
    if not shown:
        return RouteResponse(memory_id=None, gate=None, similarity=None,
                             codebook_version=version)
    return RouteResponse(
        memory_id=r.memory_id, gate=r.gate, similarity=r.similarity, codebook_version=version
    )
