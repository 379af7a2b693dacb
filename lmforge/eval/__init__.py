"""The evaluation harness: tasks, metrics, log-likelihood scoring, generation, perplexity.

base.py        Task and one class per kind, TASKS, EvalSettings (common + one part per
               kind), TaskResult, KINDS (runner and description per kind)
metrics.py     METRICS: accuracy, and exact_match, token_f1, rouge_l (lmforge/text_metrics.py)
loglik.py      batched log-likelihood of continuations; choice scores (NORMALIZERS)
choice.py      runner "choice": label words by log-likelihood, contextual calibration
generation.py  runner "generate": direct, chain-of-thought, self-consistency
ppl.py         runner "perplexity": windows of the context over a corpus
arithmetic.py  generated word problems with exact answers and rationales
tasks.py       the built-in tasks (importing this package registers them)
harness.py     evaluate(...), write_results(...)
"""

from lmforge.eval import choice, generation, ppl, tasks  # noqa: F401  (registers)
from lmforge.eval.arithmetic import Problem, generate_problems
from lmforge.eval.base import (
    KINDS,
    TASKS,
    ChoiceSettings,
    ChoiceTask,
    CommonSettings,
    EvalSettings,
    ExampleTask,
    GenerationSettings,
    GenerationTask,
    PerplexitySettings,
    PerplexityTask,
    Task,
    TaskKind,
    TaskResult,
    register_task,
)
from lmforge.eval.harness import evaluate, get_task, results_table, write_results
from lmforge.eval.loglik import (
    NORMALIZERS,
    LogLikelihood,
    Request,
    choice_scores,
    choose,
    loglikelihoods,
)
from lmforge.eval.metrics import METRICS, mean_metric
from lmforge.eval.ppl import Perplexity, perplexity
from lmforge.text_metrics import exact_match, rouge_l, token_f1

__all__ = [
    "KINDS",
    "METRICS",
    "NORMALIZERS",
    "TASKS",
    "ChoiceSettings",
    "ChoiceTask",
    "CommonSettings",
    "EvalSettings",
    "ExampleTask",
    "GenerationSettings",
    "GenerationTask",
    "LogLikelihood",
    "Perplexity",
    "PerplexitySettings",
    "PerplexityTask",
    "Problem",
    "Request",
    "Task",
    "TaskKind",
    "TaskResult",
    "choice_scores",
    "choose",
    "evaluate",
    "exact_match",
    "generate_problems",
    "get_task",
    "loglikelihoods",
    "mean_metric",
    "perplexity",
    "register_task",
    "results_table",
    "rouge_l",
    "token_f1",
    "write_results",
]
