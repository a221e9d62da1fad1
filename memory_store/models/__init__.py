"""Base models: loading any causal LM and where LOKA hooks into it (``access``), the built-in
default model (``builtin``) and tiny random-weight test models (``tiny``)."""
