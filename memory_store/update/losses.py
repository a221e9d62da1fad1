"""Losses of LOKA.md section 3: edit NLL, unlearning (NPO / GA / IDK) and retention KL."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from memory_store.keys import tokenize
from memory_store.update import prefix as prefix_cache


@dataclass
class TokenBatch:
    """Right-padded prompt+target sequences; ``labels`` is -100 outside the target."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T)
    # input of the first adapted block on the frozen model (memory_store.update.prefix), if cached
    prefix: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> TokenBatch:
        return TokenBatch(self.input_ids[rows], self.attention_mask[rows], self.labels[rows],
                          None if self.prefix is None else self.prefix[rows])


def tokenize_pairs(tokenizer, pairs: list[tuple[str, str]], device: str | torch.device = "cpu",
                   eos: bool = False) -> TokenBatch:
    """Tokenise (prompt, target) pairs as generation sees them: prompt with special tokens,
    target appended without (and ended by EOS when ``eos``)."""
    seqs, labels = [], []
    for prompt, target in pairs:
        p = tokenize(tokenizer, prompt)["input_ids"]
        t = tokenize(tokenizer, target, add_special_tokens=False)["input_ids"] if target else []
        if eos and t and tokenizer.eos_token_id is not None:
            t = t + [tokenizer.eos_token_id]
        seqs.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        lab[i, : len(lb)] = torch.tensor(lb)
    return TokenBatch(ids.to(device), mask.to(device), lab.to(device))


def concat(a: TokenBatch, b: TokenBatch, pad_id: int) -> TokenBatch:
    """Stack two right-padded batches, padding the narrower one."""
    width = max(a.input_ids.shape[1], b.input_ids.shape[1])

    def widen(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return TokenBatch(
        torch.cat([widen(a.input_ids, pad_id), widen(b.input_ids, pad_id)]),
        torch.cat([widen(a.attention_mask, 0), widen(b.attention_mask, 0)]),
        torch.cat([widen(a.labels, -100), widen(b.labels, -100)]),
    )


def forward_logits(model, batch: TokenBatch) -> torch.Tensor:
    """(B, T, V) logits; position t predicts token t+1."""
    with prefix_cache.skipping(batch.prefix):
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     use_cache=False).logits


# model types whose logits are exactly ``output_embeddings(base_model(...).last_hidden_state)``
# (no soft-capping or scaling after the head): only the needed positions go through the head
_PLAIN_HEAD = frozenset({"gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "llama", "mistral",
                         "qwen2", "qwen3", "phi", "phi3", "falcon", "bloom"})


@dataclass
class Positions:
    """Flattened positions of a batch whose logits a loss needs; ``labels`` the token each
    predicts (-100: none, e.g. a retention position past the prompt's end)."""

    rows: torch.Tensor  # (N,)
    pos: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return self.rows.shape[0]


def target_positions(batch: TokenBatch) -> Positions:
    """The positions predicting each target token, row-major."""
    lb = batch.labels[:, 1:]
    rows, pos = (lb != -100).nonzero(as_tuple=True)
    return Positions(rows, pos, lb[rows, pos])


def last_positions(batch: TokenBatch, n: int) -> Positions:
    """The last ``n`` real positions of each (right-padded) row (every position if n <= 0)."""
    mask = batch.attention_mask.bool()
    if n > 0:
        length = mask.sum(-1, keepdim=True)
        idx = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
        mask = mask & (idx >= length - n)
    rows, pos = mask.nonzero(as_tuple=True)
    return Positions(rows, pos, torch.full_like(rows, -100))


def position_logits(model, batch: TokenBatch, at: Positions) -> torch.Tensor:
    """(N, V) logits at ``at``: the same values as ``forward_logits(...)[rows, pos]``, but the
    output head only runs on the needed positions where the architecture allows it."""
    model_type = getattr(model.config, "model_type", "")
    head = model.get_output_embeddings()
    if model_type in _PLAIN_HEAD and isinstance(head, torch.nn.Linear):
        with prefix_cache.skipping(batch.prefix):
            hidden = model.base_model(input_ids=batch.input_ids,
                                      attention_mask=batch.attention_mask,
                                      use_cache=False).last_hidden_state
        return head(hidden[at.rows, at.pos])
    return forward_logits(model, batch)[at.rows, at.pos]


