"""Knowledge inheritance (Qin et al. 2022): the student learns from text and from a trained
model's distribution, the teacher's weight falling so that the student can surpass it.

    loss = (1 − α_t)·CE(student, text) + α_t·τ²·KL(p_T^τ ‖ p_S^τ)      p^τ = softmax(z / τ)
    α_t  = kd_weight · KD_SCHEDULES[kd_schedule](t, kd_decay_steps)     constant | linear-decay

The KL is averaged over the positions the CE scores (labels ≠ −100). With kd_top_k = k the
teacher keeps its k most likely tokens, renormalised, and the KL runs over them against the
student's log-probabilities over the whole vocabulary (so it stays ≥ 0). Once α_t is 0 the
teacher is not run at all. Teacher and student may differ in size but must share the
vocabulary. Teacher logits come from the teacher on the fly (no gradient), or from a cache
directory keyed by the teacher and the batch's tokens (top-k only), filled on first use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_write
from lmforge.errors import ConfigError
from lmforge.model.loss import IGNORE_INDEX, causal_lm_loss, shift_labels
from lmforge.train.schedule import KD_SCHEDULES
from lmforge.train.state import Batch
from lmforge.train.validation import default_objective


@dataclass
class TeacherLogits:
    values: Tensor  # (B, T, K) logits: all V of them, or the top K
    indices: Tensor | None  # (B, T, K) their token ids; None when values hold every token


def kd_loss(student: Tensor, teacher: TeacherLogits, labels: Tensor, temperature: float) -> Tensor:
    """τ²·KL(p_T^τ ‖ p_S^τ), averaged over the positions whose next label is not -100.
    student (B, T, V) logits; labels (B, T) as the model takes them (shifted inside)."""
    valid = shift_labels(labels) != IGNORE_INDEX  # (B, T)
    log_q = torch.log_softmax(student[valid].float() / temperature, dim=-1)  # (N, V)
    log_p = torch.log_softmax(teacher.values[valid].float() / temperature, dim=-1)  # (N, K)
    if teacher.indices is not None:
        log_q = log_q.gather(1, teacher.indices[valid].long())  # (N, K)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (N,)
    return temperature**2 * kl.mean()


def fingerprint(model: nn.Module) -> str:
    """16 hex digits naming a model's weights: names, shapes and a sample of each tensor."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        flat = t.detach().flatten()
        sample = torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy()
        h.update(f"{name}{tuple(t.shape)}".encode() + sample.tobytes())
    return h.hexdigest()[:16]


class TeacherCache:
    """Top-k teacher logits on disk, one safetensors file per batch of token ids."""

    def __init__(self, directory: str | Path, teacher: str, top_k: int) -> None:
        self.directory, self.key = Path(directory), f"{teacher}:{top_k}"

    def path(self, batch: Batch) -> Path:
        h = hashlib.sha256(self.key.encode())
        for name in ("input_ids", "attention_mask", "position_ids"):
            if isinstance(batch.get(name), Tensor):
                t = batch[name].detach().cpu().contiguous()
                h.update(f"{name}{tuple(t.shape)}".encode() + t.numpy().tobytes())
        digest = h.hexdigest()
        return self.directory / digest[:2] / f"{digest}.safetensors"

    def get(self, batch: Batch) -> TeacherLogits | None:
        path = self.path(batch)
        if not path.is_file():
            return None
        tensors = load_file(str(path), device=str(batch["input_ids"].device))
        return TeacherLogits(tensors["values"], tensors["indices"])

    def put(self, batch: Batch, logits: TeacherLogits) -> None:
        tensors = {"values": logits.values.cpu().contiguous(), "indices": logits.indices.cpu()}
        atomic_write(self.path(batch), lambda tmp: save_file(tensors, str(tmp)))


@dataclass
class InheritanceSettings:
    weight: float  # kd_weight: α before the schedule
    schedule: str  # a KD_SCHEDULES name
    horizon: int  # updates over which linear-decay falls to 0
    temperature: float  # τ
    top_k: int  # 0 = the teacher's full distribution


class KnowledgeInheritance:
    """The objective: next-token CE mixed with the KL to a frozen teacher (see module doc)."""

    def __init__(
        self, teacher: nn.Module, settings: InheritanceSettings, cache: TeacherCache | None = None
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.settings, self.cache = settings, cache
        self.validation = default_objective  # the student's own next-token loss
        self.teacher_tokens = 0  # tokens the teacher has read (cache hits excluded)
        self.at_step(1)

    def at_step(self, step: int) -> None:
        s = self.settings
        self.alpha = s.weight * KD_SCHEDULES.get(s.schedule)(step - 1, s.horizon)

    @torch.no_grad()
    def teacher_logits(self, inputs: Batch) -> TeacherLogits:
        cached = self.cache.get(inputs) if self.cache is not None else None
        if cached is not None:
            return cached
        device = inputs["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        logits = self.teacher(**inputs).logits  # (B, T, V)
        self.teacher_tokens += inputs["input_ids"].numel()
        if self.settings.top_k:
            values, indices = logits.topk(self.settings.top_k, dim=-1)  # (B, T, K)
            out = TeacherLogits(values.float(), indices.int())
        else:
            out = TeacherLogits(logits, None)
        if self.cache is not None:
            self.cache.put(inputs, out)
        return out

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        student = model(**inputs).logits  # (B, T, V)
        ce = causal_lm_loss(student, labels)
        if self.alpha == 0.0:
            return ce
        teacher = self.teacher_logits(inputs)
        if teacher.values.shape[:2] != student.shape[:2]:
            raise ConfigError("the teacher's logits do not cover the student's positions")
        kd = kd_loss(student, teacher, labels, self.settings.temperature)
        return (1.0 - self.alpha) * ce + self.alpha * kd


def check_vocabulary(teacher: nn.Module, student: nn.Module, name: str) -> None:
    """Both models must score the same vocabulary; ConfigError naming the teacher otherwise."""
    sizes = [m.get_input_embeddings().weight.shape[0] for m in (teacher, student)]
    if sizes[0] != sizes[1]:
        raise ConfigError(
            f"teacher {name} has a vocabulary of {sizes[0]} tokens, the student {sizes[1]}; "
            "knowledge inheritance compares distributions token by token",
            fix="give the student the teacher's tokenizer ({tokenizer.path}), or another {teacher}",
        )
