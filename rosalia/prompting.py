"""Prompt construction, in one place: the text a checkpoint was trained to see before its answer.

A checkpoint records its style as `prompt_style` in rosalia.json; training, `ils eval`,
`Segmenter` and the service all build prompts through `render(style, instruction)`.

- `plain` (native ROSALIA checkpoints, the default when rosalia.json names none):
  ``USER: <image>\\n{instruction} ASSISTANT:``
- `llava_v1` (LISA-7B-v1 and ROSALIA, imported with `ils convert-lisa`): LLaVA's v1
  conversation template (`conv_templates["llava_v1"]`: system prompt, roles USER/ASSISTANT,
  separators " " and "</s>") with the image wrapped as ``<im_start><image><im_end>``
  (`mm_use_im_start_end`), exactly as LISA's chat.py builds it; `llava_v1_no_im_tags` for a
  source whose config.json sets `mm_use_im_start_end: false`.

The answer of a teacher-forced pair follows as ``" " + answer + eos`` in both styles
(LLaVA v1's `sep2` is the EOS "</s>").
"""

from __future__ import annotations

from dataclasses import dataclass

from rosalia.model.config import IMAGE_TOKEN, ModelError

IM_START, IM_END = "<im_start>", "<im_end>"
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
DEFAULT_STYLE = "plain"


@dataclass(frozen=True)
class PromptStyle:
    """How one instruction becomes the prompt text (with one `<image>` placeholder)."""

    name: str
    system: str = ""
    image_start: str = ""
    image_end: str = ""

    def render(self, instruction: str) -> str:
        image = f"{self.image_start}{IMAGE_TOKEN}{self.image_end}"
        head = f"{self.system} " if self.system else ""
        return f"{head}USER: {image}\n{instruction} ASSISTANT:"

    @property
    def extra_tokens(self) -> tuple[str, ...]:
        """Tokens besides `<image>` and `[SEG]` that the tokenizer must hold as single tokens."""
        return tuple(t for t in (self.image_start, self.image_end) if t)


STYLES: dict[str, PromptStyle] = {
    "plain": PromptStyle("plain"),
    "llava_v1": PromptStyle("llava_v1", system=LLAVA_V1_SYSTEM, image_start=IM_START, image_end=IM_END),
    # a LISA-style checkpoint whose config.json says mm_use_im_start_end: false
    "llava_v1_no_im_tags": PromptStyle("llava_v1_no_im_tags", system=LLAVA_V1_SYSTEM),
}


def get_style(name: str | None) -> PromptStyle:
    """The style called `name` (None: the native default)."""
    style = STYLES.get(name or DEFAULT_STYLE)
    if style is None:
        raise ModelError(f"unknown prompt_style {name!r}; expected one of {sorted(STYLES)}")
    return style


def style_of(model) -> PromptStyle:
    """The prompt style recorded in `model.spec` (rosalia.json)."""
    return get_style(getattr(model, "spec", {}).get("prompt_style"))


def render(style: str | PromptStyle | None, instruction: str) -> str:
    return (style if isinstance(style, PromptStyle) else get_style(style)).render(instruction)
