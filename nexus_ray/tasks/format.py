"""How a task's text is laid out: the prompt template, the step delimiter, the answer line.

Strategies and the PRM only see text, so this is the one place that says how to build a
prompt, where steps end, and how to read the final answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexus_ray.tasks import arith
from nexus_ray.tasks.grading import AnswerKind, extract_answer


@dataclass(frozen=True)
class TaskFormat:
    prompt_template: str = arith.QUESTION_PREFIX + "{problem}" + arith.STEP_DELIMITER
    step_delimiter: str = arith.STEP_DELIMITER
    answer_kind: AnswerKind = "arith"

    def parse(self, problem: str) -> str:
        """The problem as the prompt template wants it; ValueError if it is not one."""
        if self.answer_kind == "arith":
            return arith.parse_problem(problem)
        if not problem.strip():
            raise ValueError("the problem is empty")
        return problem.strip()

    def prompt(self, problem: str) -> str:
        return self.prompt_template.format(problem=problem)

    def steps(self, solution: str) -> tuple[str, ...]:
        """The solution's steps, delimiters dropped, empty pieces skipped."""
        return tuple(s.strip() for s in solution.split(self.step_delimiter) if s.strip())

    def answer(self, solution: str) -> str | None:
        return extract_answer(solution, self.answer_kind)


ARITH = TaskFormat()
