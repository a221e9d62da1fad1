"""Update latency: from ``POST /v1/updates`` to the first answer served by the new memories.

Real updates (real training, real router) on the built-in model, through the real service on a
fresh store: batches of 1, 20 and 100 edits of facts the model knows, one after the other. The
clock runs from the POST to the response of a ``/v1/generate`` on an edited prompt that reports
the new codebook version (the job is polled every 50 ms, so up to 50 ms of it is polling).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.serving.http import running_service
from memory_store.models.builtin import FACTS, counterfactual_answer
from service.config import Settings

logger = logging.getLogger(__name__)

POLL_S = 0.05


def _pick(n_total: int) -> list:
    """``n_total`` facts, spread over entities and relations."""
    order = sorted(range(len(FACTS)), key=lambda i: (i % 5, i))
    return [FACTS[i] for i in order[:n_total]]


def measure(model: Path, sizes: tuple[int, ...], workdir: Path) -> dict:
    """Latency of each update size, in order, on one store."""
    facts = _pick(sum(sizes))
    store = Path(tempfile.mkdtemp(prefix="updates-", dir=workdir))
    settings = Settings(model=str(model), store_dir=store, log_level="warning",
                        max_pieces_per_update=max(sizes))
    out = []
    with running_service(settings) as svc, httpx.Client(base_url=svc.url, timeout=600) as client:
        offset = 0
        for n in sizes:
            chosen, offset = facts[offset:offset + n], offset + n
            edits = [{"prompt": f.prompts[0], "target": " " + counterfactual_answer(f),
                      "paraphrases": [f.prompts[1]]} for f in chosen]
            start = time.perf_counter()
            r = client.post("/v1/updates", json={"edits": edits})
            r.raise_for_status()
            job_id = r.json()["id"]
            while True:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(POLL_S)
            if job["status"] != "succeeded":
                raise RuntimeError(f"update of {n} pieces {job['status']}: {job['error']}")
            version = job["result"]["codebook_version"]
            answer = client.post("/v1/generate", json={"prompt": chosen[0].prompts[0],
                                                       "max_new_tokens": 8}).json()
            seconds = time.perf_counter() - start
            served = answer["codebook_version"] >= version
            out.append({"pieces": n, "post_to_served_s": round(seconds, 2),
                        "memories_created": len(job["result"]["memories_created"]),
                        "served_new_version": served,
                        "routed_to_memory": answer["memory_id"] is not None,
                        "answer_has_new_target": counterfactual_answer(chosen[0])
                        in answer["text"]})
            logger.info("update of %d pieces: POST -> served in %.1f s", n, seconds)
    return {"model": str(model), "updates": out}
