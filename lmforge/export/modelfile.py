"""An Ollama Modelfile beside an exported GGUF: `ollama create NAME -f Modelfile`.

FROM ./model.gguf
TEMPLATE <Go template>      the chat format in Ollama's Go template syntax (ChatML here;
                             other formats: Ollama reads the GGUF's own chat template)
PARAMETER stop "<|im_end|>"  the strings that end an assistant turn
PARAMETER temperature 0.2    the checkpoint's sampling defaults (generation_config.json)
"""

from __future__ import annotations

import json
from typing import Any

CHATML = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
# SamplingConfig field → Ollama's PARAMETER name
PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repeat_penalty",
}


def modelfile(
    gguf_name: str, template: str, stops: list[str], sampling: dict[str, Any], context: int
) -> str:
    """The Modelfile text for `gguf_name` (a path relative to the Modelfile)."""
    lines = [
        "# Written by `lmforge export --format gguf`; load with: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
    ]
    if "<|im_start|>" in template:
        lines.append(f'TEMPLATE """{CHATML}"""')
    else:
        lines.append("# TEMPLATE: Ollama uses the chat template stored in the GGUF file")
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    for field, name in PARAMETERS.items():
        if field in sampling:
            lines.append(f"PARAMETER {name} {sampling[field]:g}")
    lines.append(f"PARAMETER num_ctx {context}")
    return "\n".join(lines) + "\n"
