"""LoRA: the layer wrapper and thread-local states (``layer``), the weights and their PEFT
folders (``weights``)."""
