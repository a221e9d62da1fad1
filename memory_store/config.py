"""Validated configuration of the LOKA method (LOKA.md section 3).

Every ``(choice)`` of the spec is a field here. Invalid values raise ``pydantic.ValidationError``
naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSettings(_Strict):
    """Shape of one memory's LoRA adapter."""

    rank: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0)
    # None: chosen per architecture (the MLP projections, see model_access.ARCHITECTURES)
    target_modules: tuple[str, ...] | None = None
    # None: layers from the key layer to the top (lets routing reuse the lower layers' work)
    layers: tuple[int, ...] | None = None


class KeySettings(_Strict):
    """How a prompt's key is computed from the frozen model's hidden states."""

    # None: three quarters of the depth (model_access.default_key_layer). Index into HF
    # ``hidden_states`` (0 = embeddings); the key is read at the input of block ``layer``.
    layer: int | None = Field(None, ge=1)
    # "last" (the last prompt token) measured far better than "mean" on the built-in model:
    # nearest neighbour is a paraphrase of the same fact for 73% of prompts vs 2% (docs)
    pooling: Literal["mean", "last"] = "last"


class MappingSettings(_Strict):
    """Similarity-aware mapping of pieces to memories."""

    capacity: int = Field(8, ge=1, le=10_000)
    kmeans_iters: int = Field(25, ge=1, le=1000)
    lsh_bits: int = Field(8, ge=1, le=64)
    # sequential updates: a piece only joins an existing memory this similar to its key
    join_similarity: float = Field(0.5, ge=-1.0, le=1.0)


class ConflictSettings(_Strict):
    """Conflict score of a mixed cluster and the split threshold."""

    samples: int = Field(8, ge=1, le=256)
    tau: float = Field(0.5, ge=0.0, le=1.0)
    batch_size: int = Field(4, ge=1, le=256)
    # joint (edit + NPO) steps on a throwaway adapter copy before the gradients are taken
    warmup_steps: int = Field(5, ge=0, le=1000)
    # "auto": decide by the score; "split"/"mgda": always (ablations)
    mode: Literal["auto", "split", "mgda"] = "auto"


class TrainerSettings(_Strict):
    """Training of one memory."""

    steps: int = Field(60, ge=1, le=100_000)
    learning_rate: float = Field(5e-3, gt=0, le=1.0)
    unlearn_loss: Literal["npo", "ga", "idk"] = "npo"
    npo_beta: float = Field(0.1, gt=0)
    idk_response: str = " I don't know."
    # end edit (and IDK) targets with the tokenizer's EOS so the model stops after the answer
    target_eos: bool = True
    retain_weight: float = Field(1.0, ge=0)
    max_retain: int = Field(16, ge=0, le=10_000)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    # stop early once every edit target is reproduced greedily and every unlearn target is
    # below this probability ratio to the base (checked every ``check_every`` steps)
    early_stop: bool = True
    # rounds of "generate greedily, train against any output that still holds an unlearned
    # answer" after the main loop (0 disables)
    verify_rounds: int = Field(2, ge=0, le=10)
    check_every: int = Field(10, ge=1)
    # training continues past ``steps`` (in rounds of ``steps``) until every piece is reached
    # (greedy generation gives each edit target, no unlearned answer), up to this many steps
    max_steps: int = Field(240, ge=1, le=100_000)
    # an edit also needs every target token's teacher-forced probability >= this (so it holds
    # under sampling at temperature 1; 0 disables)
    edit_min_prob: float = Field(0.95, ge=0.0, lt=1.0)
    # an unlearning request also needs the answer's teacher-forced probability right after
    # the prompt <= this (1 disables)
    unlearn_max_prob: float = Field(0.01, gt=0.0, le=1.0)
    # speed: reuse the frozen blocks' output below the LoRA band (exact), run the output head
    # only where a loss needs it, and compute the retention KL on the last ``retain_positions``
    # positions of each retention prompt (0: every position)
    prefix_cache: bool = True
    head_positions_only: bool = True
    retain_positions: int = Field(4, ge=0)
    # matmuls of the training steps: "bfloat16" runs them under autocast; "auto" picks it on
    # CPUs with native bf16 (AMX / AVX512-BF16) for models >= 50M parameters. Default float32:
    # on this project's AVX512-BF16 machine (AMD EPYC) autocast measured 2.6x SLOWER than
    # float32 for SmolLM2-135M training steps (weights are cast at every forward). References,
    # checks and the greedy verification always run in the model's own dtype (what is served)
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "float32"


class RouterSettings(_Strict):
    """The learned gate."""

    threshold: float = Field(0.5, ge=0.0, le=1.0)
    # a memory is only used when the query key is at least this similar to its key (a guard
    # for models whose gate saw few hard negatives; paraphrases measure ~0.65-0.98 on the
    # built-in model, other facts ~0)
    min_similarity: float = Field(0.5, ge=-1.0, le=1.0)
    # background prompts this similar to a stored key are probably unlisted paraphrases: they
    # are used neither as negatives of the gate nor as retention prompts
    exclude_similarity: float = Field(0.9, ge=-1.0, le=1.01)
    hidden: int = Field(64, ge=1, le=4096)
    epochs: int = Field(300, ge=1, le=100_000)
    # an update retrains the gate on its own new keys plus a seeded sample of at most this many
    # stored keys (and of stored retain prompts): its cost stays flat as the codebook grows
    max_gate_keys: int = Field(1_024, ge=1, le=10_000_000)
    learning_rate: float = Field(1e-2, gt=0)
    seed: int = 0
    enabled: bool = True  # False: route every prompt to its nearest memory (ablation)
    # "piece": search every stored prompt/paraphrase key and serve its memory (a memory's
    # centroid can sit far from some of its pieces); "memory": search memory centroids only
    retrieval: Literal["piece", "memory"] = "piece"


class IndexSettings(_Strict):
    """FAISS index over memory keys."""

    kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    # "auto" switches from exact to IVF at this many keys
    approximate_from: int = Field(20_000, ge=1)
    hnsw_m: int = Field(32, ge=4, le=256)
    hnsw_ef_search: int = Field(128, ge=1)
    ivf_nprobe: int = Field(16, ge=1)


class LokaConfig(_Strict):
    """Everything the method needs; stored with the codebook so a store reopens identically."""

    lora: LoraSettings = LoraSettings()
    keys: KeySettings = KeySettings()
    mapping: MappingSettings = MappingSettings()
    conflict: ConflictSettings = ConflictSettings()
    trainer: TrainerSettings = TrainerSettings()
    router: RouterSettings = RouterSettings()
    index: IndexSettings = IndexSettings()

    @model_validator(mode="after")
    def _check_layers(self) -> LokaConfig:
        if self.lora.layers is not None and len(set(self.lora.layers)) != len(self.lora.layers):
            raise ValueError("lora.layers: duplicate layer index")
        return self
