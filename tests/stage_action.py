"""A three-stage test action for tests/test_daemon_plans.py (registered there at run time).

Stage 0 has ``width`` tasks with value 0; each later stage has one task per
result of the previous stage, with value = that result's value; a task's
result is its value + 1; after stage 2 the plan finishes. ``record`` appends
``job key value`` to ``recorded.txt`` in the project directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cistemd.actions.base import Action, Parameter, Stage, TaskContext, TaskSpec

LAST_ROUND = 2


class ThreeStages(Action):
    name = "threestages"
    title = "Three stages (test)"
    parameters = (
        Parameter("width", "int", 3, "tasks per stage", minimum=1),
        Parameter("explode_at", "int", -1, "the plan raises after this round (-1: never)"),
    )

    def start(self, parameters: Mapping[str, Any], *, project: Any = None) -> tuple[Any, Stage]:
        tasks = tuple(
            TaskSpec(key=f"r0-{i}", payload={"value": 0}) for i in range(int(parameters["width"]))
        )
        return {"round": 0, "history": []}, Stage(tasks=tasks, label="round 0")

    def advance(
        self,
        parameters: Mapping[str, Any],
        plan_state: Any,
        results: Mapping[str, Any],
        *,
        project: Any = None,
    ) -> tuple[Any, Stage | None]:
        round_ = int(plan_state["round"])
        if round_ == parameters["explode_at"]:
            raise RuntimeError(f"the plan explodes after round {round_}")
        history = [*plan_state["history"], sorted(results)]
        if round_ >= LAST_ROUND:
            return {"round": round_, "history": history, "done": True}, None
        tasks = tuple(
            TaskSpec(key=f"r{round_ + 1}-{key.split('-', 1)[1]}", payload={"value": value["value"]})
            for key, value in sorted(results.items())
        )
        return {"round": round_ + 1, "history": history}, Stage(
            tasks=tasks, final=False, label=f"round {round_ + 1}"
        )

    def run_task(self, payload: Mapping[str, Any], context: TaskContext) -> dict[str, Any]:
        return {"value": int(payload["value"]) + 1}

    def record(self, project: Any, job_id: int, task_key: str, result: Mapping[str, Any]) -> None:
        with open(project.path / "recorded.txt", "a", encoding="utf-8") as handle:
            handle.write(f"{job_id} {task_key} {result['value']}\n")


ACTION = ThreeStages