def flat_logprob(logits: torch.Tensor, at: Positions, n_rows: int) -> torch.Tensor:
    """(B,) summed log-probability of each row's target tokens from flat (N, V) logits."""
    logp = torch.log_softmax(logits.float(), -1).gather(-1, at.labels.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(n_rows, dtype=logp.dtype, device=logp.device).index_add(0, at.rows, logp)


def flat_nll(logits: torch.Tensor, at: Positions) -> torch.Tensor:
    return F.cross_entropy(logits.float(), at.labels)


def flat_accuracy(logits: torch.Tensor, at: Positions, n_rows: int) -> torch.Tensor:
    """(B,) fraction of each row's target tokens that are the argmax."""
    hit = (logits.argmax(-1) == at.labels).float()
    ones = torch.ones_like(hit)
    total = torch.zeros(n_rows, device=hit.device).index_add(0, at.rows, ones)
    return torch.zeros(n_rows, device=hit.device).index_add(0, at.rows, hit) / total.clamp(min=1)


def flat_first(at: Positions) -> torch.Tensor:
    """(N,) bool: the first target position of its row."""
    first = torch.ones(len(at), dtype=torch.bool, device=at.rows.device)
    first[1:] = at.rows[1:] != at.rows[:-1]
    return first


def flat_first_token_hit(logits: torch.Tensor, at: Positions) -> torch.Tensor:
    """(B,) whether each row's first target token is the argmax (rows with targets, in order)."""
    first = flat_first(at)
    return logits[first].argmax(-1) == at.labels[first]


def flat_min_prob(logits: torch.Tensor, at: Positions, n_rows: int) -> torch.Tensor:
    """(B,) the smallest probability of a target token in each row."""
    p = torch.softmax(logits.float(), -1).gather(-1, at.labels.unsqueeze(-1)).squeeze(-1)
    out = torch.ones(n_rows, dtype=p.dtype, device=p.device)
    return out.scatter_reduce(0, at.rows, p, reduce="amin")


def flat_kl(logits: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Mean KL(p_ref || p_theta) over flat positions; ``ref_logprobs`` (N, V)."""
    logq = torch.log_softmax(logits.float(), -1)
    return (ref_logprobs.exp() * (ref_logprobs - logq)).sum(-1).mean()


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[:, :-1, :], labels[:, 1:]


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) summed log-probability of the target tokens."""
    lg, lb = _shifted(logits, labels)
    mask = lb != -100
    logp = torch.log_softmax(lg.float(), -1).gather(-1, lb.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token NLL of the target (prompt tokens masked)."""
    lg, lb = _shifted(logits, labels)
    return F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100)


def npo(logits: torch.Tensor, labels: torch.Tensor, ref_logprob: torch.Tensor,
        beta: float) -> torch.Tensor:
    """Negative preference optimisation against the frozen base as reference."""
    ratio = sequence_logprob(logits, labels) - ref_logprob
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def gradient_ascent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -nll(logits, labels)


def retain_kl(logits: torch.Tensor, ref_logprobs: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_theta) averaged over the real positions. ``ref_logprobs`` (B, T, V)."""
    logq = torch.log_softmax(logits.float(), -1)
    kl = (ref_logprobs.exp() * (ref_logprobs - logq)).sum(-1)  # (B, T)
    m = mask.float()
    return (kl * m).sum() / m.sum().clamp(min=1)


def target_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of target tokens that are the argmax (teacher forced)."""
    lg, lb = _shifted(logits, labels)
    mask = lb != -100
    hit = (lg.argmax(-1) == lb) & mask
    return hit.sum(-1).float() / mask.sum(-1).clamp(min=1).float()


def first_token_hit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) whether the first target token is the argmax."""
    lg, lb = _shifted(logits, labels)
    first = (lb != -100).float().argmax(-1)  # index of the first target position
    rows = torch.arange(lb.shape[0], device=lb.device)
    return lg[rows, first].argmax(-1) == lb[rows, first]
