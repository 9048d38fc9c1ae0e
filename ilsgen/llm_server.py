"""A tiny OpenAI-compatible chat server for a local Hugging Face causal LM (offline development, CI).

POST /v1/chat/completions (non-streaming; honours max_tokens and temperature; applies the
tokenizer's chat template; `response_format` is accepted and ignored: output is not constrained)
and GET /v1/models. The model is a Hugging Face folder or a .gguf file (loaded with gguf_file=).
Requests are served one at a time (a lock around generate).
"""

# No `from __future__ import annotations` here: FastAPI must see the request model defined inside
# create_app as a real class, not a string it cannot resolve (the body became a query parameter: 422).
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ils.errors import UserError

log = logging.getLogger(__name__)


def load_model(path: str):
    """(tokenizer, model) from a HF folder or a .gguf file; never downloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"model not found: {path}")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise UserError(f"model file {path} is not a .gguf file; pass a .gguf file or a Hugging Face folder")
        kwargs: dict[str, Any] = {"gguf_file": p.name, "local_files_only": True}
        folder = str(p.parent)
    else:
        kwargs, folder = {"local_files_only": True}, str(p)
    try:
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a causal LM from {path}: {exc}") from exc
    model.eval()
    return tok, model


def create_app(tokenizer, model, model_name: str = "local", max_tokens_cap: int = 2048):
    """The FastAPI app around one loaded model."""
    import torch
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, Field

    class Message(BaseModel):
        role: str
        content: str | None = ""

    class ChatRequest(BaseModel):
        model: str | None = None
        messages: list[Message] = Field(min_length=1)
        max_tokens: int | None = None
        max_completion_tokens: int | None = None
        temperature: float | None = 1.0
        top_p: float | None = 1.0
        stream: bool | None = False
        response_format: dict[str, Any] | None = None
        seed: int | None = None

    app = FastAPI(title="ils llm-serve", docs_url=None, redoc_url=None)
    lock = threading.Lock()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "local"}]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> dict[str, Any]:
        if req.stream:
            raise HTTPException(400, "streaming is not supported")
        max_new = min(req.max_completion_tokens or req.max_tokens or 256, max_tokens_cap)
        if max_new < 1:
            raise HTTPException(400, "max_tokens must be >= 1")
        msgs = [{"role": m.role, "content": m.content or ""} for m in req.messages]
        enc = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        temp = req.temperature if req.temperature is not None else 1.0
        gen: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id}
        if temp > 0:
            gen.update(do_sample=True, temperature=temp, top_p=req.top_p or 1.0)
        else:
            gen.update(do_sample=False)
        with lock, torch.inference_mode():
            if req.seed is not None:
                torch.manual_seed(req.seed)
            out = model.generate(**enc, **gen)
        n_in = enc["input_ids"].shape[1]
        new = out[0, n_in:]
        text = tokenizer.decode(new, skip_special_tokens=True)
        finish = "length" if len(new) >= max_new and (tokenizer.eos_token_id not in new.tolist()) else "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model or model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": n_in, "completion_tokens": int(len(new)), "total_tokens": n_in + int(len(new))},
        }

    return app


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, model_name: str = "local", threads: int | None = None) -> None:
    """Load the model and serve until interrupted."""
    import torch
    import uvicorn

    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    tok, model = load_model(model_path)
    log.info("loaded %s in %.1fs; serving on http://%s:%d/v1", Path(model_path).name, time.time() - t0, host, port)
    uvicorn.run(create_app(tok, model, model_name), host=host, port=port, log_level="warning")
