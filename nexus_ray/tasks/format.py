"""How a task's text is laid out: the prompt, the step delimiter, the answer.

Strategies and the PRM only see text, so this is the one place that says how to build a
prompt, where steps end, and how to read the final answer. Two formats:

- ``arith``: the zoo's ``Q: <expression>`` line, one step per line, ``A: <answer>``.
- ``chat-math``: the policy tokenizer's own chat template over the conversation (a system
  prompt, then the user's turns), steps separated by a blank line, the answer in the last
  ``\\boxed{}``, graded with math-verify (Qwen2.5-Math's conventions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nexus_ray.config import TaskConfig
from nexus_ray.tasks import arith, mathchat
from nexus_ray.tasks.chat import ChatTemplate, Message
from nexus_ray.tasks.grading import AnswerKind, extract_answer


@dataclass(frozen=True)
class TaskFormat:
    prompt_template: str = arith.QUESTION_PREFIX + "{problem}" + arith.STEP_DELIMITER
    step_delimiter: str = arith.STEP_DELIMITER
    answer_kind: AnswerKind = "arith"
    chat: ChatTemplate | None = None
    system_prompt: str | None = None

    @property
    def name(self) -> str:
        return "chat-math" if self.chat is not None else "arith" if self.answer_kind == "arith" else "math"

    def messages(self, problem: str | tuple[Message, ...]) -> tuple[Message, ...]:
        """The conversation a problem stands for: the caller's turns, or one user turn; the
        system prompt goes first unless the caller brought one."""
        turns = (("user", problem),) if isinstance(problem, str) else tuple(problem)
        if self.system_prompt is not None and not any(role == "system" for role, _ in turns):
            turns = (("system", self.system_prompt), *turns)
        return turns

    def parse(self, problem: str) -> str:
        """The problem as the prompt template wants it; ValueError if it is not one."""
        if self.answer_kind == "arith":
            return arith.parse_problem(problem)
        if not problem.strip():
            raise ValueError("the problem is empty")
        return problem.strip()

    def prompt(self, problem: str | tuple[Message, ...]) -> str:
        if self.chat is not None:
            return self.chat.render(self.messages(problem))
        return self.prompt_template.format(problem=problem)

    def steps(self, solution: str) -> tuple[str, ...]:
        """The solution's steps, delimiters dropped, empty pieces skipped."""
        return tuple(s.strip() for s in solution.split(self.step_delimiter) if s.strip())

    def answer(self, solution: str) -> str | None:
        return extract_answer(solution, self.answer_kind)


ARITH = TaskFormat()


def task_format(config: TaskConfig, policy_dir: str | Path) -> TaskFormat:
    """The format a config's ``task`` section names, for this policy."""
    return ARITH if config.format == "arith" else chat_math(policy_dir, config.system_prompt)


def chat_math(policy_dir: str | Path, system_prompt: str | None = mathchat.SYSTEM_PROMPT) -> TaskFormat:
    """The chat-math format over a policy's chat template; a clear error if it has none."""
    return TaskFormat(
        prompt_template="{problem}",
        step_delimiter=mathchat.STEP_DELIMITER,
        answer_kind="math",
        chat=ChatTemplate.from_model_dir(policy_dir),
        system_prompt=system_prompt,
    )
