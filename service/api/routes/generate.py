"""Native generation: ``POST /v1/generate`` and ``POST /v1/route`` (routing without generating)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from memory_store.types import GenerationRequest, Route
from service.api.deps import ApiAuth, EngineDep, GeneratorDep, SettingsDep
from service.errors import invalid
from service.limits import check_generation, check_text, sampling_temperature
from service.schemas import GenerateRequest, GenerateResponse, RouteRequest, RouteResponse

router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[ApiAuth])


@router.post("/generate")
async def generate(
    body: GenerateRequest, settings: SettingsDep, generator: GeneratorDep
) -> GenerateResponse:
    """Generate a completion; ``memory`` "auto" routes through the gate, "none" is the base."""
    check_text(settings, "prompt", body.prompt)
    check_generation(settings, body.max_new_tokens, body.stop, "max_new_tokens")
    request = GenerationRequest(
        prompt=body.prompt,
        max_new_tokens=body.max_new_tokens,
        temperature=sampling_temperature(body.temperature),
        top_p=body.top_p,
        stop=tuple(body.stop),
        memory=body.memory,
        seed=body.seed,
    )
    return GenerateResponse.of(await generator.generate(request))


@router.post("/route")
async def route(
    body: RouteRequest, settings: SettingsDep, engine: EngineDep, generator: GeneratorDep
) -> RouteResponse:
    """Which memory would serve ``prompt``, with its gate score and key similarity."""
    check_text(settings, "prompt", body.prompt)

    def run() -> tuple[Route, int]:
        n = generator.count_tokens(body.prompt)
        if n > settings.max_prompt_tokens:
            raise invalid("prompt", f"at most {settings.max_prompt_tokens} tokens (got {n})")
        version = engine.version
        return generator.route([body.prompt])[0], version

    r, version = await run_in_threadpool(run)
    return RouteResponse(
        memory_id=r.memory_id, gate=r.gate, similarity=r.similarity, codebook_version=version
    )
