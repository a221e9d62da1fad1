"""Any HF causal LM: tiny GPT-2 and Llama built locally; adapters load in PEFT."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from memory_store import Loka
from memory_store.config import KeySettings, LokaConfig, LoraSettings, TrainerSettings
from memory_store.errors import InvalidInput
from memory_store.lora.layer import use_state
from memory_store.models.access import describe
from memory_store.models.tiny import build_tiny_model
from memory_store.serving.lora import BatchState
from memory_store.types import GenerationRequest, PieceKind, PieceSpec

FAST = LokaConfig(trainer=TrainerSettings(steps=40, learning_rate=1e-2))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request, tmp_path_factory):
    path = build_tiny_model(request.param, tmp_path_factory.mktemp(request.param) / "model")
    return request.param, path


def test_layout_is_chosen_per_architecture(tiny):
    arch, path = tiny
    model = AutoModelForCausalLM.from_pretrained(path)
    layout = describe(model, LoraSettings(), KeySettings())
    assert layout.key_layer == 1 and layout.lora_layers == (1,)
    suffixes = {t.name.rsplit(".", 2)[-2] + "." + t.name.rsplit(".", 1)[-1]
                for t in layout.targets}
    expected = {"gpt2": {"mlp.c_fc", "mlp.c_proj"},
                "llama": {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}}[arch]
    assert suffixes == expected
    custom = describe(model, LoraSettings(layers=(0, 1), target_modules=("mlp.down_proj",)
                                          if arch == "llama" else ("mlp.c_proj",)),
                      KeySettings(layer=1))
    assert custom.lora_layers == (0, 1) and len(custom.targets) == 2
    with pytest.raises(InvalidInput) as err:
        describe(model, LoraSettings(target_modules=("mlp.nope",)), KeySettings())
    assert err.value.field == "lora.target_modules"


def test_edit_on_tiny_model_and_peft_loads_the_adapter(tiny, tmp_path):
    arch, path = tiny
    loka = Loka.open(tmp_path / "store", path, config=FAST)
    prompt, target = "The capital of Veltoria is", " Solmara"
    result = loka.update([PieceSpec(PieceKind.EDIT, prompt, target)])
    memory_id = result.memories_created[0]
    out = loka.generate([GenerationRequest(prompt, 4, memory=memory_id)])[0]
    assert out.text.startswith(target)

    info = loka.memory(memory_id)
    adapter_dir = loka.store_path / "adapters" / memory_id / info.content_hash
    base = AutoModelForCausalLM.from_pretrained(path)
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    ids = loka.tokenizer(prompt + target, return_tensors="pt")
    with torch.no_grad():
        theirs = peft_model(**ids).logits
        state = BatchState([loka.adapters.get(memory_id, info.content_hash,
                                              f"adapters/{memory_id}/{info.content_hash}")],
                           torch.float32)
        with use_state(state):
            ours = loka.model(**ids).logits
        plain = loka.model(**ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, ours, atol=1e-3)  # the adapter really changes the output


def test_lora_below_the_key_layer_uses_a_separate_key_pass(tiny, tmp_path):
    _, path = tiny
    config = FAST.model_copy(update={"lora": LoraSettings(layers=(0, 1))})
    loka = Loka.open(tmp_path / "store", path, config=config)
    assert not loka.generator.single_pass
    prompt = "The capital of Veltoria is"
    loka.update([PieceSpec(PieceKind.EDIT, prompt, " Solmara")])
    out = loka.generate([GenerationRequest(prompt, 4)])[0]
    assert out.text.startswith(" Solmara")
