"""Serving the codebook: per-row LoRA (``lora``), batched and continuous generation
(``batching``), the adapter cache (``adapters``) and the engine-facing runtime (``runtime``)."""
